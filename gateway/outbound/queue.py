"""The durable outbound queue: enqueue, claim with a lease, record outcomes, admin.

Plain functions of a Connection, so they join the caller's transaction. A
sender claims due messages by setting a lease (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, and a compare-and-set on the lease everywhere), so several nodes
never send the same message; a node that dies mid-send leaves a lease that
expires, and the message is taken again. Such a claim whose lease ran out
without an outcome is an interrupted attempt: the next claim says so
(Claimed.lost_by). As with Postfix's crashed delivery agent it is no failed
attempt: only a finished attempt counts against relay.retry. The sender delivers
again at once; when that attempt is interrupted too (Claimed.lost_again) the
message is deferred, and a message that kills every process delivering it
bounces once its time in the queue (the sum of relay.retry) has run out.
Each claim has a name of its own (the sender's node and a number): an attempt
checks it before MAIL FROM and when recording, so a late one sends and
records nothing once another claim took the message.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from gateway.outbound.context import OutboundContext
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.outbound.received import with_received
from gateway.outbound.transport import Reply, said
from gateway.runtime import Runtime
from gateway.store import repo
from gateway.store.tables import Article, OutboundMessage, OutboundRecipient
from gateway.textsafe import reply_text, shown


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


# ----------------------------------------------------------------- enqueue

def store_article(ctx: OutboundContext, rt: Runtime, conn: Connection) -> None:
    """The outgoing article on its ticket (a new ticket when there is none)."""
    from gateway.inbound.parse import first_address, parse_message

    if ctx.kind == "dsn":
        return
    p = ctx.article or parse_message(ctx.data, with_attachments=True)
    cfg = rt.config
    pm = cfg.postmaster
    if ctx.ticket_id is None:
        customer = first_address(p.to_addr)
        ctx.ticket_id = repo.insert_ticket(
            conn, number=ctx.ticket_number or None,
            helpdesk_ticket_number=ctx.helpdesk_number, helpdesk_ticket_id=ctx.helpdesk_ref,
            title=(p.subject or "(no subject)")[:1000],
            queue=ctx.queue or pm.default_queue, state=pm.default_state,
            state_type=pm.states.get(pm.default_state, "new"), priority=pm.default_priority,
            type=pm.default_type, customer_no=customer, customer_user=customer,
            dynamic_fields={})
        ctx.log.log("Info", "Ticket", f"new ticket {ctx.ticket_number or '(no number)'} in "
                    f"queue {ctx.queue}")
    elif ctx.helpdesk_number:
        from gateway.helpdesk.outbox import adopt_number

        if adopt_number(conn, ctx.ticket_id, ctx.helpdesk_number):
            ctx.log.log("Info", "Ticket", f"ticket takes the helpdesk's number "
                        f"{ctx.helpdesk_number} from the reply's Subject")
    raw_id = repo.insert_raw(conn, ctx.data)
    ctx.article_id = repo.insert_article(
        conn, p.attachments, ticket_id=ctx.ticket_id, direction="outgoing",
        sender_type=ctx.sender_type, is_visible_for_customer=True,
        from_addr=p.from_addr, from_email=p.from_email, to_addr=p.to_addr, cc_addr=p.cc_addr,
        reply_to=p.reply_to, subject=p.subject, message_id=p.message_id,
        in_reply_to=p.in_reply_to, references=p.references, content_type=p.content_type,
        body=p.body, body_html=p.body_html, headers=[list(h) for h in p.headers],
        loop=False, crypto=dict(ctx.crypto), transmission_status="queued",
        transmission_error="", raw_id=raw_id)
    ctx.log.article_id = ctx.article_id


# Built once: executing a prebuilt statement with a parameter dict skips SQLAlchemy's
# per-call statement construction (most of the cost of a small insert).
_INS_MESSAGE = insert(OutboundMessage).returning(OutboundMessage.id)
_INS_RCPT = insert(OutboundRecipient)
_SET_DATA = update(OutboundMessage).where(OutboundMessage.id == bindparam("b_id")).values(
    data=bindparam("b_data"), size=bindparam("b_size"))


def enqueue(ctx: OutboundContext, rt: Runtime, conn: Connection) -> int:
    """Article (unless a DSN), one queue row per copy with its recipient rows; returns
    the first queue id (all of them in ctx.outbound_ids)."""
    store_article(ctx, rt, conn)
    now = utcnow()
    copies = ctx.final_copies()
    ctx.outbound_ids = []
    for c in copies:
        # The Received header needs the queue id: the row is written, then its bytes
        # with the header (in the queued bytes only: a transaction the writer runs
        # again starts from the same c.data, so the header is there once).
        data = c.data
        oid = int(conn.execute(_INS_MESSAGE, dict(
            kind=ctx.kind, queue=ctx.queue, sender=ctx.sender, return_path=ctx.return_path,
            submitter=(ctx.user.name if ctx.user else ctx.account)[:200],
            message_id=ctx.message_id[:998], ticket_id=ctx.ticket_id,
            article_id=ctx.article_id, data=c.data, size=len(c.data), status="queued",
            attempts=0, next_attempt=now, lease_until=None, claimed_by="", last_error="",
            warned=False, created=now, updated=now, dsn_ret=ctx.dsn.ret,
            dsn_envid=ctx.dsn.envid)).scalar_one())
        if ctx.received is not None:
            data = with_received(c.data, ctx.received.header(oid, c.recipients), c.signed)
            conn.execute(_SET_DATA, {"b_id": oid, "b_data": data, "b_size": len(data)})
        none = RecipientDsn()
        conn.execute(_INS_RCPT, [
            {"outbound_id": oid, "address": r[:320], "status": "pending", "attempts": 0,
             "last_code": 0, "last_reply": "", "updated": now,
             "dsn_notify": (d := ctx.dsn_rcpt.get(r.lower(), none)).notify,
             "dsn_orcpt": d.orcpt} for r in c.recipients])
        c.outbound_id = oid
        ctx.outbound_ids.append(oid)
        what = ""
        if len(copies) > 1:
            what = (f" ({c.crypto.get('method')}-encrypted)" if c.crypto.get("encrypted")
                    else " (plain)") + ": " + ", ".join(c.recipients)
        ctx.log.log("Info", "Queued", f"outbound #{oid} from <{ctx.sender}> to "
                    f"{len(c.recipients)} recipient(s){what}, {len(data)} bytes"
                    + (f", ticket {ctx.ticket_number}" if ctx.ticket_number else "")
                    + _dsn_text(ctx, c.recipients))
    oid = ctx.outbound_ids[0]
    ctx.outbound_id = ctx.log.outbound_id = oid
    ctx.log.close("Successful")
    return oid


def _dsn_text(ctx: OutboundContext, recipients: Sequence[str]) -> str:
    """The DSN parameters kept with a queue row, for its Queued entry ('' for none)."""
    parts = [f"RET={ctx.dsn.ret}"] if ctx.dsn.ret else []
    if ctx.dsn.envid:
        parts.append(f"ENVID={shown(ctx.dsn.envid)}")
    for r in recipients:
        d = ctx.dsn_rcpt.get(r.lower())
        if d:
            parts.append(f"<{shown(r)}>" + (f" NOTIFY={d.notify}" if d.notify else "")
                         + (f" ORCPT={shown(d.orcpt)}" if d.orcpt else ""))
    return "; DSN " + ", ".join(parts) if parts else ""


# ----------------------------------------------------------------- claiming

@dataclass
class Claimed:
    id: int
    kind: str
    queue: str
    sender: str
    return_path: str
    message_id: str
    article_id: int | None
    ticket_id: int | None
    data: bytes
    attempts: int
    created: datetime
    warned: bool
    recipients: list[tuple[int, str]] = field(default_factory=list)   # (row id, address)
    node: str = ""              # the claim ("": not known, e.g. built by hand)
    # An interrupted attempt: the claim whose lease ran out without an outcome (its
    # process ended or hung) and when it ran out. Not counted; delivered again now,
    # unless that claim had itself taken over an interrupted one (lost_again):
    # then deferred, not counted either (record_attempt with counted=False).
    lost_by: str = ""
    lost_until: datetime | None = None
    lost_again: bool = False
    # The DSN parameters (RFC 3461) it was submitted with: RET/ENVID, and NOTIFY/ORCPT
    # by recipient row id (only the recipients that were given some).
    dsn: MessageDsn = field(default_factory=MessageDsn)
    dsn_rcpt: dict[int, RecipientDsn] = field(default_factory=dict)

    def rcpt_dsn(self, row_id: int) -> RecipientDsn:
        """A recipient's NOTIFY/ORCPT (none given: RecipientDsn())."""
        return self.dsn_rcpt.get(row_id) or RecipientDsn()


