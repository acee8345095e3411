"""The inbound pipeline: stages named in two tuples, run by a small engine.

Prepare stages need no database (parse, decrypt, trust, filters, loop) and run
on a worker thread. Commit stages (dedupe, follow-up, route, store) run inside
the group-commit transaction of the BatchWriter, so every message's reply waits
for the commit that holds it. Anything unexpected sends the raw message to the
quarantine; a database problem is a temporary failure. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from gateway import errors
from gateway.commlog import Comm, CommObj, add_comm
from gateway.inbound.parse import parse_message
from gateway.inbound.route import route
from gateway.inbound.ticket import is_true, store
from gateway.inbound.xheaders import apply_trust
from gateway.model import Envelope, MessageContext, Outcome
from gateway.runtime import Runtime
from gateway.store import repo
from gateway.store.db import BatchWriter, is_temporary

log = structlog.get_logger(__name__)
T = TypeVar("T")

PrepareStage = Callable[[MessageContext, Runtime], None]
CommitStage = Callable[[MessageContext, Runtime, Connection], None]


class Skip(Exception):
    """Raised by a stage to end the pipeline early (ignore, duplicate)."""


def _parse(ctx: MessageContext, rt: Runtime) -> None:
    ctx.parsed = parse_message(ctx.envelope.raw)
    if ctx.parsed.defects:
        ctx.log.log("Notice", "MIME", "defects: " + ", ".join(sorted(set(ctx.parsed.defects))))


def _trust(ctx: MessageContext, rt: Runtime) -> None:
    apply_trust(ctx, rt.prefixes)


def _ignore(ctx: MessageContext, rt: Runtime) -> None:
    if is_true(ctx.param("Ignore")):
        ctx.action = "ignore"
        ctx.log.log("Notice", "Ignore", "dropped by X-Deskgate-Ignore")
        raise Skip


def _dedupe(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    env = ctx.envelope
    mid = ctx.parsed.message_id if ctx.parsed else ""
    seen = repo.find_deliveries(conn, mid, env.sha256, env.recipients)
    if not seen:
        return
    fresh = [r for r in env.recipients if r not in seen]
    article_id, outcome = next(iter(seen.values()))
    if fresh:
        repo.record_deliveries(conn, mid, env.sha256, fresh, article_id, outcome)
    ctx.action = "duplicate"
    ctx.article_id = article_id
    ctx.log.log("Notice", "Duplicate", f"already delivered (article {article_id}, {outcome}); "
                "not stored again")
    raise Skip


def _route(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    if ctx.action == "new":
        route(ctx, rt)


# Small plain messages are prepared right on the event loop: a thread hop costs
# more than parsing 5 KB. Larger ones, and any a stage asks for (gpg, S/MIME),
# go to the worker pool so one heavy message cannot stall every session.
INLINE_PREPARE_MAX = 256 * 1024
OFFLOAD: list[Callable[[Envelope], bool]] = []


def register_offload(predicate: Callable[[Envelope], bool]) -> None:
    """A stage that may block (subprocess, big crypto) asks for the worker pool here."""
    OFFLOAD.append(predicate)


def needs_worker(env: Envelope) -> bool:
    return len(env.raw) > INLINE_PREPARE_MAX or any(p(env) for p in OFFLOAD)


PREPARE: dict[str, PrepareStage] = {"parse": _parse, "trust": _trust, "ignore": _ignore}
COMMIT: dict[str, CommitStage] = {"route": _route, "store": store}

# The order is data. Other modules register their stage and add its name here.
PREPARE_ORDER: list[str] = ["parse", "trust", "ignore"]
COMMIT_ORDER: list[str] = ["route", "store"]


def register_prepare(name: str, fn: PrepareStage, *, before: str | None = None) -> None:
    PREPARE[name] = fn
    if name not in PREPARE_ORDER:
        PREPARE_ORDER.insert(PREPARE_ORDER.index(before) if before else len(PREPARE_ORDER), name)


def register_commit(name: str, fn: CommitStage, *, before: str | None = None) -> None:
    COMMIT[name] = fn
    if name not in COMMIT_ORDER:
        COMMIT_ORDER.insert(COMMIT_ORDER.index(before) if before else len(COMMIT_ORDER), name)


def prepare(ctx: MessageContext, rt: Runtime) -> None:
    for name in PREPARE_ORDER:
        PREPARE[name](ctx, rt)


def commit(ctx: MessageContext, rt: Runtime, conn: Connection, *,
           check_duplicate: bool = True) -> None:
    """Dedupe, then the commit stages unless the message is ignored.

    With check_duplicate=False the lookup is skipped: the unique delivery row
    still refuses a duplicate at insert time, which fails the transaction, and
    the retry of that one message runs with the lookup.
    """
    if check_duplicate:
        _dedupe(ctx, rt, conn)
    if ctx.action == "ignore":
        return
    for name in COMMIT_ORDER:
        COMMIT[name](ctx, rt, conn)


def _reply_for(ctx: MessageContext) -> errors.SmtpReply:
    return {"duplicate": errors.DUPLICATE, "ignore": errors.IGNORED,
            "quarantine": errors.QUARANTINED}.get(ctx.action, errors.DELIVERED)


def _shallow(obj: T, **changes: Any) -> T:
    """A shallow copy of a plain dataclass with some fields replaced.

    dataclasses.replace re-runs __init__ and field validation; this runs three
    times per message on the writer thread, so it copies the instance dict.
    """
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


def _fresh(ctx: MessageContext) -> MessageContext:
    """A copy whose mutable parts a (re)run of the commit stages may change freely."""
    logobj = _shallow(ctx.log, entries=list(ctx.log.entries))
    return _shallow(ctx, params=dict(ctx.params), trace=list(ctx.trace), log=logobj)


def _comm_copy(comm: Comm, obj: CommObj) -> Comm:
    return _shallow(comm, objects=[obj])


class Pipeline:
    """Runs messages through the stages; one instance per process."""

    def __init__(self, runtime: Callable[[], Runtime], writer: BatchWriter,
                 executor: Executor | None = None) -> None:
        self.runtime = runtime
        self.writer = writer
        self.executor = executor

    def _commit_job(self, ctx: MessageContext, rt: Runtime, comm: Comm
                    ) -> Callable[[Connection], MessageContext]:
        runs = [0]

        def job(conn: Connection) -> MessageContext:
            c = _fresh(ctx)
            runs[0] += 1
            with contextlib.suppress(Skip):
                commit(c, rt, conn, check_duplicate=runs[0] > 1)
            if c.action in ("new", "followup"):
                mid = c.parsed.message_id if c.parsed else ""
                repo.record_deliveries(conn, mid, c.envelope.sha256, c.envelope.recipients,
                                       c.article_id, "stored")
            elif c.action == "ignore":
                mid = c.parsed.message_id if c.parsed else ""
                repo.record_deliveries(conn, mid, c.envelope.sha256, c.envelope.recipients,
                                       None, "ignored")
            # A fallback taken on the way (unknown queue, state, ... in an X-header) is
            # logged as an Error entry: the message is stored, but with a Warning.
            warned = c.action == "quarantine" or any(
                e.priority in ("Error", "Warn") for e in c.log.entries)
            c.log.close("Warning" if warned else "Successful")
            cc = _comm_copy(comm, c.log)
            if comm.id is None:
                cc.close()   # a communication opened by the door is closed by the door
            add_comm(conn, cc)
            return c
        return job

    def _quarantine_job(self, ctx: MessageContext, comm: Comm, reason: str, detail: str
                        ) -> Callable[[Connection], MessageContext]:
        def job(conn: Connection) -> MessageContext:
            c = _fresh(ctx)
            env = c.envelope
            try:
                _dedupe(c, self.runtime(), conn)
            except Skip:
                c.log.close("Successful")
                cc = _comm_copy(comm, c.log)
                if comm.id is None:
                    cc.close()
                add_comm(conn, cc)
                return c
            qid = repo.insert_quarantine(conn, source=f"{env.source}:{env.account}",
                                         envelope_from=env.mail_from, recipients=env.recipients,
                                         reason=reason, detail=detail, raw=env.raw)
            mid = c.parsed.message_id if c.parsed else ""
            repo.record_deliveries(conn, mid, env.sha256, env.recipients, None, "quarantined")
            c.action = "quarantine"
            c.log.log("Error", "Quarantine", f"message kept raw in quarantine #{qid}: {reason}")
            c.log.close("Failed")
            cc = _comm_copy(comm, c.log)
            if comm.id is None:
                cc.close("Warning")
            add_comm(conn, cc)
            return c
        return job

    async def deliver(self, env: Envelope, *, comm: Comm | None = None) -> Outcome:
        """Process one message for all its recipients; the replies follow the commit."""
        rt = self.runtime()
        comm = comm or Comm("Incoming", env.source, env.account)
        ctx = MessageContext(envelope=env, log=CommObj("Message"))
        ctx.log.log("Info", "Envelope", f"from <{env.mail_from}> to "
                    + ", ".join(f"<{r}>" for r in env.recipients) + f", {len(env.raw)} bytes")
        try:
            if needs_worker(env):
                await asyncio.get_running_loop().run_in_executor(self.executor, _prepare_safe,
                                                                 ctx, rt)
            else:
                _prepare_safe(ctx, rt)
            job = self._commit_job(ctx, rt, comm)
        except Exception as exc:
            log.exception("pipeline prepare failed; quarantining", source=env.source)
            job = self._quarantine_job(ctx, comm, f"{type(exc).__name__}: {exc}",
                                       traceback.format_exc())
        try:
            done = await self.writer.run(job)
        except Exception as exc:
            if is_temporary(exc):
                log.warning("database unavailable; temporary failure", error=str(exc))
                return self._tempfail(env, f"database: {type(exc).__name__}")
            if isinstance(exc, IntegrityError):
                # Most often the same message committed by another node a moment
                # ago: the quarantine job looks for that delivery first.
                log.info("commit conflicted; checking for a concurrent delivery",
                         error=str(exc.orig)[:200])
            else:
                log.exception("pipeline commit failed; quarantining")
            try:
                done = await self.writer.run(self._quarantine_job(
                    ctx, comm, f"{type(exc).__name__}: {exc}", traceback.format_exc()),
                    isolated=True)
            except Exception as exc2:
                log.error("quarantine failed; temporary failure", error=str(exc2))
                return self._tempfail(env, f"quarantine failed: {type(exc2).__name__}")
        reply = _reply_for(done)
        log.info("delivered", action=done.action, ticket=done.ticket_number,
                 article=done.article_id, queue=done.queue,
                 message_id=done.parsed.message_id if done.parsed else "")
        if done.handoff_id is not None:
            from gateway.helpdesk.worker import notify_queued

            notify_queued()
        return Outcome(replies=(reply,) * len(env.recipients), action=done.action,
                       ticket_number=done.ticket_number, article_id=done.article_id,
                       detail="; ".join(done.trace), handoff_id=done.handoff_id)

    def _tempfail(self, env: Envelope, detail: str) -> Outcome:
        return Outcome(replies=(errors.TEMPFAIL,) * len(env.recipients), action="new",
                       detail=detail)

    def deliver_sync(self, env: Envelope, **kw: Any) -> Outcome:
        return asyncio.run(self.deliver(env, **kw))


def _prepare_safe(ctx: MessageContext, rt: Runtime) -> None:
    with contextlib.suppress(Skip):
        prepare(ctx, rt)
