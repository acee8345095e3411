"""The operator's view of the outbox: `deskgate handoff list|show|retry|delete`,
`tickets show`, the dashboard and /metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, func, literal, or_, select, update

from gateway.commlog import Comm, write_comm
from gateway.helpdesk.outbox_claim import INTERRUPTED
from gateway.outbound.queue import _aware, utcnow
from gateway.store.tables import Article, Handoff, Ticket

# The statuses of rows not delivered (status is pending | delivered | failed).
_WAITING = ("pending", "failed")


def _row(h: Any, number: str | None = None, hd_id: str = "", hd_number: str = "",
         now: datetime | None = None) -> dict[str, Any]:
    # A pending row claimed by a node: in delivery while the lease lasts; after it, that
    # attempt did not finish (the node died or hung) until a node takes it back (expire).
    lease = _aware(h.lease_until)
    claimed = h.claimed_by if h.status == "pending" else ""
    return {"id": h.id, "ticket": number or "", "ticket_id": h.ticket_id,
            "article_id": h.article_id, "kind": h.kind, "helpdesk": h.helpdesk,
            "status": h.status, "attempts": h.attempts,
            "next_attempt": _aware(h.next_attempt) if h.status == "pending" else None,
            "last_error": h.last_error, "created": _aware(h.created),
            "delivered": _aware(h.delivered), "helpdesk_ticket_id": hd_id,
            "helpdesk_ticket_number": hd_number,
            "in_delivery": _in_delivery(claimed, lease, now or utcnow()),
            "claimed_by": claimed, "lease_until": lease if claimed else None}


def attempt_note(r: Mapping[str, Any]) -> str:
    """What the node that claimed a pending row (a row of `list_handoffs`, `show` or
    `ticket_state`) is doing: handing it off now, or nothing any more (its lease ran
    out without an outcome: it died or hung); "" when no node holds it."""
    if r.get("status", r.get("state")) != "pending" or not r["claimed_by"]:
        return ""
    if r["in_delivery"]:
        return f"in delivery by {r['claimed_by']}"
    return (f"attempt by {r['claimed_by']} did not finish (lease ran out "
            f"{r['lease_until']:%Y-%m-%d %H:%M:%S}; handed off again, not counted)")


def list_handoffs(conn: Connection, *, status: str | None = None, limit: int = 1000,
                  ticket_id: int | None = None) -> list[dict[str, Any]]:
    """Rows newest first; default: everything not delivered."""
    q = (select(Handoff, Ticket.number, Ticket.helpdesk_ticket_id,
                Ticket.helpdesk_ticket_number)
         .join(Ticket, Ticket.id == Handoff.ticket_id).order_by(Handoff.id.desc()).limit(limit))
    if ticket_id is not None:
        q = q.where(Handoff.ticket_id == ticket_id)
    now = utcnow()
    if status == "all" or (ticket_id is not None and status is None):
        pass
    elif status:
        q = q.where(Handoff.status == status)
    else:
        # Not `!= 'delivered'`: that reads the delivered rows (nearly all) backwards
        # until `limit` others turn up; the two statuses come from ix_handoff_due.
        q = q.where(Handoff.status.in_(_WAITING))
    return [_row(r, r.number, r.helpdesk_ticket_id, r.helpdesk_ticket_number, now)
            for r in conn.execute(q).all()]


def show(conn: Connection, hid: int) -> dict[str, Any] | None:
    r = conn.execute(select(Handoff, Ticket.number, Ticket.helpdesk_ticket_id,
                            Ticket.helpdesk_ticket_number, Article.subject, Article.message_id,
                            Article.from_addr)
                     .join(Ticket, Ticket.id == Handoff.ticket_id)
                     .join(Article, Article.id == Handoff.article_id, isouter=True)
                     .where(Handoff.id == hid)).first()
    if r is None:
        return None
    h = r
    d = _row(h, r.number, r.helpdesk_ticket_id, r.helpdesk_ticket_number)
    waiting = conn.execute(select(Handoff.id).where(
        Handoff.ticket_id == h.ticket_id, Handoff.id < hid,
        Handoff.status != "delivered").order_by(Handoff.id).limit(1)).scalar()
    d.update({"key": h.key, "decisions": dict(h.decisions or {}),
              "earlier_attempts": h.earlier_attempts,
              "cycle_started": _aware(h.cycle_started),
              "lease_until": _aware(h.lease_until),
              "claimed_by": h.claimed_by, "subject": r.subject or "",
              "message_id": r.message_id or "", "from": r.from_addr or "",
              "waiting_for": waiting})
    return d


@dataclass(frozen=True)
class Retried:
    retried: list[int]           # due now, with a fresh cycle of attempts
    in_delivery: list[int]       # being handed off right now: left to that attempt


def _in_delivery(claimed_by: str, lease_until: datetime | None, now: datetime) -> bool:
    """A node is handing the row off now: it claimed it and its lease lasts (the
    opposite of _at_rest)."""
    lease = _aware(lease_until)
    return bool(claimed_by) and lease is not None and lease > now


def _at_rest(now: datetime) -> Any:
    """No node is handing the row off (none claimed it, or its lease ran out)."""
    return or_(Handoff.claimed_by == "", Handoff.lease_until.is_(None),
               Handoff.lease_until <= now)


# An interruption before the retry is history, not the first of two in a row in the
# new cycle (outbox_expiry defers a row whose last_error says it was interrupted):
# its text stays, behind what happened since.
RETRIED = "retried by hand (deskgate handoff retry); before: "
_LAST_ERROR_AFTER_RETRY = case(
    (Handoff.last_error.startswith(INTERRUPTED, autoescape=True),
     literal(RETRIED) + Handoff.last_error),
    else_=Handoff.last_error)


def retry_now(conn: Connection, hid: int | None = None, *, now: datetime | None = None
              ) -> Retried:
    """Make pending or failed rows (one, or all) due now, each with a fresh cycle of
    attempts on [helpdesk] retry, as `postsuper -r` requeues a message: a failed row is
    not failed again by its next failure, nor by two interruptions in a row for the time
    it spent in the outbox before (cycle_started). The attempts so far move to earlier_attempts,
    so the next attempt still checks the helpdesk first (an earlier one may have got
    through). Each reset is logged on its article. A row a node is handing off right
    now is left to that attempt: its record counts on the attempts it was claimed with."""
    now = now or utcnow()
    q = select(Handoff.id, Handoff.article_id, Handoff.status, Handoff.attempts,
               Handoff.earlier_attempts, Handoff.last_error, Handoff.claimed_by,
               Handoff.lease_until).where(Handoff.status.in_(_WAITING)).order_by(Handoff.id)
    if hid is not None:
        q = q.where(Handoff.id == hid)
    rows = conn.execute(q).all()
    busy = [r.id for r in rows if _in_delivery(r.claimed_by, r.lease_until, now)]
    idle = {r.id: r for r in rows if r.id not in busy}
    keys = list(idle)
    done: list[int] = []
    for i in range(0, len(keys), 500):
        done += conn.execute(update(Handoff).where(
            Handoff.id.in_(keys[i:i + 500]), Handoff.status.in_(_WAITING), _at_rest(now))
            .values(status="pending", next_attempt=now, attempts=0,
                    earlier_attempts=Handoff.earlier_attempts + Handoff.attempts,
                    cycle_started=now, lease_until=None, claimed_by="", updated=now,
                    last_error=_LAST_ERROR_AFTER_RETRY)
            .returning(Handoff.id)).scalars().all()
    done.sort()
    if done:
        comm = Comm("Outgoing", "Handoff", "deskgate handoff retry")
        for rid in done:
            r = idle[rid]
            msg = comm.obj("Message")
            msg.article_id = r.article_id
            tried = f"{r.attempts} attempt{'s' if r.attempts != 1 else ''}" + (
                f" ({r.earlier_attempts} more before an earlier retry)"
                if r.earlier_attempts else "")
            msg.log("Notice", "Retry", f"hand-off #{rid} retried by hand: it was {r.status} "
                    f"after {tried}" + (f", last error: {r.last_error[:1000]}"
                                         if r.last_error else "")
                    + "; a fresh cycle of attempts on [helpdesk] retry starts now")
            msg.close("Successful")
        comm.close("Successful")
        write_comm(conn, comm)
    return Retried(done, sorted(set(busy) | (set(idle) - set(done))))


@dataclass(frozen=True)
class Removed:
    """A row `remove` deleted, as it was: `in_delivery` when a node was handing it off
    at that moment (that attempt may still reach the helpdesk; its result is not
    recorded)."""

    id: int
    status: str                  # pending | failed
    attempts: int
    claimed_by: str              # the node that claimed it last ("" when none holds it)
    lease_until: datetime | None
    in_delivery: bool


def remove(conn: Connection, hid: int, now: datetime | None = None) -> Removed | None:
    """Delete a row that is not delivered (the article stays in deskgate's store), even
    while a node hands it off: the delete wins, as `postsuper -d` does on Postfix's
    active queue. None when there is no such row."""
    now = now or utcnow()
    r = conn.execute(delete(Handoff).where(Handoff.id == hid, Handoff.status != "delivered")
                     .returning(Handoff.status, Handoff.attempts, Handoff.claimed_by,
                                Handoff.lease_until)).first()
    if r is None:
        return None
    live = _in_delivery(r.claimed_by, r.lease_until, now)
    return Removed(hid, r.status, r.attempts, r.claimed_by if live else "",
                   _aware(r.lease_until) if live else None, live)


def status_of(conn: Connection, hid: int) -> str | None:
    """pending | delivered | failed, None when there is no row `hid`."""
    return conn.execute(select(Handoff.status).where(Handoff.id == hid)).scalar()


@dataclass(frozen=True)
class Stats:
    pending: int
    failed: int
    oldest_pending: datetime | None


def stats(conn: Connection) -> Stats:
    """Pending and failed rows and the oldest pending one (each /metrics scrape and the
    dashboard). Delivered rows are not counted: they are nearly the whole table."""
    rows = {status: n for status, n in conn.execute(
        select(Handoff.status, func.count()).where(Handoff.status.in_(_WAITING))
        .group_by(Handoff.status)).all()}
    oldest = _aware(conn.execute(select(func.min(Handoff.created))
                                 .where(Handoff.status == "pending")).scalar())
    return Stats(int(rows.get("pending", 0)), int(rows.get("failed", 0)), oldest)


def ticket_state(conn: Connection, ticket_id: int) -> dict[str, Any] | None:
    """`helpdesk{}` of `tickets show --json`: the latest row of a ticket, None without."""
    r = conn.execute(select(Handoff, Ticket.helpdesk_ticket_id, Ticket.helpdesk_ticket_number)
                     .join(Ticket, Ticket.id == Handoff.ticket_id)
                     .where(Handoff.ticket_id == ticket_id)
                     .order_by(Handoff.id.desc()).limit(1)).first()
    if r is None:
        return None
    h = r
    row = _row(h)
    return {"type": h.helpdesk, "ticket_id": r.helpdesk_ticket_id,
            "ticket_number": r.helpdesk_ticket_number, "state": h.status,
            "attempts": h.attempts, "last_error": h.last_error, "handoff_id": h.id,
            "in_delivery": row["in_delivery"], "claimed_by": row["claimed_by"],
            "lease_until": row["lease_until"]}