# The message's last_error from the claim that takes over an interrupted attempt, and
# every recipient's reply when such a message is deferred or bounced without delivery.
INTERRUPTED = ("previous attempt was interrupted (the process delivering it ended or "
               "hung); not counted as an attempt")
# Older rows may hold it (counted lost attempts of earlier releases).
LOST_REASON = "delivery attempt did not finish (the process ended or hung)"


def claim(conn: Connection, node: str, *, limit: int, lease: float,
          now: datetime | None = None, exclude: Collection[int] = ()) -> list[Claimed]:
    """Take up to `limit` due messages for the claim `node` until now + lease (a sender
    names each claim of its own; `exclude`: the messages it is still delivering).

    A message whose earlier claim's lease ran out without an outcome comes back with
    lost_by set, and its last_error says INTERRUPTED: deliver it now, or, with
    lost_again, record it uncounted (record_attempt counted=False)."""
    now = now or utcnow()
    due = and_(OutboundMessage.status == "queued", OutboundMessage.next_attempt <= now,
               or_(OutboundMessage.lease_until.is_(None), OutboundMessage.lease_until < now))
    if exclude:
        due = and_(due, OutboundMessage.id.not_in(list(exclude)))
    q = (select(OutboundMessage.id, OutboundMessage.claimed_by, OutboundMessage.lease_until,
                OutboundMessage.last_error)
         .where(due).order_by(OutboundMessage.next_attempt).limit(limit))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    found = conn.execute(q).all()
    if not found:
        return []
    ids = [r.id for r in found]
    until = now + timedelta(seconds=lease)
    mark = {"lease_until": until, "claimed_by": node[:200]}
    # Compare-and-set: only rows still due are taken (another node may have been faster);
    # the (node, until) pair then names exactly the rows this call took. A lost claim is
    # taken only while it is the same claim (its node and lease), so exactly one node
    # records each lost attempt.
    fresh = [r.id for r in found if r.lease_until is None]
    if fresh:
        conn.execute(update(OutboundMessage).where(
            OutboundMessage.id.in_(fresh), due, OutboundMessage.lease_until.is_(None))
            .values(**mark))
    lost: dict[int, tuple[str, datetime | None, bool]] = {}
    for r in found:
        if r.lease_until is not None and conn.execute(update(OutboundMessage).where(
                OutboundMessage.id == r.id, due, OutboundMessage.lease_until == r.lease_until,
                OutboundMessage.claimed_by == r.claimed_by).values(
                    **mark, last_error=INTERRUPTED)).rowcount:
            lost[r.id] = (r.claimed_by or "an unknown node", _aware(r.lease_until),
                          r.last_error == INTERRUPTED)
    rows = conn.execute(select(OutboundMessage).where(
        OutboundMessage.id.in_(ids), OutboundMessage.claimed_by == node[:200],
        OutboundMessage.lease_until == until)).all()
    taken = [r.id for r in sorted(rows, key=lambda r: ids.index(r.id))]
    if not taken:
        return []
    rcpts = conn.execute(select(OutboundRecipient.id, OutboundRecipient.outbound_id,
                                OutboundRecipient.address, OutboundRecipient.dsn_notify,
                                OutboundRecipient.dsn_orcpt)
                         .where(OutboundRecipient.outbound_id.in_(taken),
                                OutboundRecipient.status == "pending")
                         .order_by(OutboundRecipient.id)).all()
    out = {r.id: Claimed(r.id, r.kind, r.queue, r.sender, r.return_path, r.message_id,
                         r.article_id, r.ticket_id, r.data, r.attempts,
                         _aware(r.created) or now, r.warned, node=r.claimed_by,
                         lost_by=lost.get(r.id, ("", None, False))[0],
                         lost_until=lost.get(r.id, ("", None, False))[1],
                         lost_again=lost.get(r.id, ("", None, False))[2],
                         dsn=MessageDsn(r.dsn_ret, r.dsn_envid))
           for r in rows}
    for rc in rcpts:
        out[rc.outbound_id].recipients.append((rc.id, rc.address))
        if rc.dsn_notify or rc.dsn_orcpt:
            out[rc.outbound_id].dsn_rcpt[rc.id] = RecipientDsn(rc.dsn_notify, rc.dsn_orcpt)
    return [out[i] for i in taken]


