"""The outbox rows a worker hands off: claimed in order per ticket under a lease,
renewed while the attempt runs, and the attempt's outcome recorded.

A worker on any node claims due rows with a lease (`FOR UPDATE SKIP LOCKED` on
PostgreSQL plus a compare-and-set everywhere). A row is only due when every
earlier row of its ticket is delivered, so a follow-up never overtakes the
creation of its ticket. Each claim has a name of its own (node and number,
gateway.store.claims): it is renewed, checked before the hand-off and recorded
by that name, so a late attempt of a claim another one took over (its lease ran
out, outbox_expiry took it back) neither hands off nor records anything. Plain
functions of a Connection, so they join the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, func, select, update
from sqlalchemy.orm import aliased

from gateway.outbound.queue import _aware, retry_delay, utcnow
from gateway.store.tables import Article, Handoff, Ticket, helpdesk_ref

# ----------------------------------------------------------------- claiming

@dataclass(frozen=True)
class Claimed:
    id: int
    ticket_id: int
    article_id: int
    kind: str
    key: str
    attempts: int
    decisions: dict[str, Any]
    created: datetime
    node: str = ""              # the claim ("": not known, e.g. built by hand)
    earlier: int = 0            # attempts before `deskgate handoff retry` began this cycle
    # An earlier attempt of this row was interrupted (its process ended or hung) and is
    # not counted in `attempts`: the helpdesk may have it, so this one checks first.
    interrupted: bool = False


# The start of the last_error of a row whose last attempt was interrupted: written when
# the lapsed claim is taken back (outbox_expiry), kept until an attempt finishes.
INTERRUPTED = ("previous attempt was interrupted (the process handing it off ended or "
               "hung); not counted as an attempt")


_EARLIER = aliased(Handoff)


# An earlier row of the same ticket is not delivered yet.
_BLOCKED = select(_EARLIER.id).where(_EARLIER.ticket_id == Handoff.ticket_id,
                                     _EARLIER.id < Handoff.id,
                                     _EARLIER.status != "delivered").exists()


def _due(now: datetime) -> Any:
    # A row whose lease ran out is not due until outbox_expiry has taken the interrupted
    # attempt back (uncounted, logged): only a row no claim holds is claimed.
    return and_(Handoff.status == "pending", Handoff.next_attempt <= now,
                Handoff.lease_until.is_(None), ~_BLOCKED)


def claim(conn: Connection, node: str, *, limit: int, lease: float,
          now: datetime | None = None) -> list[Claimed]:
    """Take up to `limit` due rows for the claim `node` until now + lease, oldest
    first (a worker names each claim of its own: gateway.store.claims.claim_name)."""
    now = now or utcnow()
    q = select(Handoff.id).where(_due(now)).order_by(Handoff.id).limit(limit)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    until = now + timedelta(seconds=lease)
    # The attempt is counted when it starts: a node that dies while the helpdesk is
    # answering leaves attempts > 0, so the next try checks the helpdesk first.
    conn.execute(update(Handoff).where(Handoff.id.in_(ids), _due(now))
                 .values(lease_until=until, claimed_by=node[:200],
                         attempts=Handoff.attempts + 1))
    rows = conn.execute(select(Handoff).where(
        Handoff.id.in_(ids), Handoff.claimed_by == node[:200], Handoff.lease_until == until)
        .order_by(Handoff.id)).all()
    return [Claimed(r.id, r.ticket_id, r.article_id, r.kind, r.key, r.attempts - 1,
                    dict(r.decisions or {}), _aware(r.created) or now, r.claimed_by,
                    r.earlier_attempts, interrupted=r.last_error.startswith(INTERRUPTED))
            for r in rows]


def renew(conn: Connection, held: Mapping[int, str], *, lease: float,
          now: datetime | None = None) -> int:
    """Extend the leases of the claims still held (row id → its claim: a slow
    helpdesk, or rows waiting for a free connector thread), so that no node takes them
    again while their attempt runs. Returns how many leases were extended; a row
    another claim took meanwhile is not (0 for a single one: do not hand it off)."""
    now = now or utcnow()
    by: dict[str, list[int]] = {}
    for hid, name in held.items():
        by.setdefault(name[:200], []).append(hid)
    n = 0
    for name, ids in by.items():
        n += int(conn.execute(update(Handoff).where(
            Handoff.id.in_(ids), Handoff.claimed_by == name, Handoff.status == "pending",
            Handoff.lease_until.is_not(None))
            .values(lease_until=now + timedelta(seconds=lease))).rowcount)
    return n


# A leased row (being handed off, here or by another node) is due again when its lease
# runs out, not at its next_attempt, which has passed.
_DUE_AT = case((Handoff.lease_until > Handoff.next_attempt, Handoff.lease_until),
               else_=Handoff.next_attempt)


def next_due(conn: Connection) -> datetime | None:
    """When the earliest pending row becomes claimable (None: none will by itself). A row
    held back by an earlier one of its ticket is left out: it follows that row's delivery
    (claimed in the same cycle) or an admin's retry or delete (seen at the next poll)."""
    return _aware(conn.execute(select(func.min(_DUE_AT))
                               .where(Handoff.status == "pending", ~_BLOCKED)).scalar())


