"""The sender task of `deskgate serve`: claims due messages and hands them to the relay.

Deliveries run on a small thread pool (smtplib blocks); claims and outcomes go
through the group-commit writer. Per attempt one communication (Outgoing) is
logged with a Connection object (connect, TLS, AUTH) and a Message object
(per-recipient results). Permanent failures and an exhausted schedule send a
DSN to the submitter; `warn_after` sends one "delayed" DSN. A claim whose lease
ran out without an outcome (the node's process ended or hung mid-delivery) is no
failed attempt: whichever sender takes the message next logs it (Warn
Interrupted) and delivers at once, or defers it when that was interrupted too.
Each claim is checked (and its lease renewed) just before the transfer starts:
one another node took meanwhile is not sent.
Requested auto-responses are built by a task of their own beside the claims, so a
build that hangs (until autoresponse.BUILD_TIMEOUT) holds up no delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway import metrics
from gateway.commlog import Comm, CommObj, storable, write_comm
from gateway.config import Config
from gateway.outbound import queue as oq
from gateway.outbound.autoresponse import build_requests
from gateway.outbound.dsn_params import DsnRequest
from gateway.outbound.transport import (
    Attempt,
    Reply,
    Transport,
    error_reply,
    make_transport,
    retried,
)
from gateway.pools import resized
from gateway.runtime import Runtime
from gateway.store.claims import CHECK_TIMEOUT, claim_name, still_held
from gateway.store.db import is_temporary
from gateway.store.writer import BatchWriter
from gateway.textsafe import reply_line, shown

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)

# Wake-up callbacks of running senders (so an auto-response queued inside the
# inbound transaction is picked up without waiting for the next poll).
_WAKERS: list[Callable[[float], None]] = []
_WAKERS_LOCK = threading.Lock()


def add_waker(fn: Callable[[float], None]) -> None:
    """Also call `fn(delay)` whenever this process queues a message (see notify_queued)."""
    with _WAKERS_LOCK:
        _WAKERS.append(fn)


def notify_queued() -> None:
    with _WAKERS_LOCK:
        wakers = list(_WAKERS)
    for w in wakers:
        w(0.2)    # called inside the transaction: look a moment after its commit


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Sender:
    name = "outbound-sender"

    def __init__(self, runtime: Callable[[], Runtime], writer: BatchWriter, *,
                 transport: Transport | None = None, node: str | None = None,
                 engine: Engine | None = None) -> None:
        self.runtime = runtime
        self.writer = writer
        self.engine = engine      # with it, the sender also builds requested auto-responses
        cfg = runtime().config
        self.transport = transport or make_transport(cfg)
        self._relay, self._maildir = cfg.relay, cfg.path(cfg.relay.maildir)
        self.concurrency = max(1, cfg.relay.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                       thread_name_prefix="relay")
        self.node = node or node_name()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._leased: dict[int, str] = {}   # claimed here (id → claim), not yet recorded
        self._claims = 0
        self._keeper: asyncio.Task[None] | None = None
        self._builder: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="outbound-sender")
        self._keeper = asyncio.create_task(self._keep_leases(), name="outbound-leases")
        with _WAKERS_LOCK:
            _WAKERS.append(self.poke)
        log.info("outbound sender started", node=self.node, transport=self.transport.name,
                 relay=self.transport.account)

    async def stop(self) -> None:
        self._stopping = True
        with _WAKERS_LOCK, contextlib.suppress(ValueError):
            _WAKERS.remove(self.poke)
        if self._wake:
            self._wake.set()
        if self._task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 60)
        if self._builder is not None and not self._builder.done():
            # A build under way has a moment to finish; one that does not is counted
            # already and is built again after relay.retry's delay.
            await asyncio.wait({self._builder}, timeout=self.BUILDER_GRACE)
            self._builder.cancel()
            with contextlib.suppress(BaseException):
                await self._builder
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=60)
        if self._keeper:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper
        await asyncio.get_running_loop().run_in_executor(None, self.transport.close)
        self.pool.shutdown(wait=False)

    async def reload(self, cfg: Config) -> None:
        """Reload hook: a changed relay.concurrency sizes the deliveries from now on;
        any other change to [relay] gets a new transport (the old one is closed)."""
        self._resize(cfg.relay.concurrency)
        same = dataclasses.replace(cfg.relay, concurrency=self._relay.concurrency)
        if same == self._relay and cfg.path(cfg.relay.maildir) == self._maildir:
            self._relay = cfg.relay
            return
        old, self.transport = self.transport, make_transport(cfg)
        self._relay, self._maildir = cfg.relay, cfg.path(cfg.relay.maildir)
        await asyncio.get_running_loop().run_in_executor(None, old.close)
        log.info("relay settings reloaded", transport=self.transport.name,
                 relay=self.transport.account)

    def _resize(self, concurrency: int) -> None:
        """New deliveries run on a pool of the new size (gateway.pools.resized)."""
        self.pool, size = resized(self.pool, self.concurrency, concurrency, "relay", "relay")
        if size == self.concurrency:
            return
        self.concurrency = size
        if self._wake is not None:      # claim up to the new limit now
            self._wake.set()

    def poke(self, delay: float = 0.0) -> None:
        """Thread-safe: look for due messages now (or after `delay` seconds)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            if delay:
                loop.call_soon_threadsafe(loop.call_later, delay, wake.set)
            else:
                loop.call_soon_threadsafe(wake.set)

    # ---------------------------------------------------------------- loop

    # Seconds stop() waits for an auto-response build under way before cancelling it.
    BUILDER_GRACE = 5.0

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            if self.engine is not None and (self._builder is None or self._builder.done()):
                self._builder = asyncio.create_task(self._build(),
                                                    name="autoresponse-builder")
            rt = self.runtime()
            relay = rt.config.relay
            free = self.concurrency * 2 - len(self._inflight)
            claimed: list[oq.Claimed] = []
            timeout = relay.poll_interval
            if free > 0:
                self._claims += 1
                try:
                    # A name per claim: a late attempt of an earlier claim of this node
                    # cannot pass for the current one.
                    claimed = await self.writer.run(
                        functools.partial(oq.claim, node=claim_name(self.node, self._claims),
                                          limit=free, lease=relay.lease,
                                          exclude=frozenset(self._leased)))
                    if not claimed:
                        due = await self.writer.run(oq.next_due)
                        if due is not None:
                            wait = (due - datetime.now(UTC)).total_seconds()
                            timeout = min(timeout, max(wait, 0.05))
                except Exception as exc:
                    log.warning("outbound claim failed", error=str(exc))
            for m in claimed:
                self._leased[m.id] = m.node
                t = asyncio.create_task(self._deliver(m))
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)
            if claimed and len(self._inflight) < self.concurrency * 2:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def _build(self) -> None:
        """One pass over the auto-response requests, on its own task: the claims and
        deliveries go on while it builds (a hung build ends after BUILD_TIMEOUT as a
        failed build). What it queued is claimed at once."""
        assert self.engine is not None
        try:
            queued = await build_requests(self.runtime, self.writer, self.engine)
        except Exception as exc:
            log.warning("auto-response requests not built", error=repr(exc)[:300])
            return
        if queued:
            self.poke()

    async def _keep_leases(self) -> None:
        """Renew the leases of the messages this sender holds, every third of a lease:
        a transfer (or a wait for a free worker) longer than `relay.lease` must not let
        another node, or this one, take the message and send it a second time."""
        while not self._stopping:
            lease = self.runtime().config.relay.lease
            await asyncio.sleep(max(0.1, lease / 3))
            held = dict(self._leased)
            if not held:
                continue
            try:
                await self.writer.run(functools.partial(oq.renew, held=held, lease=lease))
            except Exception as exc:
                log.warning("outbound leases not renewed", error=str(exc)[:300],
                            messages=len(held))

    async def _deliver(self, m: oq.Claimed) -> None:
        try:
            await self._deliver_leased(m)
        finally:
            self._leased.pop(m.id, None)

    async def _deliver_leased(self, m: oq.Claimed) -> None:
        loop = asyncio.get_running_loop()
        rcpts = [a for _, a in m.recipients]
        if m.lost_by:
            # An earlier attempt never ended: not a failed attempt, shown as a Warn.
            log.warning("previous attempt was interrupted", outbound_id=m.id,
                        node=m.lost_by, lease_until=str(m.lost_until),
                        deferred=m.lost_again)
            metrics.MESSAGES.labels("relay", "out", "lost").inc()
            try:
                await self.writer.run(functools.partial(
                    record_interrupted, m=m, transport=self.transport))
            except Exception as exc:
                log.warning("interrupted attempt not logged", outbound_id=m.id,
                            error=str(exc)[:300])
        try:
            if m.lost_again:
                att = Attempt(error=oq.INTERRUPTED)
            elif rcpts:
                got = await loop.run_in_executor(self.pool, self._deliver_held, m, rcpts)
                if got is None:
                    # Another claim took the message before this transfer started.
                    log.warning("claim lost before MAIL FROM: not sent", outbound_id=m.id,
                                claim=m.node)
                    metrics.MESSAGES.labels("relay", "out", "superseded").inc()
                    return
                att = got
            else:
                att = Attempt()
        except Exception as exc:
            log.exception("delivery crashed", outbound_id=m.id)
            att = Attempt(error=f"{type(exc).__name__}: {exc}")
        results = results_of(m, att)
        st = await self._record(m, att, results)
        if st is None:
            return
        if not st.recorded:
            log.warning("delivery outcome not recorded", outbound_id=m.id, reason=st.status)
        result = {"queued": "deferred"}.get(st.status, st.status)
        metrics.MESSAGES.labels("relay", "out", result).inc()
        self.delivered += sum(1 for r in results if r.ok)
        if self._wake:
            self._wake.set()


    # Seconds the check of a claim before its transfer may take.
    CLAIM_CHECK_TIMEOUT = CHECK_TIMEOUT

    def _deliver_held(self, m: oq.Claimed, rcpts: list[str]) -> Attempt | None:
        """On a worker thread: renew the claim, then deliver; None (nothing sent) when
        another claim took the message while it waited for a worker or since the last
        renewal (gateway.store.claims.still_held)."""
        loop = self._loop
        if loop is not None and m.node:
            job = functools.partial(oq.renew, held={m.id: m.node},
                                    lease=self.runtime().config.relay.lease)
            if not still_held(loop, self.writer, job, timeout=self.CLAIM_CHECK_TIMEOUT,
                              outbound_id=m.id):
                return None
        if not (m.dsn or m.dsn_rcpt):
            return self.transport.deliver(m.sender, rcpts, m.data)
        dsn = DsnRequest(m.dsn, tuple(m.rcpt_dsn(rid) for rid, _ in m.recipients))
        return self.transport.deliver(m.sender, rcpts, m.data, dsn=dsn)

    # Seconds between tries to write an attempt's outcome the database refused.
    RECORD_RETRY = (1.0, 2.0, 5.0, 10.0, 30.0)

    async def _record(self, m: oq.Claimed, att: Attempt,
                      results: list[oq.RcptResult]) -> oq.Settled | None:
        """Write the attempt's outcome, trying again while the database refuses it: the
        lease stays renewed meanwhile, so a message the smarthost took is not claimed
        and sent again. A crash (an error that is not the database's, e.g. building the
        DSN) would fail the same way every time: the outcome is then written once more
        without DSNs, with the crash as an Error in the log, so the message settles
        (the attempt counts, the schedule ends it) instead of staying leased for ever;
        when that crashes too, the queue's outcome alone is written (no log, no DSN).
        None when the sender stopped first, or when even that crashed: the lease then
        runs out and the next claim takes the message as an interrupted attempt."""
        tries = 0
        crash = ""
        bare = False
        while True:
            job: Callable[[Connection], oq.Settled]
            if bare:
                job = functools.partial(record_bare, rt=self.runtime(), m=m, att=att,
                                        results=results)
            else:
                job = functools.partial(record, rt=self.runtime(), m=m, att=att,
                                        results=results, transport=self.transport,
                                        crash=crash)
            try:
                return await self.writer.run(job)
            except Exception as exc:
                # Only the database's own failures are worth waiting for; an OSError
                # from building the DSN (a key file deskgate may not read) is a crash.
                if not (isinstance(exc, SQLAlchemyError) and is_temporary(exc)):
                    if bare:
                        log.exception("writing the outcome alone crashed too; left to its "
                                      "lease, then taken as an interrupted attempt",
                                      outbound_id=m.id, crash=crash)
                        return None
                    if crash:
                        log.exception("recording the delivery crashed again; writing the "
                                      "queue's outcome alone, without log or DSN",
                                      outbound_id=m.id, crash=crash)
                        bare = True
                        continue
                    crash = f"{type(exc).__name__}: {exc}"[:1000]
                    log.exception("recording the delivery crashed; recording it without "
                                  "DSNs", outbound_id=m.id)
                    continue
                log.exception("recording the delivery failed", outbound_id=m.id,
                              delivered=sum(1 for r in results if r.ok), tries=tries + 1)
            if self._stopping:
                return None
            await asyncio.sleep(self.RECORD_RETRY[min(tries, len(self.RECORD_RETRY) - 1)])
            tries += 1