def renew(conn: Connection, held: Mapping[int, str], *, lease: float,
          now: datetime | None = None) -> int:
    """Extend the leases of the claims still held (message id → its claim, deliveries
    under way or waiting for a worker) to now + lease, so that a slow transfer is not
    taken and sent again by another node; returns how many were extended. A message
    another claim took meanwhile is not extended (0 for a single one: do not send)."""
    now = now or utcnow()
    by: dict[str, list[int]] = {}
    for oid, name in held.items():
        by.setdefault(name[:200], []).append(oid)
    n = 0
    for name, ids in by.items():
        n += conn.execute(update(OutboundMessage).where(
            OutboundMessage.id.in_(ids), OutboundMessage.claimed_by == name,
            OutboundMessage.status == "queued", OutboundMessage.lease_until.is_not(None))
            .values(lease_until=now + timedelta(seconds=lease))).rowcount
    return n


# A leased message (being delivered, here or by another node) is due again when its
# lease runs out, not at its next_attempt, which has passed.
_DUE_AT = case((OutboundMessage.lease_until > OutboundMessage.next_attempt,
                OutboundMessage.lease_until), else_=OutboundMessage.next_attempt)


def next_due(conn: Connection) -> datetime | None:
    """When the earliest queued message becomes due (None: the queue is empty)."""
    return _aware(conn.execute(select(func.min(_DUE_AT))
                               .where(OutboundMessage.status == "queued")).scalar())


