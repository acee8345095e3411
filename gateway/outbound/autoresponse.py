"""Auto-responses per queue: a commit stage of the inbound pipeline, built by the sender.

The inbound transaction only writes a request row (the unsigned reply), so it
exists exactly when the ticket does; the outbound sender builds, signs and
queues it and deletes the request in one transaction (sent once, also across a
restart), keeping slow crypto off the group-commit writer; a build has
BUILD_TIMEOUT seconds, and one that takes longer counts as a failed build. It
carries Auto-Submitted: auto-replied, X-Loop and Precedence: bulk and the null
envelope sender (RFC 3834). It is
never sent to looping mail or bounces, to mail with the null envelope sender,
to addresses matching postmaster.no_auto_response, for mail from or to our own
system addresses, or more than
max_emails_per_address_per_day times a day to one address (counted in the
database, so shared by all nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import re
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.mime.text import MIMEText
from email.policy import compat32
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway import metrics
from gateway.config.template import TemplateError, render
from gateway.errors import PermanentError, TemporaryError
from gateway.inbound.parse import first_address
from gateway.model import MessageContext
from gateway.outbound.autoresponse_rules import suppression
from gateway.outbound.context import OutboundContext
from gateway.outbound.headers import encode_long_words, header_safe, ids_that_fit, raw_utf8
from gateway.outbound.received import Received
from gateway.runtime import Runtime
from gateway.store import Deferred, repo
from gateway.store.db import is_temporary
from gateway.store.tables import AutoResponse, AutoResponseRequest
from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)

_CLOSED = ("closed", "merged", "removed")
_MSG_IDS = re.compile(r"<[^<>]*>")


# "Re: ", "RE:", "Re[2]: ", "RE [3]:" in front of a Subject, any number of them (OTOBO's
# TicketSubjectClean): one "Re: " goes in front instead.
_RE_PREFIX = re.compile(r"^(?:re\s*(?:\[\d+\]\s*)?:\s*)+", re.IGNORECASE)


def reply_subject(subject: str, hook: str = "", number: str = "") -> str:
    """`subject` with one "Re: " in front, however many it had. The ticket's tag
    ("[Ticket#N]", with `hook` and `number`), wherever it stood, goes in front of
    that "Re: " (OTOBO's TicketSubjectClean, then TicketSubjectBuild): the answer to
    our "[Ticket#N] Re: printer" gets "[Ticket#N] Re: printer" again."""
    text, tag = subject.strip(), ""
    if hook and number:
        text, found = re.subn(r"\[\s*" + re.escape(hook) + r":?\s*" + re.escape(number)
                              + r"\s*\]\s*", " ", text, flags=re.IGNORECASE)
        tag = f"[{hook}{number}] " if found else ""
    return f"{tag}Re: " + _RE_PREFIX.sub("", text.strip())


def which_template(ctx: MessageContext, rt: Runtime, conn: Connection) -> tuple[str, str]:
    """(kind, template text) for this message, or ("", "") when its queue has none."""
    q = rt.config.queue_by_name(ctx.queue) if ctx.queue else None
    if ctx.action == "new":      # the inbound hot path: no lookup needed
        return ("new", q.auto_response_new) if q is not None else ("", "")
    ticket = repo.ticket_by_id(conn, ctx.ticket_id) if ctx.ticket_id else None
    if ticket is not None:
        q = rt.config.queue_by_name(ticket.queue) or q
    if q is None:
        return "", ""
    if ctx.action == "followup":
        if ticket is not None and ticket.state_type in _CLOSED and q.follow_up == "reject":
            return "reject", q.auto_response_reject
        return "followup", q.auto_response_followup
    return "", ""


def as_written(header: str, address: str) -> str:
    """`address` (lower-cased, of the header value `header`) as the header spells it;
    `address` itself when the header's parse does not find it."""
    for _, a in email.utils.getaddresses([header]):
        if a.lower() == address:
            return a
    return address


def auto_response_stage(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    """Request the auto-response for a stored message, when its queue has one.

    Only a row is written here, in the inbound transaction: the outbound sender
    builds, signs and queues it (build_requests), off the group-commit writer.
    """
    if ctx.action not in ("new", "followup") or ctx.parsed is None or ctx.ticket_id is None:
        return
    kind, template = which_template(ctx, rt, conn)
    if not template:
        return
    from gateway.outbound.sender import notify_queued  # not for a queue without one

    p = ctx.parsed
    to = first_address(p.reply_to) or p.from_email
    why = suppression(ctx, rt, conn, to)
    if why:
        ctx.log.log("Notice", "AutoResponse", f"no auto-response ({kind}): {why}")
        return
    # `to` (lower-cased) is what suppression and the daily count compare; the reply
    # goes to the address as the sender wrote it (RFC 5321 2.4: only the destination
    # host may fold a local part).
    rcpt = as_written(p.reply_to if first_address(p.reply_to) else p.from_addr, to)
    ticket = repo.ticket_by_id(conn, ctx.ticket_id)
    number = (ticket.number if ticket is not None else ctx.ticket_number) or ""
    name = email.utils.parseaddr(p.from_addr)[0] or rcpt
    try:
        body = render(template, {"ticket_number": number,
                                 "title": ticket.title if ticket else "", "customer": name})
    except TemplateError as exc:
        # the customer's message is stored all the same
        ctx.log.log("Error", "AutoResponse", f"no auto-response ({kind}): the queue's "
                    f"auto_response_{kind} cannot be filled in: {exc}")
        return
    reply = MIMEText(body, "plain", "utf-8")
    # Address and Message-IDs raw (RFC 6532) when not ASCII: an encoded word is
    # neither (RFC 2047 5); the generator would encode a non-ASCII str.
    reply["To"] = raw_utf8(header_safe(rcpt))
    subject = header_safe(p.subject or (ticket.title if ticket else "")).strip()
    subject = reply_subject(subject, rt.config.gateway.ticket_hook, number)
    # Within 998 octets a line (RFC 5322 2.1.1) however long the customer's words are.
    reply["Subject"] = encode_long_words(subject)
    # A Message-ID too long for any line is left out (it must not be encoded).
    in_reply_to = ids_that_fit(header_safe(p.message_id))
    if in_reply_to:
        reply["In-Reply-To"] = raw_utf8(in_reply_to)
        # RFC 5322 3.6.4: the parent's References, else its In-Reply-To when that is
        # one id, then its Message-ID
        replied_to = _MSG_IDS.findall(p.in_reply_to)
        parents = p.references.strip() or (replied_to[0] if len(replied_to) == 1 else "")
        reply["References"] = raw_utf8(
            ids_that_fit(header_safe(f"{parents} {p.message_id}".strip())))
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Loop"] = "yes"
    reply["Precedence"] = "bulk"
    now = rt.clock.now()
    # Counted at once, so the daily limit holds for messages in the same batch.
    counter = conn.execute(insert(AutoResponse).values(
        address=to, ticket_id=ctx.ticket_id, outbound_id=None, sent=now)
    ).inserted_primary_key
    assert counter is not None
    rid = conn.execute(insert(AutoResponseRequest).values(
        created=now, ticket_id=ctx.ticket_id, ticket_number=number,
        queue=ticket.queue if ticket else ctx.queue, kind=kind, address=rcpt,
        counter_id=counter[0], data=reply.as_bytes())).inserted_primary_key
    assert rid is not None
    ctx.log.log("Info", "AutoResponse", f"auto-response ({kind}) to <{rcpt}> requested as "
                f"#{rid[0]}")
    notify_queued()


# ---------------------------------------------------------------- building (sender side)


def pending_requests(conn: Connection, limit: int = 50,
                     now: datetime | None = None) -> list[Any]:
    """The oldest auto-response requests not built yet that are due (one whose build
    crashed waits for its next attempt)."""
    now = now or datetime.now(UTC)
    return list(conn.execute(select(AutoResponseRequest.__table__).where(or_(
        AutoResponseRequest.next_attempt.is_(None), AutoResponseRequest.next_attempt <= now))
        .order_by(AutoResponseRequest.id).limit(limit)).all())


def build(req: Any, rt: Runtime, conn: Connection) -> OutboundContext:
    """The outbound context of a request after rewrite, S/MIME/PGP and DKIM (no writes:
    `conn` is only read from). Raises PermanentError when it cannot be sent, and a
    TemporaryError when it cannot be built now (gpg timed out): built again later."""
    from gateway.outbound.pipeline import run_stages
    from gateway.outbound.rewrite import resolve

    msg = message_from_bytes(bytes(req.data), policy=compat32)
    out = OutboundContext(mail_from="", recipients=[req.address], raw=b"", msg=msg,
                          source="AutoResponse", account=rt.config.gateway.hostname,
                          kind="auto-response", queue=req.queue, ticket_id=req.ticket_id,
                          ticket_number=req.ticket_number, sender_type="system",
                          received=Received.local(rt.config.gateway.hostname))
    out.queue_config = rt.config.queue_by_name(out.queue)
    resolve(out, rt, conn)
    # The reads are done: no transaction stays open (idle on PostgreSQL, holding back
    # SQLite's checkpoint) while the crypto runs, which may hang.
    conn.rollback()
    run_stages(out, rt)
    return out


class GivenUp(Exception):
    """A request whose builds crashed until relay.retry ran out."""


# Seconds a build (rewrite, S/MIME/PGP, DKIM) may take. One that takes longer (several
# gpg calls that each run into their 30 s, after which gpg is killed with every child
# it started) counts as a failed build, tried again on relay.retry and given up when
# it runs out, as one that crashed; its thread is left to end on its own. The
# requests after it are built meanwhile, and the sender builds beside its deliveries.
BUILD_TIMEOUT = 120.0

_T = TypeVar("_T")


def _in_thread(fn: Callable[[], _T]) -> asyncio.Future[_T]:
    """fn() on a thread of its own, its outcome as a future of the running loop. A
    daemon thread: one that never returns holds up neither the loop's default executor
    nor the end of the process."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[_T] = loop.create_future()

    def done(value: _T) -> None:
        if not fut.done():
            fut.set_result(value)

    def failed(exc: BaseException) -> None:
        if not fut.done():
            fut.set_exception(exc)

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:   # SystemExit too: the build's, for the awaiting task
            with contextlib.suppress(RuntimeError):      # the loop is closed by now
                loop.call_soon_threadsafe(failed, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done, value)

    threading.Thread(target=run, name="autoresponse-build", daemon=True).start()
    return fut


class BuildTimedOut(Exception):
    """A build that was still running after BUILD_TIMEOUT seconds."""


# The last_error of a request while it is built: what stays when the build ends the
# process (SIGKILL, the OOM killer) or hangs it, and no outcome is ever written.
UNFINISHED = "building it did not finish (the process ended or hung)"


def begin_build(conn: Connection, rt: Runtime, req: Any, later: Deferred | None = None,
                now: datetime | None = None) -> str:
    """Count a build before it starts, so that one that never returns its outcome has
    counted too: attempts + 1, the next attempt where relay.retry puts the next build
    (relay.lease after the last one) and last_error UNFINISHED until the outcome is
    written. A request whose previous build did not finish is given up instead when
    the schedule has run out. 'build', 'given-up', or 'skip' (another builder has it)."""
    from gateway.outbound.queue import retry_delay

    now = now or datetime.now(UTC)
    schedule = rt.config.relay.retry
    if req.last_error == UNFINISHED and retry_delay(schedule, req.attempts) is None:
        finish(conn, rt, req, GivenUp(
            f"building it did not finish (the process ended or hung) after {req.attempts} "
            "builds; given up (relay.retry ran out)"), later)
        return "given-up"
    attempts = req.attempts + 1
    delay = retry_delay(schedule, attempts)
    wait = delay if delay is not None else rt.config.relay.lease
    counted = conn.execute(update(AutoResponseRequest).where(
        AutoResponseRequest.id == req.id, AutoResponseRequest.attempts == req.attempts)
        .values(attempts=attempts, next_attempt=now + timedelta(seconds=wait),
                last_error=UNFINISHED)).rowcount
    return "build" if counted == 1 else "skip"


def uncount_build(conn: Connection, req: Any) -> None:
    """Take back begin_build's count: the build failed because of the database."""
    conn.execute(update(AutoResponseRequest).where(
        AutoResponseRequest.id == req.id, AutoResponseRequest.attempts == req.attempts + 1,
        AutoResponseRequest.last_error == UNFINISHED)
        .values(attempts=req.attempts, next_attempt=req.next_attempt,
                last_error=req.last_error))


# Counts begin_build made for builds the database failed, not taken back yet because
# the database did not answer then either (per writer, so per gateway): taken back
# before the next pass builds anything.
_uncounted: weakref.WeakKeyDictionary[BatchWriter, dict[int, Any]] = \
    weakref.WeakKeyDictionary()


def finish(conn: Connection, rt: Runtime, req: Any, built: OutboundContext | Exception,
           later: Deferred | None = None) -> int | None:
    """In one transaction: take the request (once: a concurrent builder finds it gone)
    and queue what was built, or log why it is not sent. The new outbound id, or None."""
    return settle(conn, rt, req, built, later)[1]


def settle(conn: Connection, rt: Runtime, req: Any, built: OutboundContext | Exception,
           later: Deferred | None = None) -> tuple[bool, int | None]:
    """finish(), and whether this call took the request (False: another builder did)."""
    from gateway.commlog import Comm, add_comm
    from gateway.outbound.queue import enqueue

    taken = conn.execute(delete(AutoResponseRequest).where(AutoResponseRequest.id == req.id))
    if taken.rowcount != 1:
        return False, None
    if isinstance(built, Exception):
        # e.g. the queue requires encryption and the customer has no key: the auto-
        # response is not sent (nor counted); the customer's message is stored already.
        conn.execute(delete(AutoResponse).where(AutoResponse.id == req.counter_id))
        comm = Comm("Outgoing", "AutoResponse", rt.config.gateway.hostname)
        obj = comm.obj("Message")
        obj.log("Error" if isinstance(built, GivenUp) else "Warn", "AutoResponse",
                f"no auto-response ({req.kind}) to <{req.address}> for ticket "
                f"{req.ticket_number or req.ticket_id}: {built}"[:3000])
        obj.close("Failed")
        comm.close("Failed" if isinstance(built, GivenUp) else "Warning")
        add_comm(conn, comm, later)
        return True, None
    oid = enqueue(built, rt, conn)
    conn.execute(update(AutoResponse).where(AutoResponse.id == req.counter_id)
                 .values(outbound_id=oid))
    return True, oid


def _finish_job(rt: Runtime, req: Any, built: OutboundContext | Exception
                ) -> Callable[[Connection, Deferred], tuple[bool, int | None]]:
    """settle() as a writer job that gets the transaction's buffer for its log entry."""
    def job(conn: Connection, later: Deferred) -> tuple[bool, int | None]:
        return settle(conn, rt, req, built, later)
    return job


def build_failed(conn: Connection, rt: Runtime, req: Any, error: str,
                 later: Deferred | None = None, now: datetime | None = None, *,
                 warn: bool = False) -> bool:
    """Record a crashed build (`req` as read before begin_build counted it): the request
    waits for relay.retry's next delay (with `warn`, a Warn in the communication log
    says so and why), or, when the schedule has run out, is given up (finish() with
    GivenUp). True if given up."""
    from gateway.outbound.queue import retry_delay

    now = now or datetime.now(UTC)
    attempts = req.attempts + 1
    delay = retry_delay(rt.config.relay.retry, attempts)
    if delay is None:
        finish(conn, rt, req, GivenUp(
            f"building it failed {attempts} times, the last time with {error}; given up "
            "(relay.retry ran out)"), later)
        return True
    conn.execute(update(AutoResponseRequest).where(
        AutoResponseRequest.id == req.id, AutoResponseRequest.attempts == attempts)
        .values(next_attempt=now + timedelta(seconds=delay), last_error=error))
    if warn:
        from gateway.commlog import Comm, add_comm

        comm = Comm("Outgoing", "AutoResponse", rt.config.gateway.hostname)
        obj = comm.obj("Message")
        obj.log("Warn", "AutoResponse", f"auto-response ({req.kind}) to <{req.address}> "
                f"for ticket {req.ticket_number or req.ticket_id} not built ({error}); "
                f"built again in {delay:g} s"[:3000])
        obj.close("Warning")
        comm.close("Warning")
        add_comm(conn, comm, later)
    return False


def _failed_job(rt: Runtime, req: Any, error: str, warn: bool = False
                ) -> Callable[[Connection, Deferred], bool]:
    def job(conn: Connection, later: Deferred) -> bool:
        return build_failed(conn, rt, req, error, later, warn=warn)
    return job


async def build_requests(runtime: Callable[[], Runtime], writer: BatchWriter,
                         engine: Engine) -> int:
    """Build and queue every pending auto-response request; how many were queued.

    The signing and encryption run on a thread of their own, outside any transaction,
    for BUILD_TIMEOUT seconds at most; only the short enqueue goes through the writer.
    A request whose build fails because of the database stays and is tried again on
    the next call; one whose build crashed otherwise, or took longer than
    BUILD_TIMEOUT, is tried again on relay.retry and given up when it runs out
    (counted as deskgate_messages_total{door="autoresponse",result="failed"}). Each
    build is counted before it starts, so one that ends the process counts as well.
    """
    owed = _uncounted.setdefault(writer, {})
    for rid, req in list(owed.items()):
        await writer.run(functools.partial(uncount_build, req=req))
        del owed[rid]
    # Through the writer: it runs after the batch that committed the requests.
    reqs = await writer.run(pending_requests)
    queued = 0
    for req in reqs:
        rt = runtime()
        built: OutboundContext | Exception

        def begin(conn: Connection, later: Deferred, req: Any = req,
                  rt: Runtime = rt) -> str:
            return begin_build(conn, rt, req, later)

        if req.last_error == UNFINISHED:
            log.warning("the last build of the auto-response did not finish",
                        request=req.id, attempts=req.attempts)
        started = await writer.run_deferring(begin)
        if started == "given-up":
            metrics.MESSAGES.labels("autoresponse", "out", "failed").inc()
        if started != "build":
            continue

        def make(req: Any = req, rt: Runtime = rt) -> OutboundContext:
            with engine.connect() as conn:
                return build(req, rt, conn)

        try:
            building = _in_thread(make)
            finished, _ = await asyncio.wait({building}, timeout=BUILD_TIMEOUT)
            if not finished:
                building.cancel()           # what it returns, should it ever, is dropped
                raise BuildTimedOut(f"building it took longer than {BUILD_TIMEOUT:g} s (a "
                                    "gpg or openssl that did not return, a gpg-agent "
                                    "waiting for a PIN?)")
            built = building.result()
        except PermanentError as exc:
            built = exc
        except Exception as exc:
            if isinstance(exc, SQLAlchemyError) and is_temporary(exc):
                log.warning("auto-response not built; trying again later", request=req.id,
                            error=repr(exc)[:300])
                owed[req.id] = req          # the database's failure does not count
                with contextlib.suppress(SQLAlchemyError):
                    await writer.run(functools.partial(uncount_build, req=req))
                    del owed[req.id]
                continue
            if isinstance(exc, BuildTimedOut):
                log.error("building the auto-response did not finish in time",
                          request=req.id, attempts=req.attempts + 1, seconds=BUILD_TIMEOUT)
                error = f"a timeout: {exc}"
            elif isinstance(exc, TemporaryError):   # gpg timed out, its agent unreachable
                log.warning("auto-response not built; trying again later", request=req.id,
                            attempts=req.attempts + 1, error=str(exc)[:300])
                error = f"a temporary failure: {exc}".replace("\x00", " ")[:1000]
            else:
                log.exception("building the auto-response crashed", request=req.id,
                              attempts=req.attempts + 1)
                error = f"{type(exc).__name__}: {exc}".replace("\x00", " ")[:1000]
            if await writer.run_deferring(_failed_job(rt, req, error,
                                                      isinstance(exc, TemporaryError))):
                metrics.MESSAGES.labels("autoresponse", "out", "failed").inc()
            continue
        taken, oid = await writer.run_deferring(_finish_job(rt, req, built))
        queued += oid is not None
        if taken:
            metrics.MESSAGES.labels("autoresponse", "out",
                                    "queued" if oid is not None else "refused").inc()
    return queued
