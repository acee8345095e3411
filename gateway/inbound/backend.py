"""The LMTP listener's backend: recipient checks, delivery into the pipeline, the
connection log, and the count of messages in flight (a graceful stop waits for it).

The listener (gateway.inbound.lmtp) talks to this through its LmtpBackend
protocol; the poller delivers through `run` so its messages count as in flight too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import structlog
from prometheus_client import Counter

from gateway import errors, metrics
from gateway.commlog import Comm, add_comm
from gateway.errors import SmtpReply
from gateway.inbound.pipeline import Pipeline
from gateway.model import Envelope, Outcome
from gateway.runtime import Runtime
from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)

# The labelled children of the per-message metrics, looked up once: `.labels()`
# costs a lock and a dict lookup per call, on the event loop, for every message.
_LMTP_SECONDS = metrics.PIPELINE_SECONDS.labels("lmtp")
_LMTP_IN: dict[str, Counter] = {}


def _lmtp_in(result: str) -> Counter:
    """The `deskgate_messages{door="lmtp",direction="in",result=...}` counter."""
    child = _LMTP_IN.get(result)
    if child is None:
        child = _LMTP_IN[result] = metrics.MESSAGES.labels("lmtp", "in", result)
    return child


class InboundBackend:
    """One process's inbound door onto the pipeline."""

    def __init__(self, runtime: Callable[[], Runtime], pipeline: Pipeline,
                 writer: BatchWriter) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.writer = writer
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def rcpt_status(self, address: str) -> SmtpReply:
        rt = self.runtime()
        cfg = rt.config
        addr = cfg.address_by_email(address)
        if addr is None:
            # Removed from conf.d, kept in the database as invalid: not a stranger.
            if address.lower() in rt.retired:
                return errors.RCPT_INVALID
            if cfg.lmtp.unknown_recipient == "default-queue":
                return errors.RCPT_OK
            return errors.RCPT_UNKNOWN
        if addr.valid == "invalid-temporarily":
            return errors.RCPT_TEMP_INVALID
        if addr.valid == "invalid":
            return errors.RCPT_INVALID
        return errors.RCPT_OK

    async def run(self, env: Envelope, comm: Comm | None = None) -> Outcome:
        """The pipeline's outcome for one message, counted as in flight meanwhile."""
        self.inflight += 1
        try:
            return await self.pipeline.deliver(env, comm=comm)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self._idle is not None:
                self._idle.set()

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str, *, client: str = "", queue_id: str = "") -> Outcome:
        env = Envelope(mail_from=mail_from, recipients=tuple(r.lower() for r in rcpts),
                       raw=raw, source="LMTP", account=peer,
                       trusted=self.runtime().config.lmtp.trusted, mta_client=client,
                       mta_queue_id=queue_id)
        t0 = time.perf_counter()
        outcome = await self.run(env)
        _LMTP_SECONDS.observe(time.perf_counter() - t0)
        result = "tempfail" if outcome.replies and outcome.replies[0].temporary \
            else outcome.action
        _lmtp_in(result).inc()
        return outcome

    def log_connection(self, comm: Comm) -> None:
        """Queue an LMTP connection's communication; it is written with the next batch."""
        remote = self.pipeline.remote
        if remote is not None and remote.log_connection(comm):
            return
        try:
            fut = self.writer.submit_deferring(lambda conn, later: add_comm(conn, comm, later))
        except Exception as exc:        # the writer is gone (shutting down)
            log.warning("LMTP connection not logged", peer=comm.account, error=repr(exc))
            return
        fut.add_done_callback(_report_unlogged)

    async def wait_idle(self, limit: float) -> bool:
        """Wait until no message is in the pipeline (graceful stop); False after `limit` s."""
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            return False
        return True


def _report_unlogged(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("LMTP connection not logged", error=repr(exc)[:300])