def results_of(m: oq.Claimed, att: Attempt) -> list[oq.RcptResult]:
    codes = (att.codes if att.codes and len(att.codes) == len(m.recipients)
             else [error_reply(att)] * len(m.recipients))
    return [oq.RcptResult(rid, addr, reply[0], reply[1], temporary=retried(att, reply),
                          host=reply.host if isinstance(reply, Reply) else "",
                          command=reply.command if isinstance(reply, Reply) else "")
            for (rid, addr), reply in zip(m.recipients, codes, strict=True)]


def record(conn: Connection, rt: Runtime, m: oq.Claimed, att: Attempt,
           results: list[oq.RcptResult], transport: Transport, crash: str = "") -> oq.Settled:
    """Outcomes, communication log and DSNs, in one transaction. Re-runnable.

    The smarthost's texts are written storable (a NUL, which PostgreSQL refuses, would
    otherwise crash the record and cost the DSN), the addresses as `shown` and the
    replies as their reason (RcptResult.reason: on one line, with the server and the
    command, as Postfix logs them; a line break in a queued address or a multi-line
    reply would otherwise split its entry). With `crash` (an earlier run crashed) no
    DSN is built and each that was due is an Error naming the crash."""
    relay = rt.config.relay
    results = _storable(results)
    st = oq.record_attempt(conn, m, results, schedule=relay.retry, warn_after=relay.warn_after,
                           error=storable(att.error), counted=not m.lost_again)
    comm = Comm("Outgoing", transport.name, transport.account)
    if not m.lost_again:       # no connection was made
        c = comm.obj("Connection")
        for prio, key, value in att.log:
            c.log(prio, key, value)  # type: ignore[arg-type]
        c.close("Failed" if att.error else "Successful")
    msg = comm.obj("Message")
    msg.outbound_id = m.id
    msg.article_id = m.article_id
    if m.lost_again:
        msg.log("Info", "Attempt", f"outbound #{m.id}, {m.kind} from <{shown(m.sender)}>, "
                f"{m.message_id}: not sent now, the last two attempts were interrupted")
    else:
        msg.log("Info", "Attempt", f"outbound #{m.id} attempt {m.attempts + 1}, "
                f"{m.kind} from <{shown(m.sender)}>, {m.message_id}")
    if not st.recorded:
        replies = "; ".join(f"<{shown(r.address)}>: {r.reason}"
                            for r in st.unrecorded)
        if st.status == "deleted":
            msg.log("Notice", "Deleted", f"{replies}; not recorded: the message was deleted "
                    "from the queue while this attempt ran, it is not tried again"[:3000])
        else:
            msg.log("Warn", "Superseded", f"{replies}; not recorded: the lease ran out and "
                    "the message was delivered or taken by another attempt"[:3000])
        msg.close("Warning")
        comm.close()
        write_comm(conn, comm)
        return st
    for r in st.sent:
        msg.log("Info", "Delivered", f"<{shown(r.address)}>: {reply_line(r.code, r.reply)}")
    for r in st.delayed:
        msg.log("Warn", "Deferred", f"<{shown(r.address)}>: {r.reason}; "
                f"next attempt {st.next_attempt:%Y-%m-%d %H:%M:%S}" if st.next_attempt else "")
    for r in st.failed:
        why = ("permanent failure" if r.permanent else "time in the queue ran out"
               if m.lost_again else "retries exhausted")
        msg.log("Error", "Failed",
                f"<{shown(r.address)}>: {r.reason} ({why})")
    if crash:
        msg.log("Error", "Record", f"recording this attempt crashed ({crash}); recorded "
                "without DSNs"[:3000])
    msg.close("Failed" if st.failed or crash else "Warning" if st.delayed else "Successful")
    comm.close()
    notices: list[tuple[str, str, list[oq.RcptResult], datetime | None]] = []
    failed = _wanted(m, msg, "FAILURE", "failure", st.failed)
    if failed and m.kind == "message" and m.return_path:
        notices.append(("failed", "failure", failed, None))
    delayed = _wanted(m, msg, "DELAY", "delay", st.delayed if st.warn else [])
    if st.warn and m.return_path and delayed:
        notices.append(("delayed", "delay", delayed, _retry_until(m, relay.retry)))
    sent = [r for r in st.sent if m.rcpt_dsn(r.row_id).wants("SUCCESS")]
    if sent and att.dsn_passed:
        msg.log("Info", "DSN", "success notice for " + ", ".join(
            f"<{shown(r.address)}>" for r in sent) + " (NOTIFY=SUCCESS) left to the relay, "
            "which announces DSN")
    elif sent and m.kind == "message" and m.return_path:
        notices.append(("delivered" if att.final else "relayed", "success", sent, None))
    for action, what, rs, until in notices:
        if crash:
            msg.log("Error", "DSN", f"{what} notice to <{shown(m.return_path)}> not queued: "
                    f"{crash}"[:3000])
            continue
        oid = _queue_dsn(conn, rt, m, action, rs, transport, retry_until=until)
        msg.log("Notice", "DSN", f"{what} notice to <{shown(m.return_path)}> queued as #{oid}")
    write_comm(conn, comm)
    return st