# ----------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class RcptResult:
    row_id: int
    address: str
    code: int                 # SMTP code; 0 = not tried (connection failed)
    reply: str
    # A 5xx that refused the connection, not the message (transport.retried): retried.
    temporary: bool = False
    # Where the reply came from (transport.Reply): the server, "name[address]" ("":
    # deskgate's own refusal, or no reply), and the command it answered.
    host: str = ""
    command: str = ""

    @property
    def reason(self) -> str:
        """Why, on one line, as Postfix writes it ("host mx.example.org[192.0.2.1]
        said: 550 5.1.1 ... (in reply to RCPT TO command)"; transport.said)."""
        return said(Reply(self.code, self.reply, self.host, self.command))

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600 and not self.temporary


def retry_delay(schedule: Sequence[float], attempts: int, rng: random.Random | None = None
                ) -> float | None:
    """Seconds until the next try after `attempts` tries, ±10 % jitter; None = exhausted."""
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return base * (rng or random).uniform(0.9, 1.1)


def interrupted_delay(schedule: Sequence[float], age: float,
                      rng: random.Random | None = None) -> float | None:
    """Seconds until the next try of a message whose attempts were interrupted twice in a
    row, by its time in the queue (as Postfix backs off by age): the schedule's delay
    reached by now, ±10 %; None once the schedule's whole time has passed."""
    passed = 0.0
    for base in schedule:
        passed += base
        if age < passed:
            return base * (rng or random).uniform(0.9, 1.1)
    return None