# ----------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Outcome:
    # delivered | pending | failed | superseded (a result not recorded: the lease ran
    # out and the row was delivered or taken by another claim meanwhile) | deleted
    # (nothing recorded: `deskgate handoff delete` removed the row while it was tried)
    status: str
    attempts: int
    next_attempt: datetime | None = None
    number_taken: bool = False       # the helpdesk's number became the ticket's number


# Built once: the outcome of every hand-off runs these on the writer thread. A row is
# matched by id and key: SQLite gives the id of a deleted last row to the next one.
# A delivery is recorded while no other claim holds the row and none delivered it: by
# its own claim, or after that claim was taken back (pending or failed, unclaimed).
_UPD_DELIVERED = update(Handoff).where(
    Handoff.id == bindparam("b_id"), Handoff.key == bindparam("b_key"),
    Handoff.status != "delivered",
    Handoff.claimed_by.in_([bindparam("b_claim"), ""])).values(
    status="delivered", attempts=bindparam("b_attempts"), lease_until=None, claimed_by="",
    last_error="", updated=bindparam("b_now"), delivered=bindparam("b_now"))
_UPD_TICKET_ID = update(Ticket).where(Ticket.id == bindparam("b_tid")).values(
    helpdesk_ticket_id=bindparam("b_value"))
_UPD_TICKET_NUMBER = update(Ticket).where(Ticket.id == bindparam("b_tid")).values(
    helpdesk_ticket_number=bindparam("b_value"))
_OTHER = aliased(Ticket)
# A ticket without a number takes the helpdesk's, unless another ticket has it.
_ADOPT = update(Ticket).where(
    Ticket.id == bindparam("b_tid"), Ticket.number.is_(None),
    ~select(_OTHER.id).where(_OTHER.number == bindparam("b_number")).exists()).values(
    number=bindparam("b_number"), helpdesk_ticket_number=bindparam("b_number"))


def record_delivered(conn: Connection, c: Claimed, *, ticket_id: str, ticket_number: str,
                     now: datetime | None = None) -> Outcome:
    """Mark the row delivered and keep the helpdesk's ticket on deskgate's ticket.

    A row deleted by `deskgate handoff delete` while the attempt ran stays deleted and
    the helpdesk's answer is not kept ("deleted"): the admin's delete wins. A row
    another claim holds or delivered (this attempt's lease ran out and the row was
    taken over) is left to it ("superseded"): a late answer is not recorded over the
    new claim's."""
    now = now or utcnow()
    if not conn.execute(_UPD_DELIVERED, {"b_id": c.id, "b_key": c.key, "b_claim": c.node,
                                         "b_attempts": c.attempts + 1, "b_now": now}).rowcount:
        exists = conn.execute(select(Handoff.id).where(Handoff.id == c.id,
                                                       Handoff.key == c.key)).first()
        return Outcome("superseded" if exists else "deleted", c.attempts + 1)
    if ticket_id:
        absorb(conn, c.ticket_id, ticket_id[:100])
        conn.execute(_UPD_TICKET_ID, {"b_tid": c.ticket_id, "b_value": ticket_id[:100]})
    taken = False
    if ticket_number:
        conn.execute(_UPD_TICKET_NUMBER, {"b_tid": c.ticket_id,
                                          "b_value": ticket_number[:100]})
        taken = adopt_number(conn, c.ticket_id, ticket_number)
    return Outcome("delivered", c.attempts + 1, number_taken=taken)


