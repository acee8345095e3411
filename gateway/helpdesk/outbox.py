"""The hand-off outbox: enqueue with the article, claim in order per ticket, record, admin.

Plain functions of a Connection, so they join the caller's transaction. The row
is written in the transaction that stores the article, before the MTA gets 250;
a worker on any node claims due rows with a lease (`FOR UPDATE SKIP LOCKED` on
PostgreSQL plus a compare-and-set everywhere). A row is only due when every
earlier row of its ticket is delivered, so a follow-up never overtakes the
creation of its ticket.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.orm import aliased

from gateway.commlog import Comm, write_comm
from gateway.outbound.queue import _aware, retry_delay, utcnow
from gateway.store.repo import insert_handoff
from gateway.store.tables import Article, Attachment, Delivery, Handoff, RawMessage, Ticket

# ----------------------------------------------------------------- enqueue



def enqueue(conn: Connection, *, ticket_id: int, article_id: int, kind: str, helpdesk: str,
            decisions: dict[str, str]) -> int:
    """The outbox row of one stored article (inside the storing transaction)."""
    now = utcnow()
    return insert_handoff(conn, {
        "ticket_id": ticket_id, "article_id": article_id, "kind": kind,
        "key": f"dg-{uuid.uuid4().hex}", "helpdesk": helpdesk, "status": "pending",
        "attempts": 0, "earlier_attempts": 0, "next_attempt": now, "lease_until": None,
        "claimed_by": "",
        "last_error": "", "decisions": decisions, "created": now, "updated": now,
        "delivered": None})


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
    node: str = ""              # who claimed it ("": not known, e.g. built by hand)
    earlier: int = 0            # attempts before `deskgate handoff retry` began this cycle


_EARLIER = aliased(Handoff)


# An earlier row of the same ticket is not delivered yet.
_BLOCKED = select(_EARLIER.id).where(_EARLIER.ticket_id == Handoff.ticket_id,
                                     _EARLIER.id < Handoff.id,
                                     _EARLIER.status != "delivered").exists()


def _due(now: datetime) -> Any:
    return and_(Handoff.status == "pending", Handoff.next_attempt <= now,
                or_(Handoff.lease_until.is_(None), Handoff.lease_until < now), ~_BLOCKED)


def claim(conn: Connection, node: str, *, limit: int, lease: float,
          now: datetime | None = None) -> list[Claimed]:
    """Take up to `limit` due rows for `node` until now + lease, oldest first."""
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
                    r.earlier_attempts)
            for r in rows]


def renew(conn: Connection, node: str, ids: list[int], *, lease: float,
          now: datetime | None = None) -> int:
    """Extend the leases `node` holds on rows it is still handing off (a slow helpdesk,
    or rows waiting for a free connector thread), so that no node takes them again
    while their attempt runs. Returns how many leases were extended."""
    if not ids:
        return 0
    now = now or utcnow()
    return int(conn.execute(update(Handoff).where(
        Handoff.id.in_(ids), Handoff.claimed_by == node[:200], Handoff.status == "pending")
        .values(lease_until=now + timedelta(seconds=lease))).rowcount)


# The last_error of an attempt that ended without an outcome of its own.
LOST = "hand-off attempt did not finish (the process ended or hung)"


@dataclass(frozen=True)
class Lost:
    """A claim whose lease ran out with no outcome, recorded as a failed attempt."""

    claimed: Claimed             # as it was claimed (node, attempts before it)
    lease_until: datetime
    outcome: Outcome             # pending (next_attempt on the schedule) | failed


def expire(conn: Connection, node: str, *, schedule: tuple[float, ...],
           held: set[int] | frozenset[int] = frozenset(), limit: int = 100,
           now: datetime | None = None) -> list[Lost]:
    """Record each claim whose lease ran out without an outcome (its node was killed,
    crashed or hung) as a temporary failure: the attempt, counted at its claim, now
    also moves the row along the schedule, to its next step counted from the end of
    the lease, or to failed after the last one. Without this a message that kills the
    process on every attempt would be claimed again at each lease's end, for ever.
    The rows in `held` that `node` claimed are left alone: its attempts still run."""
    now = now or utcnow()
    q = (select(Handoff).where(Handoff.status == "pending", Handoff.next_attempt <= now,
                               Handoff.claimed_by != "", Handoff.lease_until < now)
         .order_by(Handoff.id).limit(limit))
    if held:
        q = q.where(~and_(Handoff.claimed_by == node[:200], Handoff.id.in_(held)))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    out: list[Lost] = []
    for r in conn.execute(q).all():
        lease = _aware(r.lease_until) or now
        attempts = max(r.attempts, 1)
        delay = retry_delay(schedule, attempts)
        error = (f"{LOST}: claimed by {r.claimed_by}, no outcome by the end of its lease "
                 f"at {lease:%Y-%m-%d %H:%M:%S} UTC")
        values: dict[str, Any] = {"attempts": attempts, "lease_until": None,
                                  "claimed_by": "", "last_error": error, "updated": now}
        nxt = None
        if delay is None:
            values["status"] = "failed"
        else:
            nxt = values["next_attempt"] = lease + timedelta(seconds=delay)
        # Compare-and-set: another node may have recorded it meanwhile.
        if not conn.execute(update(Handoff).where(
                Handoff.id == r.id, Handoff.key == r.key, Handoff.status == "pending",
                Handoff.claimed_by == r.claimed_by, Handoff.lease_until == r.lease_until)
                .values(**values)).rowcount:
            continue
        claimed = Claimed(r.id, r.ticket_id, r.article_id, r.kind, r.key, attempts - 1,
                          dict(r.decisions or {}), _aware(r.created) or now, r.claimed_by,
                          r.earlier_attempts)
        out.append(Lost(claimed, lease, Outcome("failed", attempts) if nxt is None
                        else Outcome("pending", attempts, nxt)))
    return out


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


# ----------------------------------------------------------------- loading

@dataclass(frozen=True)
class Loaded:
    """What the worker reads for one claimed row (on its own connection)."""

    ticket: dict[str, Any]
    article: dict[str, Any]
    attachments: list[Any]
    raw: bytes
    recipients: list[str]         # the envelope recipients it was delivered to
    earlier_delivered: bool       # an earlier row of this ticket reached the helpdesk


_TICKET_KEYS = ("number", "title", "queue", "state", "priority", "type", "service", "sla",
                "owner", "responsible", "lock", "customer_no", "customer_user",
                "pending_until", "dynamic_fields", "helpdesk_ticket_id",
                "helpdesk_ticket_number")
_ARTICLE_KEYS = ("direction", "sender_type", "is_visible_for_customer", "from_addr",
                 "from_email", "to_addr", "cc_addr", "reply_to", "subject", "message_id",
                 "in_reply_to", "references", "content_type", "body", "body_html", "crypto",
                 "headers")


def load(conn: Connection, claimed: list[Claimed]) -> dict[int, Loaded]:
    """Ticket, article, attachments, raw bytes and recipients of claimed rows, by row id,
    in one query per table (a row whose ticket or article is gone is left out)."""
    if not claimed:
        return {}
    tickets = {t.id: t for t in conn.execute(select(Ticket).where(
        Ticket.id.in_({c.ticket_id for c in claimed}))).all()}
    articles = {a.id: a for a in conn.execute(select(Article).where(
        Article.id.in_({c.article_id for c in claimed}))).all()}
    raw_ids = {a.raw_id for a in articles.values() if a.raw_id is not None}
    raws = {r.id: bytes(r.data or b"") for r in conn.execute(select(
        RawMessage.id, RawMessage.data).where(RawMessage.id.in_(raw_ids))).all()} \
        if raw_ids else {}
    atts: dict[int, list[Any]] = {}
    for r in conn.execute(select(Attachment).where(Attachment.article_id.in_(articles))
                          .order_by(Attachment.id)).all():
        atts.setdefault(r.article_id, []).append(r)
    rcpts: dict[int, list[str]] = {}
    for article_id, rcpt in conn.execute(select(Delivery.article_id, Delivery.recipient)
                                         .where(Delivery.article_id.in_(articles))).all():
        if article_id is not None:
            rcpts.setdefault(article_id, []).append(rcpt)
    delivered: dict[int, list[int]] = {}
    for tid, hid in conn.execute(select(Handoff.ticket_id, Handoff.id).where(
            Handoff.ticket_id.in_(tickets), Handoff.status == "delivered")).all():
        delivered.setdefault(tid, []).append(hid)
    out: dict[int, Loaded] = {}
    for c in claimed:
        t, a = tickets.get(c.ticket_id), articles.get(c.article_id)
        if t is None or a is None:
            continue
        ticket = {k: getattr(t, k) for k in _TICKET_KEYS}
        pending = _aware(t.pending_until)
        ticket["pending_until"] = pending.isoformat() if pending else ""
        out[c.id] = Loaded(
            ticket=ticket, article={k: getattr(a, k) for k in _ARTICLE_KEYS},
            attachments=atts.get(a.id, []),
            raw=raws.get(a.raw_id, b"") if a.raw_id is not None else b"",
            recipients=rcpts.get(a.id, []),
            earlier_delivered=any(h < c.id for h in delivered.get(c.ticket_id, ())))
    return out


# ----------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Outcome:
    # delivered | pending | failed | superseded (a failure not recorded: the lease ran
    # out and the row was delivered or taken by another attempt meanwhile) | deleted
    # (nothing recorded: `deskgate handoff delete` removed the row while it was tried)
    status: str
    attempts: int
    next_attempt: datetime | None = None
    number_taken: bool = False       # the helpdesk's number became the ticket's number


# Built once: the outcome of every hand-off runs these on the writer thread. A row is
# matched by id and key: SQLite gives the id of a deleted last row to the next one.
_UPD_DELIVERED = update(Handoff).where(Handoff.id == bindparam("b_id"),
                                       Handoff.key == bindparam("b_key")).values(
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
    the helpdesk's answer is not kept ("deleted"): the admin's delete wins."""
    now = now or utcnow()
    if not conn.execute(_UPD_DELIVERED, {"b_id": c.id, "b_key": c.key,
                                         "b_attempts": c.attempts + 1, "b_now": now}).rowcount:
        return Outcome("deleted", c.attempts + 1)
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
        Ticket.helpdesk_ticket_id == helpdesk_id, Ticket.id != ticket_id,
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


# ----------------------------------------------------------------- admin

# The statuses of rows not delivered (status is pending | delivered | failed).
_WAITING = ("pending", "failed")

def _row(h: Any, number: str | None = None, hd_id: str = "", hd_number: str = "",
         now: datetime | None = None) -> dict[str, Any]:
    # A pending row claimed by a node: in delivery while the lease lasts; after it, that
    # attempt did not finish (the node died or hung) until a node records it (expire).
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
            f"{r['lease_until']:%Y-%m-%d %H:%M:%S}; it counts as failed)")


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


def retry_now(conn: Connection, hid: int | None = None, *, now: datetime | None = None
              ) -> Retried:
    """Make pending or failed rows (one, or all) due now, each with a fresh cycle of
    attempts on [helpdesk] retry, as `postsuper -r` requeues a message: a failed row is
    not failed again by its next failure. The attempts so far move to earlier_attempts,
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
                    lease_until=None, claimed_by="", updated=now)
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


def message_id_for(key: str, hostname: str) -> str:
    """A Message-ID for an article that came without one, stable for its hand-off."""
    return f"<{key}@{hostname or 'localhost'}>"