@dataclass
class Settled:
    """What record_attempt decided, for DSNs and the log."""

    # queued | sent | failed, or not recorded: superseded (the lease ran out and the row
    # was delivered or taken by another attempt meanwhile) | deleted (by an admin)
    status: str
    failed: list[RcptResult] = field(default_factory=list)     # permanently failed now
    delayed: list[RcptResult] = field(default_factory=list)    # still pending
    sent: list[RcptResult] = field(default_factory=list)
    next_attempt: datetime | None = None
    warn: bool = False                            # a delayed DSN is due now
    exhausted: bool = False
    unrecorded: list[RcptResult] = field(default_factory=list)   # superseded | deleted

    @property
    def recorded(self) -> bool:
        return self.status not in ("superseded", "deleted")


_UPD_RCPT = update(OutboundRecipient).where(OutboundRecipient.id == bindparam("b_id")).values(
    status=bindparam("b_status"), attempts=OutboundRecipient.attempts + 1,
    last_code=bindparam("b_code"), last_reply=bindparam("b_reply"), updated=bindparam("b_now"))
_UPD_RCPT_UNCOUNTED = update(OutboundRecipient).where(
    OutboundRecipient.id == bindparam("b_id")).values(
    status=bindparam("b_status"), last_code=bindparam("b_code"),
    last_reply=bindparam("b_reply"), updated=bindparam("b_now"))
_SEL_FAILED = select(OutboundRecipient.id).where(
    OutboundRecipient.outbound_id == bindparam("b_id"),
    OutboundRecipient.status == "failed").limit(1)
_UPD_ARTICLE = update(Article).where(Article.id == bindparam("b_id")).values(
    transmission_status=bindparam("b_status"), transmission_error=bindparam("b_error"))
# An article sent as several copies (one queue row each) is sent once every row is,
# and stays failed once one of them failed (or was deleted).
_OTHER_UNSENT = select(OutboundMessage.id).where(
    OutboundMessage.status.in_(("queued", "failed")),
    OutboundMessage.article_id == bindparam("b_id"),
    OutboundMessage.id != bindparam("b_row")).exists()
_UPD_ARTICLE_SENT = update(Article).where(
    Article.id == bindparam("b_id"), Article.transmission_status != "failed",
    ~_OTHER_UNSENT).values(transmission_status="sent", transmission_error="")


