"""The inbound pipeline engine: runs the stage table of gateway.inbound.stages.

Prepare stages need no database (parse, decrypt, trust, filters, loop, ...) and
run on the event loop for small plain messages, on a worker thread otherwise.
Commit stages (dedupe, follow-up, route, store, record, ...) run inside the
group-commit transaction of the BatchWriter, so every message's reply waits for
the commit that holds it. The table is built by the composition root (app.py)
and handed in; nothing registers itself at import time. Anything unexpected
sends the raw message to the quarantine; a database problem is a temporary
failure. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

import structlog
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError

from gateway import errors
from gateway.commlog import Comm, CommObj, add_comm
from gateway.commlog_names import CLIENT, QUEUE_ID
from gateway.inbound.commitproc import CommitClient, RemoteCommitError, failed_temporarily
from gateway.inbound.parse import parse_message
from gateway.inbound.route import route
from gateway.inbound.ticket import is_true
from gateway.inbound.xheaders import apply_trust
from gateway.model import DELIVER, Envelope, MessageContext, Outcome, Verdict
from gateway.runtime import Runtime
from gateway.store import Deferred, repo
from gateway.store.db import is_temporary
from gateway.store.tables import Article, Ticket
from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)
T = TypeVar("T")

# A stage returns None (go on) or a Verdict; past one that is not "continue" only
# the stages marked dropped=True still run (dedupe, record).
PrepareStage = Callable[[MessageContext, Runtime], Verdict | None]
CommitStage = Callable[[MessageContext, Runtime, Connection], Verdict | None]


class Stage(NamedTuple):
    """One row of the stage table: a name, the function, and whether it also runs
    for a message a verdict already ended (ignored, duplicate)."""

    name: str
    fn: Callable[..., Verdict | None]
    dropped: bool = False


class Stages(NamedTuple):
    """The whole inbound pipeline as data: the prepare and commit stages in order,
    and the predicates that send a message to the worker pool."""

    prepare: tuple[Stage, ...]
    commit: tuple[Stage, ...]
    offload: tuple[Callable[[Envelope], bool], ...] = ()

    def with_stage(self, part: str, name: str, fn: Callable[..., Verdict | None], *,
                   before: str | None = None) -> Stages:
        """A copy with stage `name` of `part` ("prepare"/"commit") replaced by `fn`, or,
        when there is none by that name, inserted before `before` (or at the end)."""
        rows = list(self.prepare if part == "prepare" else self.commit)
        names = [r.name for r in rows]
        if name in names:
            old = rows[names.index(name)]
            rows[names.index(name)] = old._replace(fn=fn)
        else:
            rows.insert(names.index(before) if before else len(rows), Stage(name, fn))
        if part == "prepare":
            return self._replace(prepare=tuple(rows))
        return self._replace(commit=tuple(rows))

    def fn(self, part: str, name: str) -> Callable[..., Verdict | None]:
        """The function of stage `name` in `part` (KeyError when there is none)."""
        for row in self.prepare if part == "prepare" else self.commit:
            if row.name == name:
                return row.fn
        raise KeyError(f"no {part} stage {name!r}")


def parse(ctx: MessageContext, rt: Runtime) -> None:
    ctx.parsed = parse_message(ctx.envelope.raw)
    if ctx.parsed.defects:
        ctx.log.log("Notice", "MIME", "defects: " + ", ".join(sorted(set(ctx.parsed.defects))))


def trust(ctx: MessageContext, rt: Runtime) -> None:
    apply_trust(ctx, rt.prefixes)


def ignore(ctx: MessageContext, rt: Runtime) -> Verdict | None:
    if is_true(ctx.param("Ignore")):
        ctx.action = "ignore"
        ctx.log.log("Notice", "Ignore", "dropped by X-Deskgate-Ignore")
        return Verdict("ignore", "X-Deskgate-Ignore")
    return None


def dedupe(ctx: MessageContext, rt: Runtime, conn: Connection) -> Verdict | None:
    """A message already delivered to these recipients is not stored again.

    Skipped when ctx.lookup_duplicates is False (the first run of a commit job):
    the unique delivery row still refuses a duplicate at insert time, which fails
    the transaction, and the retry of that one message runs with the lookup.
    """
    if not ctx.lookup_duplicates:
        return None
    env = ctx.envelope
    mid = ctx.parsed.message_id if ctx.parsed else ""
    seen = repo.find_deliveries(conn, mid, env.sha256, env.recipients)
    if not seen:
        return None
    fresh = [r for r in env.recipients if r not in seen]
    article_id, outcome = next(iter(seen.values()))
    if fresh:
        repo.record_deliveries(conn, mid, env.sha256, fresh, article_id, outcome, ctx.deferred)
    ctx.action = "duplicate"
    ctx.article_id = article_id
    where = f"article {article_id}"
    if article_id is not None:      # an ignored or quarantined delivery stored no article
        ctx.ticket_id, ctx.ticket_number = _ticket_of(conn, article_id)
        where = f"ticket {ctx.ticket_number or '(number from the helpdesk)'}, {where}"
    ctx.log.log("Notice", "Duplicate", f"already delivered ({where}, {outcome}); "
                "not stored again")
    return Verdict("duplicate", f"{where}, {outcome}")


# Only a duplicate looks its ticket up; a new message knows it from the store stage.
_SEL_ARTICLE_TICKET = select(Ticket.id, Ticket.number, Ticket.helpdesk_ticket_number).join(
    Article, Article.ticket_id == Ticket.id).where(Article.id == bindparam("aid"))


def _ticket_of(conn: Connection, article_id: int) -> tuple[int | None, str]:
    """The id and number of the article's ticket: deskgate's number, else the helpdesk's
    (as `tickets show` finds it), "" while the helpdesk has not told it."""
    row = conn.execute(_SEL_ARTICLE_TICKET, {"aid": article_id}).first()
    if row is None:
        return None, ""
    return row.id, row.number or row.helpdesk_ticket_number or ""


def route_stage(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    if ctx.action == "new":
        route(ctx, rt)


def record(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    """Delivery rows of a stored or ignored message (a redelivery is then a duplicate)."""
    if ctx.action in ("new", "followup"):
        outcome, article_id = "stored", ctx.article_id
    elif ctx.action == "ignore":
        outcome, article_id = "ignored", None
    else:
        return
    mid = ctx.parsed.message_id if ctx.parsed else ""
    repo.record_deliveries(conn, mid, ctx.envelope.sha256, ctx.envelope.recipients,
                           article_id, outcome, ctx.deferred)


# Small plain messages are prepared right on the event loop: a thread hop costs
# more than parsing 5 KB. Larger ones, and any a stage asks for (gpg, S/MIME),
# go to the worker pool so one heavy message cannot stall every session.
INLINE_PREPARE_MAX = 256 * 1024
# On the loop a stage that may run long (a filter regex with a time budget) gets
# this many seconds in all; past it the stage raises Offload and the message is
# prepared again from the start on the worker pool, with the full budget. Normal
# mail stays on the loop; hostile mail holds it for a few milliseconds at most.
INLINE_BUDGET = 0.002
_inline: ContextVar[float | None] = ContextVar("deskgate_inline_budget", default=None)


class Offload(Exception):
    """Raised by a stage on the event loop that needs more time than the loop can give."""


def inline_budget() -> float | None:
    """Seconds a stage may spend on the event loop, or None on a worker thread."""
    return _inline.get()


def needs_worker(env: Envelope, offload: Sequence[Callable[[Envelope], bool]]) -> bool:
    """Big messages, and those a stage's offload predicate claims (gpg, S/MIME), go
    to the worker pool."""
    return len(env.raw) > INLINE_PREPARE_MAX or any(p(env) for p in offload)


def prepare(ctx: MessageContext, rt: Runtime, stages: Sequence[Stage]) -> None:
    """Run the prepare stages in order; after a verdict only dropped=True stages run."""
    for st in stages:
        if ctx.verdict is not None and not st.dropped:
            continue
        v = st.fn(ctx, rt)
        if v is not None and v.kind != "continue":
            ctx.verdict = v


def commit(ctx: MessageContext, rt: Runtime, conn: Connection,
           stages: Sequence[Stage]) -> None:
    """Run the commit stages in order inside the transaction; a message with a
    verdict (ignored at prepare, duplicate on the way) only goes on through the
    `dropped=True` stages (dedupe, record)."""
    for st in stages:
        if ctx.verdict is not None and not st.dropped:
            continue
        v = st.fn(ctx, rt, conn)
        if v is not None and v.kind != "continue":
            ctx.verdict = v


_REPLIES: dict[str, errors.SmtpReply] = {
    "deliver": errors.DELIVERED, "duplicate": errors.DUPLICATE, "ignore": errors.IGNORED,
    "quarantine": errors.QUARANTINED, "tempfail": errors.TEMPFAIL}


def smtp_reply(verdict: Verdict) -> errors.SmtpReply:
    """The one place a verdict becomes the reply each recipient gets."""
    if verdict.kind == "continue":
        raise ValueError("a message that ran through every stage is delivered, not continued")
    return _REPLIES[verdict.kind]


def stored_as(reply: errors.SmtpReply, number: str, article_id: int) -> errors.SmtpReply:
    """A 250 that names the ticket and article (as Dovecot's LMTP names its session):
    the MTA logs it in its status=sent line, which finds the ticket from the MTA's
    log. With a helpdesk behind deskgate the number is the helpdesk's, told later."""
    where = f"ticket {number}, article {article_id}" if number else f"article {article_id}"
    return errors.SmtpReply(reply.code, reply.enhanced, f"{reply.text}: {where}")


def _shallow(obj: T, **changes: Any) -> T:
    """A shallow copy of a plain dataclass with some fields replaced.

    dataclasses.replace re-runs __init__ and field validation; this runs three
    times per message on the writer thread, so it copies the instance dict.
    """
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


def _fresh(ctx: MessageContext, later: Deferred | None = None) -> MessageContext:
    """A copy whose mutable parts a (re)run of the commit stages may change freely,
    bound to the buffer of the transaction that run is in."""
    logobj = _shallow(ctx.log, entries=list(ctx.log.entries))
    return _shallow(ctx, params=dict(ctx.params), trace=list(ctx.trace), log=logobj,
                    hits=list(ctx.hits), deferred=later)


def _comm_copy(comm: Comm, obj: CommObj) -> Comm:
    return _shallow(comm, objects=[obj])


class Pipeline:
    """Runs messages through the stages; one instance per process."""

    def __init__(self, runtime: Callable[[], Runtime], writer: BatchWriter,
                 stages: Stages, executor: Executor | None = None) -> None:
        self.runtime = runtime
        self.writer = writer
        self.stages = stages
        self.executor = executor
        # The commit process's connection (gateway.inbound.commitproc), in an LMTP
        # process of `deskgate serve`; None: commit in this process's writer.
        self.remote: CommitClient | None = None

    def commit_job(self, ctx: MessageContext, rt: Runtime, comm: Comm
                    ) -> Callable[[Connection, Deferred], MessageContext]:
        runs = [0]
        stages = self.stages.commit

        def job(conn: Connection, later: Deferred) -> MessageContext:
            c = _fresh(ctx, later)
            runs[0] += 1
            # The first run trusts the unique delivery row; a retry looks first.
            c.lookup_duplicates = runs[0] > 1
            commit(c, rt, conn, stages)
            # A fallback taken on the way (unknown queue, state, ... in an X-header) is
            # logged as an Error entry: the message is stored, but with a Warning.
            warned = c.action == "quarantine" or any(
                e.priority in ("Error", "Warn") for e in c.log.entries)
            c.log.close("Warning" if warned else "Successful")
            cc = _comm_copy(comm, c.log)
            if comm.id is None:
                cc.close()   # a communication opened by the door is closed by the door
            add_comm(conn, cc, later)
            return c
        return job

    def _quarantine_job(self, ctx: MessageContext, comm: Comm, reason: str, detail: str
                        ) -> Callable[[Connection, Deferred], MessageContext]:
        def job(conn: Connection, later: Deferred) -> MessageContext:
            c = _fresh(ctx, later)
            env = c.envelope
            seen = dedupe(c, self.runtime(), conn)
            if seen is not None:
                c.verdict = seen
                c.log.close("Successful")
                cc = _comm_copy(comm, c.log)
                if comm.id is None:
                    cc.close()
                add_comm(conn, cc, later)
                return c
            qid = repo.insert_quarantine(conn, source=f"{env.source}:{env.account}",
                                         envelope_from=env.mail_from, recipients=env.recipients,
                                         reason=reason, detail=detail, raw=env.raw)
            mid = c.parsed.message_id if c.parsed else ""
            repo.record_deliveries(conn, mid, env.sha256, env.recipients, None, "quarantined",
                                   later)
            c.action = "quarantine"
            c.verdict = Verdict("quarantine", reason)
            c.log.log("Error", "Quarantine", f"message kept raw in quarantine #{qid}: {reason}")
            c.log.close("Failed")
            cc = _comm_copy(comm, c.log)
            if comm.id is None:
                cc.close("Warning")
            add_comm(conn, cc, later)
            return c
        return job

    async def deliver(self, env: Envelope, *, comm: Comm | None = None) -> Outcome:
        """Process one message for all its recipients; the replies follow the commit."""
        rt = self.runtime()
        comm = comm or Comm("Incoming", env.source, env.account)
        ctx = self._context(env)
        try:
            stages = self.stages.prepare
            if needs_worker(env, self.stages.offload):
                await asyncio.get_running_loop().run_in_executor(self.executor, _prepare_off_loop,
                                                                 ctx, rt, stages)
            elif not _prepare_inline(ctx, rt, stages):
                # a stage needed more than the loop's budget: start over on a worker
                log.debug("preparing on the worker pool", source=env.source)
                ctx = self._context(env)
                await asyncio.get_running_loop().run_in_executor(self.executor, _prepare_off_loop,
                                                                 ctx, rt, stages)
            job = self.commit_job(ctx, rt, comm)
            prepared = True
        except Exception as exc:
            log.exception("pipeline prepare failed; quarantining", source=env.source)
            job = self._quarantine_job(ctx, comm, f"{type(exc).__name__}: {exc}",
                                       traceback.format_exc())
            prepared = False
        try:
            done = await self._commit(job, ctx, comm, prepared)
        except Exception as exc:
            if is_temporary(exc) or failed_temporarily(exc):
                log.warning("database unavailable; temporary failure", error=str(exc))
                return self._tempfail(env, f"database: {type(exc).__name__}")
            if isinstance(exc, IntegrityError) or (
                    isinstance(exc, RemoteCommitError) and exc.kind == "integrity"):
                # Most often the same message committed by another node a moment
                # ago: the quarantine job looks for that delivery first.
                log.info("commit conflicted; checking for a concurrent delivery",
                         error=str(getattr(exc, "orig", exc))[:200])
            else:
                log.exception("pipeline commit failed; quarantining")
            try:
                done = await self.writer.run_deferring(self._quarantine_job(
                    ctx, comm, f"{type(exc).__name__}: {exc}", traceback.format_exc()),
                    isolated=True)
            except Exception as exc2:
                log.error("quarantine failed; temporary failure", error=str(exc2))
                return self._tempfail(env, f"quarantine failed: {type(exc2).__name__}")
        reply = smtp_reply(done.verdict or DELIVER)
        if done.article_id is not None and reply.ok:
            reply = stored_as(reply, done.ticket_number, done.article_id)
        log.info("delivered", action=done.action, ticket=done.ticket_number,
                 article=done.article_id, queue=done.queue,
                 message_id=done.parsed.message_id if done.parsed else "")
        if done.handoff_id is not None:
            from gateway.helpdesk.worker import notify_queued

            notify_queued()
        return Outcome(replies=(reply,) * len(env.recipients), action=done.action,
                       ticket_number=done.ticket_number, article_id=done.article_id,
                       detail="; ".join(done.trace), handoff_id=done.handoff_id)

    async def _commit(self, job: Callable[[Connection, Deferred], MessageContext],
                      ctx: MessageContext, comm: Comm, prepared: bool) -> MessageContext:
        """Run the commit job: in the commit process when there is one and the
        message was prepared (one that failed to prepare is quarantined here, with
        its traceback), else in this process's writer."""
        remote = self.remote
        if prepared and remote is not None and remote.up:
            fields = await remote.commit(ctx, comm)
            return _shallow(ctx, **fields)
        return await self.writer.run_deferring(job)

    def _context(self, env: Envelope) -> MessageContext:
        ctx = MessageContext(envelope=env, log=CommObj("Message"))
        ctx.log.log("Info", "Envelope", f"from <{env.mail_from}> to "
                    + ", ".join(f"<{r}>" for r in env.recipients) + f", {len(env.raw)} bytes")
        if env.mta_client:              # XFORWARD: informational, nothing reads it back
            ctx.log.log("Info", CLIENT, env.mta_client)
        if env.mta_queue_id:
            ctx.log.log("Info", QUEUE_ID, env.mta_queue_id)
        return ctx

    def _tempfail(self, env: Envelope, detail: str) -> Outcome:
        reply = smtp_reply(Verdict("tempfail", detail))
        return Outcome(replies=(reply,) * len(env.recipients), action="new", detail=detail)

    def deliver_sync(self, env: Envelope, **kw: Any) -> Outcome:
        return asyncio.run(self.deliver(env, **kw))


def _prepare_off_loop(ctx: MessageContext, rt: Runtime, stages: Sequence[Stage]) -> None:
    """Prepare on a worker thread. The content hash (raw message row, delivery rows,
    dedupe) is taken here too, so the one writer thread never hashes a big message
    while every message of its batch waits for the commit; a small one (prepared on
    the loop) is hashed when it is sent to the commit process (gateway.inbound.
    commitproc.portable), or by the writer when this process commits itself, which
    costs it less than a second GIL hand-off."""
    _ = ctx.envelope.sha256          # computed once, kept on the envelope
    prepare(ctx, rt, stages)


def _prepare_inline(ctx: MessageContext, rt: Runtime, stages: Sequence[Stage]) -> bool:
    """Prepare on the event loop within INLINE_BUDGET; False when a stage gave up (Offload)."""
    token = _inline.set(INLINE_BUDGET)
    try:
        prepare(ctx, rt, stages)
    except Offload:
        return False
    finally:
        _inline.reset(token)
    return True
