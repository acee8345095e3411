"""The outbound pipeline: resolve → rewrite → crypto → dkim → enqueue.

The message-changing stages are a table (gateway.outbound.stages: rewrite,
crypto, dkim), run in order by `run_stages`; DKIM is always the last change to
the message. The per-message state is gateway.outbound.context.OutboundContext.

Two phases touch the database: `resolve` (which queue and ticket the message
belongs to, the ticket number for the Subject) and `enqueue` (article, ticket,
outbound queue rows and the communication log, in one transaction). The async
`OutboundPipeline.submit` resolves on a worker thread with a read-only
connection (ticket numbers come from blocks reserved in advance), runs the
stages there, and only `enqueue` goes through the group-commit writer.
`process_in_transaction` runs everything inside a transaction the caller
already holds (auto-responses, DSNs).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import compat32
from typing import Any

import structlog
from sqlalchemy import Connection

from gateway import errors
from gateway.commlog import Comm, CommObj, write_comm
from gateway.errors import PermanentError, SmtpReply
from gateway.outbound.context import OutboundContext
from gateway.outbound.stages import OutboundStages, default_stages
from gateway.runtime import Runtime
from gateway.store.db import is_temporary
from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)


def _copy_obj(o: CommObj) -> CommObj:
    return dataclasses.replace(o, entries=list(o.entries))


def run_stages(ctx: OutboundContext, rt: Runtime, stages: OutboundStages | None = None) -> None:
    """Parse when needed, then every stage in order (the table of
    gateway.outbound.stages unless `stages` is given); the last one sets ctx.data.

    The article is taken from the message as it is just before "crypto" (so the
    helpdesk stores what the agent wrote, not ciphertext), and parsed here, on a
    worker thread, rather than inside the database transaction.
    """
    from gateway.inbound.parse import parse_message
    from gateway.outbound.rewrite import serialize

    if ctx.msg is None:
        ctx.msg = message_from_bytes(ctx.raw, policy=compat32)
    for stage in stages if stages is not None else default_stages():
        if stage.name in ("crypto", "dkim") and ctx.article is None and ctx.kind != "dsn":
            ctx.article = parse_message(serialize(ctx.msg))
        stage.fn(ctx, rt)
    if not ctx.data:
        ctx.data = serialize(ctx.msg)
    for c in ctx.copies:
        c.data = c.data or serialize(c.msg)


def process_in_transaction(ctx: OutboundContext, rt: Runtime, conn: Connection,
                           stages: OutboundStages | None = None) -> int:
    """resolve, stages, enqueue inside the caller's transaction; returns the first outbound
    id (all of them in ctx.outbound_ids)."""
    from gateway.outbound.queue import enqueue
    from gateway.outbound.rewrite import resolve

    if ctx.msg is None:
        ctx.msg = message_from_bytes(ctx.raw, policy=compat32)
    resolve(ctx, rt, conn)
    run_stages(ctx, rt, stages)
    return enqueue(ctx, rt, conn)


@dataclass(frozen=True)
class SubmitResult:
    reply: SmtpReply
    outbound_id: int | None = None      # the first queue row
    ticket_number: str = ""
    article_id: int | None = None
    message_id: str = ""
    outbound_ids: tuple[int, ...] = ()  # one queue row per copy


QUEUED = SmtpReply(250, "2.0.0", "queued")
REFUSED = SmtpReply(554, "5.7.1", "message refused")


class OutboundPipeline:
    """Submission → durable queue. One instance per process.

    `number_block` is how many ticket numbers are reserved at a time: a block for a
    long-running gateway, 1 for a one-shot `deskgate send` (which would otherwise
    throw away the rest of its block on exit).
    """

    def __init__(self, runtime: Callable[[], Runtime], writer: BatchWriter,
                 executor: Executor | None = None,
                 on_queued: Callable[[], None] | None = None, *, number_block: int = 20,
                 stages: OutboundStages | None = None) -> None:
        self.runtime = runtime
        self.stages = stages
        self.writer = writer
        self.executor = executor
        self.on_queued = on_queued
        from gateway.outbound.rewrite import TicketNumbers

        self.numbers = TicketNumbers(self._reserve,
                                     lambda: self.runtime().config.gateway.system_id,
                                     block=number_block)

    async def submit(self, ctx: OutboundContext) -> SubmitResult:
        """Run the message through; 250 only after the queue row is committed."""
        from gateway.outbound.queue import enqueue

        rt = self.runtime()
        loop = asyncio.get_running_loop()
        comm = Comm("Outgoing", ctx.source, ctx.account)
        conn_obj = comm.obj("Connection")
        conn_obj.log("Info", "Submission", f"{ctx.source} from {ctx.account or 'local'}"
                     + (f" as user {ctx.user.name}" if ctx.user else ""))
        comm.objects.append(ctx.log)
        ctx.log.log("Info", "Envelope", f"from <{ctx.mail_from}> to "
                    + ", ".join(f"<{r}>" for r in ctx.recipients) + f", {len(ctx.raw)} bytes")
        try:
            await loop.run_in_executor(self.executor, self._prepare, ctx, rt)

            def job(conn: Connection) -> int:
                # The writer may re-run a job after a failed batch: log from fresh copies,
                # and forget the ticket a rolled-back run created.
                ctx.log = _copy_obj(msg_obj)
                ctx.ticket_id, ctx.article_id = ticket_id, None
                oid = enqueue(ctx, rt, conn)
                cc = Comm("Outgoing", ctx.source, ctx.account, start=comm.start,
                          objects=[_copy_obj(conn_obj), ctx.log])
                cc.objects[0].close("Successful")
                cc.close()
                write_comm(conn, cc)
                return oid

            msg_obj, ticket_id = ctx.log, ctx.ticket_id

            oid = await self.writer.run(job)
        except PermanentError as exc:
            log.warning("outbound message refused", error=str(exc))
            return self._failed(comm, conn_obj, ctx, "Error", str(exc),
                                getattr(exc, "reply", None)
                                or SmtpReply(554, "5.6.0", str(exc)[:200] or REFUSED.text))
        except Exception as exc:
            if isinstance(exc, errors.TemporaryError):
                # a known temporary cause (gpg not answering): no traceback needed
                log.warning("temporary failure", error=str(exc)[:300])
            elif is_temporary(exc):
                log.warning("database unavailable; temporary failure", error=str(exc))
            else:
                log.exception("outbound pipeline failed; temporary failure")
            return self._failed(comm, conn_obj, ctx, "Error",
                                f"{type(exc).__name__}: {exc}", errors.TEMPFAIL)
        # Committed: from here on nothing may turn the 250 into an error reply (the
        # client would send the message again). The sender polls on its own too.
        if self.on_queued:
            try:
                self.on_queued()
            except Exception:
                log.exception("queued, but waking the sender failed", outbound_id=oid)
        log.info("queued", outbound_id=oid, copies=len(ctx.outbound_ids), queue=ctx.queue,
                 ticket=ctx.ticket_number, message_id=ctx.message_id)
        return SubmitResult(QUEUED, oid, ctx.ticket_number, ctx.article_id, ctx.message_id,
                            tuple(ctx.outbound_ids))

    def _prepare(self, ctx: OutboundContext, rt: Runtime) -> None:
        """Worker thread: parse, resolve on a read-only connection, run the stages."""
        from gateway.outbound.rewrite import parse_submission, resolve

        parse_submission(ctx, rt)
        with self.writer.engine.connect() as conn:
            resolve(ctx, rt, conn, self.numbers.take)
        run_stages(ctx, rt, self.stages)

    def _reserve(self, day: str, count: int) -> int:
        from gateway.outbound.rewrite import reserve_numbers

        return self.writer.submit(lambda conn: reserve_numbers(conn, day, count),
                                  isolated=True).result()

    def _failed(self, comm: Comm, conn_obj: CommObj, ctx: OutboundContext, prio: Any,
                text: str, reply: SmtpReply) -> SubmitResult:
        ctx.log.log(prio, "Submission", f"not queued ({reply.code}): {text}"[:4000])
        ctx.log.close("Failed")
        conn_obj.close("Failed")
        comm.close("Failed")
        try:
            self.writer.submit(lambda conn: write_comm(conn, comm), isolated=True)
        except Exception:
            # the reply matters more than its log entry (a writer that is closing)
            log.exception("refusal not written to the communication log", reply=reply.code)
        return SubmitResult(reply)