def absorb(conn: Connection, ticket_id: int, helpdesk_id: str) -> int:
    """Move into `ticket_id` the tickets that the helpdesk's own mail opened for the same
    helpdesk ticket before its hand-off was answered (they have no hand-off of their
    own), and delete them. Returns how many were merged."""
    from gateway.store.tables import AutoResponse, AutoResponseRequest, OutboundMessage

    others = [r.id for r in conn.execute(select(Ticket.id).where(
        Ticket.helpdesk_ticket_id == helpdesk_id, helpdesk_ref(Ticket.helpdesk_ticket_id),
        Ticket.id != ticket_id,
        ~select(Handoff.id).where(Handoff.ticket_id == Ticket.id).exists())).all()]
    for other in others:
        conn.execute(update(Article).where(Article.ticket_id == other)
                     .values(ticket_id=ticket_id))
        conn.execute(update(OutboundMessage).where(OutboundMessage.ticket_id == other)
                     .values(ticket_id=ticket_id))
        conn.execute(update(AutoResponse).where(AutoResponse.ticket_id == other)
                     .values(ticket_id=ticket_id))
        conn.execute(update(AutoResponseRequest).where(AutoResponseRequest.ticket_id == other)
                     .values(ticket_id=ticket_id))
        conn.execute(update(Ticket).where(Ticket.linked_ticket_id == other)
                     .values(linked_ticket_id=ticket_id))
        conn.execute(delete(Ticket).where(Ticket.id == other))
    return len(others)


def adopt_number(conn: Connection, ticket_id: int, number: str) -> bool:
    """Give a ticket without a number the helpdesk's (unless another ticket has it)."""
    res = conn.execute(_ADOPT, {"b_tid": ticket_id, "b_number": number[:40]})
    return bool(res.rowcount)


def record_failure(conn: Connection, c: Claimed, error: str, *, temporary: bool,
                   schedule: tuple[float, ...], now: datetime | None = None) -> Outcome:
    """A failed attempt: retry on the schedule (±10 % jitter), else failed for good.

    Only while the row is still this attempt's: one whose lease ran out and that was
    delivered or claimed by another attempt meanwhile is left alone ("superseded"),
    so a late failure never makes a delivered row pending (sent again) nor frees a
    row another node is handing off."""
    now = now or utcnow()
    attempts = c.attempts + 1
    delay = retry_delay(schedule, attempts) if temporary else None
    values: dict[str, Any] = {"attempts": attempts, "lease_until": None, "claimed_by": "",
                              "last_error": error[:4000], "updated": now}
    mine = update(Handoff).where(Handoff.id == c.id, Handoff.key == c.key,
                                 Handoff.status == "pending")
    if c.node:
        mine = mine.where(Handoff.claimed_by == c.node)
    nxt = None
    if delay is None:
        values["status"] = "failed"
    else:
        nxt = values["next_attempt"] = now + timedelta(seconds=delay)
    if not conn.execute(mine.values(**values)).rowcount:
        exists = conn.execute(select(Handoff.id).where(Handoff.id == c.id,
                                                       Handoff.key == c.key)).first()
        return Outcome("superseded" if exists else "deleted", attempts)
    return Outcome("failed", attempts) if nxt is None else Outcome("pending", attempts, nxt)

