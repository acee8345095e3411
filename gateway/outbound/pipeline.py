"""The outbound pipeline: resolve → rewrite → crypto → dkim → enqueue.

The order of the message-changing stages is data (`OUTBOUND_ORDER`), run by a
small engine. "crypto" is a named slot that does nothing until the S/MIME/PGP
module registers its function under that name (or adds its own stage with
`register_outbound_stage`); DKIM is always the last change to the message.

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
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any, Literal

import structlog
from sqlalchemy import Connection

from gateway import errors
from gateway.commlog import Comm, CommObj, write_comm
from gateway.config import QueueConfig, SubmissionUser
from gateway.errors import PermanentError, SmtpReply
from gateway.model import Parsed
from gateway.runtime import Runtime
from gateway.store.db import BatchWriter, is_temporary

log = structlog.get_logger(__name__)

Kind = Literal["message", "auto-response", "dsn"]


@dataclass
class OutboundCopy:
    """One form of the message for some of its recipients (one outbound queue row)."""

    recipients: list[str]
    msg: Message
    data: bytes = b""                   # final bytes (after DKIM)
    crypto: dict[str, Any] = field(default_factory=dict)
    outbound_id: int | None = None


@dataclass
class OutboundContext:
    """One outgoing message on its way through the stages.

    Normally one copy goes to all recipients: `msg`, then `data`. A stage may split
    the message into `copies` (crypto does, when only some recipients have a key);
    `msg` is then the first copy, and a later stage that changes the message must
    change every copy.
    """

    mail_from: str                      # envelope sender as submitted
    recipients: list[str]
    raw: bytes                          # as submitted
    log: CommObj = field(default_factory=lambda: CommObj("Message"))
    source: str = "SMTP"                # communication-log account type: SMTP, STDIN, ...
    account: str = ""                   # user name or peer
    user: SubmissionUser | None = None
    trusted: bool = False               # authenticated or from allow_networks
    kind: Kind = "message"
    requested_queue: str = ""           # `deskgate send --queue`
    msg: Message | None = None          # compat32 message; stages change it in place or swap it
    params: dict[str, str] = field(default_factory=dict)   # internal X-headers (trusted only)
    queue: str = ""
    queue_config: QueueConfig | None = None
    ticket_id: int | None = None
    ticket_number: str = ""
    helpdesk_number: str = ""           # the helpdesk's number from the Subject (with [helpdesk])
    helpdesk_ref: str = ""              # the helpdesk's ticket id its mail names (RT)
    new_ticket: bool = False
    sender: str = ""                    # envelope sender after rewrite ('' = null sender)
    from_email: str = ""                # the system address in From
    return_path: str = ""               # where DSNs go ('' = nobody)
    message_id: str = ""
    data: bytes = b""                   # final bytes (after DKIM)
    crypto: dict[str, Any] = field(default_factory=dict)   # filled by the crypto stage
    copies: list[OutboundCopy] = field(default_factory=list)   # empty: one copy, to all
    article: Parsed | None = None       # the message as stored (taken before "crypto")
    article_id: int | None = None
    outbound_id: int | None = None      # the first queue row
    outbound_ids: list[int] = field(default_factory=list)   # one queue row per copy
    sender_type: str = "agent"
    trace: list[str] = field(default_factory=list)

    def final_copies(self) -> list[OutboundCopy]:
        """What goes into the queue: the copies, or the message itself to every recipient."""
        if self.copies:
            return self.copies
        assert self.msg is not None
        return [OutboundCopy(list(self.recipients), self.msg, self.data, self.crypto)]


Stage = Callable[[OutboundContext, Runtime], None]


def _copy_obj(o: CommObj) -> CommObj:
    return dataclasses.replace(o, entries=list(o.entries))


def _crypto_slot(ctx: OutboundContext, rt: Runtime) -> None:
    """Placeholder for S/MIME and PGP signing/encryption (registered by gateway.crypto)."""


def _rewrite(ctx: OutboundContext, rt: Runtime) -> None:
    from gateway.outbound.rewrite import rewrite

    rewrite(ctx, rt)


def _dkim(ctx: OutboundContext, rt: Runtime) -> None:
    from gateway.outbound.dkim import dkim_stage

    dkim_stage(ctx, rt)


STAGES: dict[str, Stage] = {"rewrite": _rewrite, "crypto": _crypto_slot, "dkim": _dkim}
OUTBOUND_ORDER: list[str] = ["rewrite", "crypto", "dkim"]


def register_outbound_stage(name: str, fn: Stage, *, before: str | None = None) -> None:
    """Add a stage (or replace one of that name). New stages go before `before`,
    by default before "dkim": nothing may change the message after DKIM."""
    if name == "dkim" and "dkim" in STAGES and fn is not STAGES["dkim"]:
        STAGES["dkim"] = fn
        return
    if before is None:
        before = "dkim"
    if before not in OUTBOUND_ORDER:
        raise ValueError(f"no outbound stage {before!r} to insert {name!r} before")
    STAGES[name] = fn
    if name not in OUTBOUND_ORDER:
        OUTBOUND_ORDER.insert(OUTBOUND_ORDER.index(before), name)


def run_stages(ctx: OutboundContext, rt: Runtime) -> None:
    """Parse when needed, then every stage in order; the last one sets ctx.data.

    The article is taken from the message as it is just before "crypto" (so the
    helpdesk stores what the agent wrote, not ciphertext), and parsed here, on a
    worker thread, rather than inside the database transaction.
    """
    from gateway.inbound.parse import parse_message
    from gateway.outbound.rewrite import serialize

    if ctx.msg is None:
        ctx.msg = message_from_bytes(ctx.raw, policy=compat32)
    for name in OUTBOUND_ORDER:
        if name in ("crypto", "dkim") and ctx.article is None and ctx.kind != "dsn":
            ctx.article = parse_message(serialize(ctx.msg))
        STAGES[name](ctx, rt)
    if not ctx.data:
        ctx.data = serialize(ctx.msg)
    for c in ctx.copies:
        c.data = c.data or serialize(c.msg)


def process_in_transaction(ctx: OutboundContext, rt: Runtime, conn: Connection) -> int:
    """resolve, stages, enqueue inside the caller's transaction; returns the first outbound
    id (all of them in ctx.outbound_ids)."""
    from gateway.outbound.queue import enqueue
    from gateway.outbound.rewrite import resolve

    if ctx.msg is None:
        ctx.msg = message_from_bytes(ctx.raw, policy=compat32)
    resolve(ctx, rt, conn)
    run_stages(ctx, rt)
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
                 on_queued: Callable[[], None] | None = None, *, number_block: int = 20) -> None:
        self.runtime = runtime
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
                # The writer may re-run a job after a failed batch: log from fresh copies.
                ctx.log = _copy_obj(msg_obj)
                oid = enqueue(ctx, rt, conn)
                cc = Comm("Outgoing", ctx.source, ctx.account, start=comm.start,
                          objects=[_copy_obj(conn_obj), ctx.log])
                cc.objects[0].close("Successful")
                cc.close()
                write_comm(conn, cc)
                return oid

            msg_obj = ctx.log

            oid = await self.writer.run(job)
        except PermanentError as exc:
            log.warning("outbound message refused", error=str(exc))
            return self._failed(comm, conn_obj, ctx, "Error", str(exc),
                                getattr(exc, "reply", None)
                                or SmtpReply(554, "5.6.0", str(exc)[:200] or REFUSED.text))
        except Exception as exc:
            if is_temporary(exc):
                log.warning("database unavailable; temporary failure", error=str(exc))
            else:
                log.exception("outbound pipeline failed; temporary failure")
            return self._failed(comm, conn_obj, ctx, "Error",
                                f"{type(exc).__name__}: {exc}", errors.TEMPFAIL)
        if self.on_queued:
            self.on_queued()
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
        run_stages(ctx, rt)

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
        self.writer.submit(lambda conn: write_comm(conn, comm), isolated=True)
        return SubmitResult(reply)