def _wanted(m: oq.Claimed, msg: CommObj, kind: str, what: str,
            results: list[oq.RcptResult]) -> list[oq.RcptResult]:
    """The recipients of `results` whose NOTIFY asks for a `kind` notice (those without
    NOTIFY do, for FAILURE and DELAY); the others are logged as getting none."""
    wanted = [r for r in results if m.rcpt_dsn(r.row_id).wants(kind)]
    if len(wanted) < len(results):
        msg.log("Info", "DSN", f"no {what} notice for " + ", ".join(
            f"<{shown(r.address)}> (NOTIFY={m.rcpt_dsn(r.row_id).notify})"
            for r in results if r not in wanted))
    return wanted


def record_bare(conn: Connection, rt: Runtime, m: oq.Claimed, att: Attempt,
                results: list[oq.RcptResult]) -> oq.Settled:
    """The queue's outcome alone (no communication log, no DSN), for an attempt whose
    full record crashed twice: the attempt still counts and the schedule still ends
    the message."""
    relay = rt.config.relay
    return oq.record_attempt(conn, m, _storable(results), schedule=relay.retry,
                             warn_after=relay.warn_after, error=storable(att.error),
                             counted=not m.lost_again)


def record_interrupted(conn: Connection, m: oq.Claimed, transport: Transport) -> None:
    """The Warn (Interrupted) for an attempt whose lease ran out without an outcome, in
    its own transaction: it stays in the log even when the next attempt dies too."""
    comm = Comm("Outgoing", transport.name, transport.account)
    msg = comm.obj("Message")
    msg.outbound_id = m.id
    msg.article_id = m.article_id
    ran_out = f"{m.lost_until:%Y-%m-%d %H:%M:%S}" if m.lost_until else "?"
    then = ("it was interrupted twice in a row, so the message waits for the retry "
            "schedule" if m.lost_again else "delivering again now")
    msg.log("Warn", "Interrupted", f"outbound #{m.id}: {oq.INTERRUPTED}; the attempt by "
            f"{m.lost_by} ended without an outcome (its lease ran out at {ran_out} UTC) and "
            f"may or may not have reached the relay; {then}"[:3000])
    msg.close("Warning")
    comm.close()
    write_comm(conn, comm)