def record_attempt(conn: Connection, msg: Claimed, results: Sequence[RcptResult], *,
                   schedule: Sequence[float], warn_after: float, error: str = "",
                   now: datetime | None = None, counted: bool = True) -> Settled:
    """Write per-recipient outcomes, the next attempt or the final status; free the lease.

    counted=False: no attempt was made (the one before was interrupted again); the
    attempt counts stay, the delay follows the message's age (interrupted_delay) and
    the message fails only once the schedule's whole time has passed.

    `results` covers every recipient that was pending when the message was claimed.
    Only while the row is still this attempt's (queued and claimed by msg.node): an
    attempt whose lease ran out and whose row was delivered or claimed by another
    attempt meanwhile, or deleted by an admin, changes nothing ("superseded",
    "deleted"), so a late outcome never makes a delivered row queued again (sent
    twice) nor frees a row another node is delivering.
    """
    now = now or utcnow()
    attempts = msg.attempts + 1 if counted else msg.attempts
    delay = (retry_delay(schedule, attempts) if counted else
             interrupted_delay(schedule, (now - msg.created).total_seconds()))
    st = Settled(status="queued")
    params = []
    for r in results:
        if r.ok:
            status = "sent"
            st.sent.append(r)
        elif r.permanent or delay is None:
            status = "failed"
            st.failed.append(r)
        else:
            status = "pending"
            st.delayed.append(r)
        # A failure worded as in last_error (the server, its reply, the command it
        # answered); a delivery as the server's reply.
        params.append({"b_id": r.row_id, "b_status": status, "b_code": r.code,
                       "b_reply": (r.reply if r.ok else r.reason)[:2000], "b_now": now})
    st.exhausted = delay is None and bool(st.failed) and any(not r.permanent for r in st.failed)
    # On one line (the dashboard's and outqueue's column): an address and a reply are
    # written as the DSN shows them, a multi-line reply as Postfix logs it.
    last_error = (shown(error) or _outcomes((*st.failed, *st.delayed)))[:4000]
    values: dict[str, Any] = {"attempts": attempts, "lease_until": None, "claimed_by": "",
                              "updated": now, "last_error": last_error}
    if st.delayed:
        assert delay is not None
        st.next_attempt = now + timedelta(seconds=delay)
        values["next_attempt"] = st.next_attempt
        if (warn_after > 0 and not msg.warned and msg.kind == "message"
                and now - msg.created >= timedelta(seconds=warn_after)):
            st.warn = True
            values["warned"] = True
    else:
        failed_before = msg.attempts > 0 and not st.failed and conn.execute(
            _SEL_FAILED, {"b_id": msg.id}).first() is not None
        st.status = "failed" if st.failed or failed_before else "sent"
        values["status"] = st.status
    # By id and content: SQLite gives a deleted last row's id to the next message.
    mine = update(OutboundMessage).where(OutboundMessage.id == msg.id,
                                         OutboundMessage.message_id == msg.message_id,
                                         OutboundMessage.size == len(msg.data),
                                         OutboundMessage.status == "queued")
    if msg.node:
        mine = mine.where(OutboundMessage.claimed_by == msg.node)
    if not conn.execute(mine.values(**values)).rowcount:
        gone = conn.execute(select(OutboundMessage.id).where(
            OutboundMessage.id == msg.id, OutboundMessage.message_id == msg.message_id,
            OutboundMessage.size == len(msg.data))).first() is None
        return Settled(status="deleted" if gone else "superseded", unrecorded=list(results))
    if params:
        conn.execute(_UPD_RCPT if counted else _UPD_RCPT_UNCOUNTED, params)
    if msg.article_id is not None:
        if st.status == "sent":
            conn.execute(_UPD_ARTICLE_SENT, {"b_id": msg.article_id, "b_row": msg.id})
        elif st.failed or st.status == "failed":
            conn.execute(_UPD_ARTICLE, {"b_id": msg.article_id, "b_status": "failed",
                                        "b_error": _outcomes(st.failed)[:4000]})
    return st


def _outcomes(results: Sequence[RcptResult]) -> str:
    return "; ".join(f"<{shown(r.address)}>: {r.reason}" for r in results)


# ----------------------------------------------------------------- admin

# What outqueue and the dashboard show is on one line: addresses and texts with their
# control characters escaped as shown() writes them (a last_error stored before they
# were escaped too).
def _row_json(m: Any, rcpts: Sequence[Any]) -> dict[str, Any]:
    return {"id": m.id, "queue": m.queue, "sender": shown(m.sender),
            "recipients": [shown(r.address) for r in rcpts if r.status == "pending"]
            or [shown(r.address) for r in rcpts],
            "attempts": m.attempts, "next_attempt": _aware(m.next_attempt),
            "last_error": shown(m.last_error)}


