"""The hand-off worker of `deskgate serve`: claims outbox rows and delivers them.

Runs on every node. Claims and outcomes go through the group-commit writer; the
row's ticket, article and raw bytes are read on a connection of its own, and the
connector (a subprocess or an HTTP call) runs on a small thread pool, so the
event loop and the inbound commits never wait for the helpdesk. Each attempt is
one Outgoing communication (Connection + Message object) in the log. A row that
cannot be read or built is recorded as a failed attempt of its own, so it never
holds back the rows claimed with it. Each claim has a name of its own and is checked
(its lease renewed) just before the connector runs: a row another node took over
meanwhile is not handed off. An attempt whose process ended or hung (its lease ran
out) is taken back uncounted, logged as Interrupted, and handed off again at once.

This module schedules the attempts; the items they hand off are read and built
in gateway.helpdesk.items and each attempt is recorded in gateway.helpdesk.recording
(their names are importable from here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Connection, Engine

from gateway import metrics
from gateway.config import Config
from gateway.helpdesk import outbox
from gateway.helpdesk.base import Connector, Delivered, HandoffError, HandoffItem
from gateway.helpdesk.items import MISSING as MISSING
from gateway.helpdesk.items import ItemError as ItemError
from gateway.helpdesk.items import build_item as build_item
from gateway.helpdesk.items import read_items as read_items
from gateway.helpdesk.recording import record as record
from gateway.helpdesk.recording import record_interrupted as record_interrupted
from gateway.pools import resized
from gateway.runtime import Runtime
from gateway.store import Deferred
from gateway.store.claims import claim_name, still_held
from gateway.store.writer import BatchWriter

if TYPE_CHECKING:
    from gateway.interfaces import Host

log = structlog.get_logger(__name__)

CONNECTORS: dict[str, str] = {
    "otobo-postmaster": "gateway.helpdesk.otobo_pipe:OtoboPostmaster",
    "otobo-rest": "gateway.helpdesk.otobo_rest:OtoboRest",
    "znuny-rest": "gateway.helpdesk.otobo_rest:OtoboRest",
    "rt-rest2": "gateway.helpdesk.rt_rest2:RtRest2",
    "webhook": "gateway.helpdesk.webhook:Webhook",
}


def make_connector(cfg: Config) -> Connector:
    """The connector of `[helpdesk] type` (imported only when configured)."""
    mod, _, cls = CONNECTORS[cfg.helpdesk.type].partition(":")
    factory: Callable[[Config], Connector] = getattr(importlib.import_module(mod), cls)
    return factory(cfg)


# Wake-up callbacks of running workers: a message committed with a hand-off row is
# picked up at once instead of at the next poll.
_WAKERS: list[Callable[[], None]] = []
_WAKERS_LOCK = threading.Lock()


def add_waker(fn: Callable[[], None]) -> None:
    with _WAKERS_LOCK:
        _WAKERS.append(fn)


def remove_waker(fn: Callable[[], None]) -> None:
    with _WAKERS_LOCK, contextlib.suppress(ValueError):
        _WAKERS.remove(fn)


def notify_queued() -> None:
    """Called after the commit that holds a hand-off row."""
    with _WAKERS_LOCK:
        wakers = list(_WAKERS)
    for w in wakers:
        w()


# ----------------------------------------------------------------- the service

class HandoffWorker:
    name = "helpdesk-handoff"

    def __init__(self, runtime: Callable[[], Runtime], writer: BatchWriter, engine: Engine,
                 *, connector: Connector | None = None, node: str | None = None) -> None:
        from gateway.outbound.sender import node_name

        self.runtime = runtime
        self.writer = writer
        self.engine = engine
        cfg = runtime().config
        self._cfg = cfg.helpdesk
        self.connector = connector or make_connector(cfg)
        self.concurrency = max(1, cfg.helpdesk.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                       thread_name_prefix="handoff")
        self.node = node or node_name()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._done: list[_Done] = []
        # Rows claimed at once: the pool works on `concurrency` of them, the others
        # wait their turn, so one commit records and claims many.
        self.slots = self.concurrency * 4
        self._stopping = False
        # Rows claimed and not recorded yet (queued for a connector thread, being
        # delivered, or waiting for their record): their leases are renewed every
        # third of `lease`, so a slow helpdesk never sees a row twice from here or
        # from another node while its first attempt is still running. Row id → its
        # claim (each claim has a name of its own: node and number).
        self._held: dict[int, str] = {}
        self._claims = 0
        self._renew_at = 0.0
        # The helpdesk is down (several attempts in a row failed temporarily): like
        # Postfix's dead destination, claim nothing but one probe per `_backoff`
        # seconds, so pending rows wait without being charged attempts and the
        # writer is not kept busy recording failures while LMTP mail keeps coming.
        self._failures = 0
        self._down_until = 0.0
        self._backoff = 0.0
        self.delivered = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="helpdesk-handoff")
        add_waker(self.poke)
        log.info("helpdesk hand-off started", node=self.node, helpdesk=self.connector.type,
                 account=self.connector.account)

    async def stop(self) -> None:
        self._stopping = True
        remove_waker(self.poke)
        if self._wake:
            self._wake.set()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=60)
        if self._wake:
            self._wake.set()
        if self._task:      # records what finished, claims nothing more
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 60)
        await asyncio.get_running_loop().run_in_executor(None, self.connector.close)
        self.pool.shutdown(wait=False)

    async def reload(self, cfg: Config) -> None:
        """A changed helpdesk.concurrency sizes the hand-offs from now on; any other
        change to [helpdesk] gets a new connector."""
        if not cfg.helpdesk.enabled:
            return
        self._resize(cfg.helpdesk.concurrency)
        same = dataclasses.replace(cfg.helpdesk, concurrency=self._cfg.concurrency)
        if same == self._cfg:
            self._cfg = cfg.helpdesk
            return
        old, self.connector = self.connector, make_connector(cfg)
        self._cfg = cfg.helpdesk
        await asyncio.get_running_loop().run_in_executor(None, old.close)
        log.info("helpdesk settings reloaded", helpdesk=self.connector.type)

    def _resize(self, concurrency: int) -> None:
        """New hand-offs run on a pool of the new size (gateway.pools.resized)."""
        self.pool, size = resized(self.pool, self.concurrency, concurrency, "handoff",
                                  "helpdesk")
        if size == self.concurrency:
            return
        self.concurrency = size
        self.slots = size * 4
        if self._wake is not None:      # claim up to the new limit now
            self._wake.set()

    def poke(self) -> None:
        """Thread-safe: look for due rows now."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        """One writer job per cycle records every finished attempt and claims as many
        new rows as there are free slots: one commit for both, however many."""
        assert self._wake is not None
        while not self._stopping or self._done:
            hd = self.runtime().config.helpdesk
            batch, self._done = self._done, []
            free = 0 if self._stopping else self.slots - len(self._inflight)
            timeout = hd.poll_interval
            if self._backoff:
                wait = self._down_until - time.monotonic()
                if wait > 0:
                    free, timeout = 0, min(timeout, wait)
                else:                       # one probe at a time while it is down
                    free = 0 if self._inflight else min(free, 1)
            claimed: list[outbox.Claimed] = []
            finished = {d.claimed.id for d in batch}
            still = {i: n for i, n in self._held.items() if i not in finished}
            renew = still if still and time.monotonic() >= self._renew_at else {}
            unrecorded = False
            if batch or free > 0 or renew:
                rt = self.runtime()
                held_before = bool(still)
                if free > 0:
                    self._claims += 1
                try:
                    outcomes, lost, claimed, due = await self.writer.run_deferring(
                        functools.partial(self._cycle, batch=batch, free=free, rt=rt,
                                          renew=renew, held=dict(self._held),
                                          name=claim_name(self.node, self._claims)))
                except Exception:
                    # The helpdesk has answered these attempts and only our record failed
                    # (the database went away, say): keep them, and their leases, and
                    # record them again shortly. Left to their leases they would be sent
                    # to the helpdesk once more.
                    log.exception("recording or claiming hand-offs failed; recording them "
                                  "again shortly", recorded=len(batch))
                    self._done[:0] = batch
                    outcomes, lost, due, unrecorded = [], [], None, True
                else:
                    if renew or (claimed and not held_before):
                        self._renew_at = time.monotonic() + hd.lease / 3
                    for i in finished:
                        self._held.pop(i, None)
                self._held.update((c.id, c.node) for c in claimed)
                for d, out in zip(batch, outcomes, strict=False):
                    self._account(d, out)
                for one in lost:
                    self._account_interrupted(one)
                if due is not None:
                    timeout = min(timeout, max((due - datetime.now(UTC)).total_seconds(), 0.05))
            if claimed:
                # One read for the whole claim, on the pool; each row's task awaits it.
                items = asyncio.get_running_loop().run_in_executor(
                    self.pool, read_items, self.engine, self.runtime(), claimed)
            for c in claimed:
                t = asyncio.create_task(self._deliver(c, items))
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)
            if unrecorded:
                timeout = min(timeout, RECORD_AGAIN)
            elif self._done or (claimed and len(self._inflight) < self.slots):
                continue
            if self._held:
                timeout = min(timeout, max(self._renew_at - time.monotonic(), 0.05))
            if self._stopping and not self._inflight:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _cycle(self, conn: Connection, later: Deferred, *, batch: list[_Done], free: int,
               rt: Runtime, renew: dict[int, str], held: dict[int, str], name: str
               ) -> tuple[list[outbox.Outcome], list[outbox.Lost], list[outbox.Claimed],
                          datetime | None]:
        hd = rt.config.helpdesk
        outcomes = [record(conn, rt, d.connector, d.claimed, d.result, d.error, d.seconds,
                           later) for d in batch]
        if renew:
            outbox.renew(conn, renew, lease=hd.lease)
        lost: list[outbox.Lost] = []
        if free > 0:
            # Attempts that ended with their process, taken back before claiming: not
            # counted, due again at once (deferred when interrupted twice in a row).
            lost = outbox.expire(conn, schedule=hd.retry, held=held)
            for one in lost:
                record_interrupted(conn, self.connector, one, later)
        claimed = outbox.claim(conn, name, limit=free, lease=hd.lease) if free > 0 else []
        due = outbox.next_due(conn) if not claimed and free > 0 else None
        return outcomes, lost, claimed, due

    async def _deliver(self, c: outbox.Claimed,
                       items: asyncio.Future[dict[int, HandoffItem | ItemError]]) -> None:
        loop = asyncio.get_running_loop()
        connector = self.connector
        result: Delivered | None = None
        error: HandoffError | None = None
        t0 = time.perf_counter()
        try:
            item: HandoffItem | ItemError | None = (await items).get(c.id)
        except Exception as exc:            # a last guard: read_items catches its own
            log.exception("hand-off: reading the row failed", handoff=c.id)
            item = ItemError(f"reading the row failed: {type(exc).__name__}: {exc}"[:2000])
        if item is None:
            item = ItemError(MISSING, temporary=False)
        if isinstance(item, ItemError):
            # Recorded like a failed attempt (on the schedule, or failed for good when
            # the article is gone): given back untouched it would be claimed again at
            # once, round after round, with the rows claimed alongside it.
            error = item
        else:
            if c.interrupted:
                # The interrupted attempt is not counted, but it may have reached the
                # helpdesk: this one is a retry to the connector (it looks first).
                item = dataclasses.replace(item, attempts=item.attempts + 1)
            try:
                got = await loop.run_in_executor(self.pool, self._deliver_held, c,
                                                 connector, item)
                if got is None:
                    # Another claim took the row before this attempt started.
                    log.warning("claim lost before the hand-off: not handed off",
                                handoff=c.id, claim=c.node)
                    metrics.HANDOFFS.labels("superseded").inc()
                    self._held.pop(c.id, None)
                    if self._wake:
                        self._wake.set()
                    return
                result = got
            except HandoffError as exc:
                error = exc
            except Exception as exc:            # a connector bug: retry, never lose
                log.exception("hand-off connector crashed", handoff=c.id)
                error = HandoffError(f"{type(exc).__name__}: {exc}")
        self._done.append(_Done(c, connector, result, error, time.perf_counter() - t0))
        if self._wake:
            self._wake.set()

    def _deliver_held(self, c: outbox.Claimed, connector: Connector, item: HandoffItem
                      ) -> Delivered | None:
        """On a connector thread: renew the claim, then hand off; None (nothing handed
        off) when another claim took the row while it waited for a thread or since the
        last renewal."""
        loop = self._loop
        if loop is not None and c.node:
            job = functools.partial(outbox.renew, held={c.id: c.node},
                                    lease=self.runtime().config.helpdesk.lease)
            if not still_held(loop, self.writer, job, handoff=c.id):
                return None
        return connector.deliver(item)

    def _account(self, d: _Done, out: outbox.Outcome) -> None:
        metrics.HANDOFFS.labels(
            out.status if out.status in ("delivered", "failed", "deleted", "superseded")
            else "deferred").inc()
        self._track_health(d)
        if out.status == "deleted":
            log.warning("hand-off deleted while it was tried; its result is not recorded",
                        handoff=d.claimed.id, delivered=d.result is not None,
                        error=str(d.error or "")[:300])
        elif out.status == "delivered":
            self.delivered += 1
            metrics.HANDOFF_SECONDS.observe(
                (datetime.now(UTC) - d.claimed.created).total_seconds())
            log.info("handed off", handoff=d.claimed.id,
                     ticket=d.result.ticket_number if d.result else "",
                     seconds=round(d.seconds, 3))
        elif out.status == "superseded":
            log.warning("hand-off result not recorded: another claim took the row over",
                        handoff=d.claimed.id, claim=d.claimed.node,
                        delivered=d.result is not None, error=str(d.error or "")[:300])
        else:
            log.warning("hand-off failed", handoff=d.claimed.id, status=out.status,
                        error=str(d.error)[:300])

    @staticmethod
    def _account_interrupted(lost: outbox.Lost) -> None:
        """An attempt that ended with its process is no failed attempt; it says nothing
        about the helpdesk (the message itself may kill the process)."""
        out = lost.outcome
        metrics.HANDOFFS.labels("interrupted").inc()
        if out.status == "failed":
            metrics.HANDOFFS.labels("failed").inc()
        log.warning("previous attempt was interrupted", handoff=lost.claimed.id,
                    node=lost.claimed.node, lease_until=str(lost.lease_until),
                    deferred=lost.again, status=out.status, attempts=out.attempts)

    def _track_health(self, d: _Done) -> None:
        """Consecutive temporary failures mark the helpdesk down; a success revives it.
        A row that never reached the connector tells nothing about the helpdesk."""
        if isinstance(d.error, ItemError):
            return
        if d.error is None:
            if self._backoff:
                log.info("helpdesk reachable again; resuming hand-offs",
                         helpdesk=self.connector.type)
            self._failures, self._backoff, self._down_until = 0, 0.0, 0.0
            metrics.HANDOFF_HELPDESK_UP.set(1)
            return
        if not d.error.temporary:
            return
        self._failures += 1
        if self._failures < DOWN_AFTER:
            return
        now = time.monotonic()
        if self._backoff and now < self._down_until:
            return          # an attempt that was under way when it went down
        retry = self.runtime().config.helpdesk.retry
        first = min(max(retry[0] if retry else 60.0, 1.0), MAX_BACKOFF)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF) if self._backoff else first
        self._down_until = now + self._backoff
        metrics.HANDOFF_HELPDESK_UP.set(0)
        log.warning("helpdesk looks down; pausing hand-offs", helpdesk=self.connector.type,
                    failures=self._failures, probe_in=round(self._backoff, 1),
                    error=str(d.error)[:300])


# Seconds between two tries to record finished attempts while the database fails.
RECORD_AGAIN = 1.0

# Temporary failures in a row that mark the helpdesk down, and the longest pause
# between two probes while it is.
DOWN_AFTER = 3
MAX_BACKOFF = 60.0


@dataclass
class _Done:
    """A finished attempt waiting for its record."""

    claimed: outbox.Claimed
    connector: Connector
    result: Delivered | None
    error: HandoffError | None
    seconds: float


def factory(gw: Host) -> HandoffWorker | None:
    """The worker of a gateway process, when a helpdesk is configured."""
    if not gw.config.helpdesk.enabled:
        return None
    worker = HandoffWorker(lambda: gw.runtime, gw.writer, gw.engine)
    gw.reload_hooks.append(worker.reload)
    return worker
