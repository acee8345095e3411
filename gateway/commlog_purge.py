"""The daily purge inside `deskgate serve`: the communication log, and the
auto-response counts the per-address daily limit no longer reads."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from gateway import metrics
from gateway.commlog_views import purge_candidates, purge_ids

if TYPE_CHECKING:
    from gateway.interfaces import Host

log = structlog.get_logger(__name__)

INTERVAL = 86400.0
FIRST_RUN_AFTER = 300.0      # not in the start-up rush
BATCH = 2000                 # ids per write transaction, so LMTP commits are not held up


class PurgeService:
    """Runs `purge_once` every INTERVAL seconds on the writer thread."""

    name = "commlog-purge"

    def __init__(self, gw: Host, *, first_run_after: float = FIRST_RUN_AFTER,
                 interval: float = INTERVAL) -> None:
        self.gw = gw
        self.first_run_after = first_run_after
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="commlog-purge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_run_after)
        while True:
            await self.run_daily()
            await asyncio.sleep(self.interval)

    async def run_daily(self) -> None:
        """One day's purge; a failure of one part does not keep the other from running."""
        try:
            await self.purge_once()
        except Exception as exc:
            log.error("communication log purge failed", error=repr(exc))
        try:
            await self.purge_auto_response_counts()
        except Exception as exc:
            log.error("auto-response count purge failed", error=repr(exc))

    async def purge_once(self) -> int:
        """Purge in batches, each in its own write transaction; returns how many went."""
        gw_cfg = self.gw.config.gateway
        total = 0
        while True:
            def job(conn: object) -> int:
                ids = purge_candidates(conn, successful_after=gw_cfg.purge_successful_after,  # type: ignore[arg-type]
                                       all_after=gw_cfg.purge_all_after, limit=BATCH)
                return purge_ids(conn, ids)  # type: ignore[arg-type]

            n = await self.gw.writer.run(job, isolated=True)
            total += n
            if n < BATCH:
                break
        self.runs += 1
        metrics.COMMLOG_PURGED.inc(total)
        log.info("communication log purged", removed=total)
        return total

    async def purge_auto_response_counts(self) -> int:
        """Delete the auto-response counts older than two days (the daily limit reads
        one), in batches; returns how many went."""
        from gateway.outbound.autoresponse_rules import purge_counts

        now = self.gw.runtime.clock.now()
        total = 0
        while True:
            n = await self.gw.writer.run(
                lambda conn: purge_counts(conn, now, BATCH), isolated=True)
            total += n
            if n < BATCH:
                break
        log.info("auto-response counts purged", removed=total)
        return total


def factory(gw: Host) -> PurgeService:
    return PurgeService(gw)
