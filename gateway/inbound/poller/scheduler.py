"""The poller inside `deskgate serve`: one task per valid account that polls at
start, then every `interval`, at once again while the per-run cap left mail
waiting, and within seconds when the account's IDLE watcher sees new mail.
Failed runs are retried with a growing delay (retry_delay). After each run the
time of the next one goes to poller_account.next_attempt (`fetch --status`) and
deskgate_poller_account_failing{account} says whether the run failed.

One node at a time per account is enforced by run.Poller (advisory lock on
PostgreSQL, flock on SQLite); a node that does not get the lock skips the run.
A reload restarts the account tasks with the new [[account]] tables.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from gateway import metrics
from gateway.config import AccountConfig, Config
from gateway.inbound.poller import state
from gateway.inbound.poller.idle import IdleWatcher
from gateway.inbound.poller.run import Poller

if TYPE_CHECKING:
    from gateway.interfaces import Host

log = structlog.get_logger(__name__)

RETRY_AFTER_FAILURE = 60.0   # a failed run is retried sooner than a long interval ...
MAX_BACKOFF = 300.0          # ... then the delay doubles up to the interval (at least this)
STOP_GRACE = 30.0            # seconds a stopping poller lets runs finish cleanly


class PollerService:
    name = "poller"

    def __init__(self, gateway: Host) -> None:
        self.gw = gateway
        self.poller = Poller(gateway)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, IdleWatcher] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._accounts: tuple[AccountConfig, ...] = ()

    async def start(self) -> None:
        self._accounts = tuple(a for a in self.gw.config.account if a.valid)
        for acc in self._accounts:
            # The series exists from the start (0), so that an alert sees it change.
            metrics.POLLER_ACCOUNT_FAILING.labels(acc.name)
            if acc.type in ("imap", "pop3"):
                log.warning("account uses plaintext (allow_plaintext = true): credentials "
                            "and mail travel unencrypted", account=acc.name, type=acc.type)
            self._tasks[acc.name] = asyncio.create_task(self._loop(acc),
                                                        name=f"poll-{acc.name}")
        if self._reload not in self.gw.reload_hooks:
            self.gw.reload_hooks.append(self._reload)
        log.info("poller started", accounts=[a.name for a in self._accounts])

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let runs end after the message being committed, then cancel what is left."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self.poller.stopping = True
        for wake in self._wakes.values():
            wake.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._wakes.clear()
        self.poller.stopping = False

    async def _reload(self, cfg: Config) -> None:
        new = tuple(a for a in cfg.account if a.valid)
        if new == self._accounts:
            return
        await self.stop()
        for name in {a.name for a in self._accounts} - {a.name for a in new}:
            with contextlib.suppress(KeyError):     # no longer polled: no longer failing
                metrics.POLLER_ACCOUNT_FAILING.remove(name)
        await self.start()

    @property
    def accounts(self) -> tuple[str, ...]:
        """Names of the accounts being polled."""
        return tuple(self._tasks)

    def watcher(self, name: str) -> IdleWatcher | None:
        return self._watchers.get(name)

    async def _loop(self, acc: AccountConfig) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._wakes[acc.name] = wake
        watcher = None
        if acc.type.startswith("imap") and acc.idle:
            tokens = self.poller.token_source(acc) if acc.oauth2 is not None else None

            def signal() -> None:   # called on the watcher thread
                loop.call_soon_threadsafe(wake.set)

            watcher = IdleWatcher(acc, self.gw.config.root, signal,
                                  tokens.get if tokens else None,
                                  renew=tokens.renew if tokens else None)
            self._watchers[acc.name] = watcher
            watcher.start()
        trigger = "start"
        failures = 0
        try:
            while not self.poller.stopping:
                wake.clear()
                ran = True
                try:
                    result = await self.poller.poll(acc, trigger=trigger)
                except Exception:  # the loop must survive a broken run
                    log.exception("poll run crashed", account=acc.name)
                    failures += 1
                    delay = retry_delay(acc, failures)
                else:
                    failures = failures + 1 if result.status == "Failed" else 0
                    delay = (retry_delay(acc, failures) if failures else
                             0.0 if result.more else acc.interval)
                    # Skipped: another node ran it and stored its own next time.
                    ran = result.status != "Skipped"
                metrics.POLLER_ACCOUNT_FAILING.labels(acc.name).set(1 if failures else 0)
                if ran:
                    await self._store_next_attempt(acc, delay)
                try:
                    await asyncio.wait_for(wake.wait(), timeout=max(delay, 0.0) or 0.001)
                    trigger = "idle"
                except TimeoutError:
                    trigger = "interval"
        finally:
            if watcher is not None:
                self._watchers.pop(acc.name, None)
                await loop.run_in_executor(None, watcher.stop)


    async def _store_next_attempt(self, acc: AccountConfig, delay: float) -> None:
        """Keep when the account is polled next for `fetch --status` (another process)."""
        due = state.utcnow() + timedelta(seconds=max(delay, 0.0))
        try:
            await self.gw.writer.run(lambda c: state.set_next_attempt(c, acc.name, due))
        except Exception as exc:   # information only: polling goes on without it
            log.warning("could not store the time of the next poll run", account=acc.name,
                        error=repr(exc)[:300])


def retry_delay(acc: AccountConfig, failures: int) -> float:
    """Seconds before the next run after `failures` failed runs in a row: a minute
    (or the interval, when shorter), doubling with every further failure, so a
    wrong password or a dead token endpoint is not tried again every minute for
    ever; at most the interval, or MAX_BACKOFF when the interval is shorter."""
    first = min(acc.interval, RETRY_AFTER_FAILURE)
    return float(min(first * 2 ** min(failures - 1, 32), max(acc.interval, MAX_BACKOFF)))


def factory(gw: Host) -> PollerService | None:
    """SERVICE_FACTORIES entry: always present (it idles without valid accounts), so
    an [[account]] added by a reload starts polling without a restart."""
    return PollerService(gw)