def _storable(results: list[oq.RcptResult]) -> list[oq.RcptResult]:
    return [dataclasses.replace(r, reply=storable(r.reply)) for r in results]


def _retry_until(m: oq.Claimed, schedule: tuple[float, ...]) -> datetime:
    return m.created + timedelta(seconds=sum(schedule))


def _queue_dsn(conn: Connection, rt: Runtime, m: oq.Claimed, action: Any,
               results: list[oq.RcptResult], transport: Transport, *,
               retry_until: datetime | None = None) -> int:
    from gateway.outbound.context import OutboundContext
    from gateway.outbound.dsn import build_dsn
    from gateway.outbound.pipeline import process_in_transaction
    from gateway.outbound.received import Received

    cfg = rt.config
    data = build_dsn(action=action, reporting_mta=cfg.gateway.hostname, to=m.return_path,
                     original_headers=m.data.split(b"\r\n\r\n", 1)[0],
                     original_message_id=m.message_id, results=results,
                     arrival=m.created, last_attempt=datetime.now(UTC), retry_until=retry_until,
                     queue_id=m.id, sender=m.sender, original=m.data,
                     bounce_size_limit=cfg.relay.bounce_size_limit, ret=m.dsn.ret,
                     envid=m.dsn.envid,
                     orcpts={rid: d.orcpt for rid, d in m.dsn_rcpt.items() if d.orcpt})
    ctx = OutboundContext(mail_from=cfg.relay.bounce_sender, recipients=[m.return_path],
                          raw=data, source="DSN", account=cfg.gateway.hostname, kind="dsn",
                          queue=m.queue, received=Received.local(cfg.gateway.hostname))
    ctx.sender = cfg.relay.bounce_sender
    return process_in_transaction(ctx, rt, conn)