def list_queue(conn: Connection, *, include_done: bool = False,
               limit: int = 1000) -> list[dict[str, Any]]:
    q = select(OutboundMessage.id, OutboundMessage.queue, OutboundMessage.sender,
               OutboundMessage.attempts, OutboundMessage.next_attempt,
               OutboundMessage.last_error, OutboundMessage.status).order_by(
        OutboundMessage.id).limit(limit)
    if not include_done:
        q = q.where(OutboundMessage.status == "queued")
    rows = conn.execute(q).all()
    if not rows:
        return []
    rc = conn.execute(select(OutboundRecipient.outbound_id, OutboundRecipient.address,
                             OutboundRecipient.status)
                      .where(OutboundRecipient.outbound_id.in_([r.id for r in rows]))
                      .order_by(OutboundRecipient.id)).all()
    by: dict[int, list[Any]] = {}
    for r in rc:
        by.setdefault(r.outbound_id, []).append(r)
    out = []
    for m in rows:
        d = _row_json(m, by.get(m.id, []))
        if include_done:
            d["status"] = m.status
        out.append(d)
    return out


def show(conn: Connection, oid: int) -> dict[str, Any] | None:
    m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).first()
    if m is None:
        return None
    rcpts = conn.execute(select(OutboundRecipient).where(OutboundRecipient.outbound_id == oid)
                         .order_by(OutboundRecipient.id)).all()
    d = _row_json(m, rcpts)
    d.update({"status": m.status, "kind": m.kind, "message_id": shown(m.message_id),
              "return_path": shown(m.return_path), "submitter": shown(m.submitter),
              "ticket_id": m.ticket_id, "article_id": m.article_id, "size": m.size,
              "created": _aware(m.created), "lease_until": _aware(m.lease_until),
              "claimed_by": m.claimed_by, "dsn_ret": m.dsn_ret,
              "dsn_envid": shown(m.dsn_envid),
              "recipient_status": [{"address": shown(r.address), "status": r.status,
                                    "attempts": r.attempts, "last_code": r.last_code,
                                    "last_reply": reply_text(r.last_code, r.last_reply),
                                    "dsn_notify": r.dsn_notify,
                                    "dsn_orcpt": shown(r.dsn_orcpt)}
                                   for r in rcpts],
              "headers": m.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")})
    return d


def retry_now(conn: Connection, oid: int | None = None) -> int:
    """Make queued messages (one, or all for flush) due now; returns how many."""
    q = update(OutboundMessage).where(OutboundMessage.status == "queued")
    if oid is not None:
        q = q.where(OutboundMessage.id == oid)
    return conn.execute(q.values(next_attempt=utcnow(), updated=utcnow())).rowcount


@dataclass(frozen=True)
class Removed:
    """A message `remove` deleted, as it was then."""

    id: int
    status: str                 # queued | sent | failed
    claimed_by: str             # the node delivering it ("": none)
    lease_until: datetime | None

    @property
    def in_delivery(self) -> bool:
        """An attempt was under way: it may still hand the message to the smarthost, but
        its outcome is not recorded and the message is not tried again."""
        return (self.status == "queued" and bool(self.claimed_by)
                and self.lease_until is not None and self.lease_until > utcnow())


def remove(conn: Connection, oid: int) -> Removed | None:
    """Delete a message from the queue (the article keeps a transmission error unless
    this copy was sent). An attempt under way finds the row gone and records nothing
    (record_attempt: "deleted"), like `postsuper -d` on Postfix's active queue."""
    m = conn.execute(select(OutboundMessage.article_id, OutboundMessage.status,
                            OutboundMessage.claimed_by, OutboundMessage.lease_until)
                     .where(OutboundMessage.id == oid)).first()
    if m is None:
        return None
    if m.article_id is not None and m.status != "sent":
        conn.execute(update(Article).where(Article.id == m.article_id,
                                           Article.transmission_status != "sent").values(
            transmission_status="failed", transmission_error="deleted from the outbound queue"))
    conn.execute(delete(OutboundRecipient).where(OutboundRecipient.outbound_id == oid))
    conn.execute(delete(OutboundMessage).where(OutboundMessage.id == oid))
    return Removed(oid, m.status, m.claimed_by, _aware(m.lease_until))
