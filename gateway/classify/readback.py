"""Labels from the helpdesk: the queue (and priority) a handed-off ticket has now in the
helpdesk, where agents move it, recorded as a move by "helpdesk" so training learns it.

Only connectors that can ask the helpdesk about a ticket offer `ticket_state`
(OTOBO/Znuny REST: TicketGet; RT REST2: the ticket's queue); the PostMaster pipe
and the webhook are one-way and cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, select

from gateway.config import Config
from gateway.store.tables import Ticket, helpdesk_ref

HELPDESK = "helpdesk"       # the `by` of moves the read-back records


@dataclass
class ReadBack:
    supported: bool = True
    checked: int = 0
    moved: int = 0
    unknown_queue: int = 0        # the helpdesk's queue maps to no deskgate queue
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def deskgate_queue(cfg: Config, helpdesk_queue: str) -> str | None:
    """The deskgate queue of a helpdesk queue: through [helpdesk.queues] reversed, else a
    [[queue]] of the same name; None when deskgate has no such queue."""
    for mine, theirs in cfg.helpdesk.queues.items():
        if theirs.lower() == helpdesk_queue.lower() and cfg.queue_by_name(mine):
            return cfg.queue_by_name(mine).name  # type: ignore[union-attr]
    q = cfg.queue_by_name(helpdesk_queue)
    return q.name if q is not None else None


def read_back(cfg: Config, engine: Engine, *, since: datetime | None = None,
              progress: Callable[[str], None] | None = None) -> ReadBack:
    """Ask the helpdesk for the queue/priority of every handed-off ticket (created since
    `since`) and record a move where it differs from deskgate's."""
    from gateway.classify.data import move_ticket
    from gateway.helpdesk.base import HandoffError
    from gateway.helpdesk.worker import make_connector

    out = ReadBack()
    if not cfg.helpdesk.enabled:
        out.supported = False
        return out
    connector = make_connector(cfg)
    ask = getattr(connector, "ticket_state", None)
    if ask is None:
        connector.close()
        out.supported = False
        return out
    say = progress or (lambda _m: None)
    q = select(Ticket.id, Ticket.helpdesk_ticket_id).where(helpdesk_ref(Ticket.helpdesk_ticket_id))
    if since is not None:
        q = q.where(Ticket.created >= since)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(Ticket.id)).all()
    say(f"reading back {len(rows)} ticket(s) from the helpdesk ({cfg.helpdesk.type})")
    try:
        for n, (tid, hid) in enumerate(rows, 1):
            try:
                their_queue, their_priority = ask(hid)
            except HandoffError as exc:
                out.failed += 1
                if len(out.errors) < 5:
                    out.errors.append(f"ticket {hid}: {exc}")
                continue
            out.checked += 1
            queue = deskgate_queue(cfg, their_queue)
            if queue is None:
                out.unknown_queue += 1
                continue
            with engine.begin() as conn:
                t = conn.execute(select(Ticket).where(Ticket.id == tid)).first()
                if t is None:
                    continue
                priority = (their_priority if their_priority in cfg.postmaster.priorities
                            else t.priority)
                if (queue, priority) != (t.queue, t.priority):
                    move_ticket(conn, t, queue=queue, priority=priority, by=HELPDESK)
                    out.moved += 1
            if n % 200 == 0:
                say(f"{n}/{len(rows)} read back, {out.moved} moved")
    finally:
        connector.close()
    return out
