"""Composition root: builds the services from the config and runs them on one loop.

Only this module wires stages and doors together. A reload (SIGHUP) builds a new
Config and Runtime and swaps them in only when they validate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import importlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine

from gateway import errors, metrics, sdnotify
from gateway.commlog import Comm, add_comm, write_comm
from gateway.config import Config, load_config
from gateway.errors import ConfigErrors, SmtpReply
from gateway.inbound.pipeline import Pipeline, Stages
from gateway.inbound.stages import build_stages
from gateway.limits import FD_MARGIN, SessionLimit, raise_fd_limit
from gateway.model import Envelope, Outcome
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import BatchWriter, ensure_schema, make_engine

log = structlog.get_logger(__name__)

# Modules that register runtime builders and config validators when imported.
# The inbound stages are not here: they are the table of gateway.inbound.stages.
PLUGINS: tuple[str, ...] = (
    "gateway.inbound.filters", "gateway.web.auth",
    "gateway.crypto.inbound", "gateway.crypto.outbound", "gateway.outbound.plugin",
    "gateway.inbound.poller.validate", "gateway.classify",
)


def load_plugins() -> None:
    for name in PLUGINS:
        importlib.import_module(name)


class Service(Protocol):
    """A long-running part of `deskgate serve` (listener, sender, poller, dashboard).

    A service that may fail to start without stopping the gateway (the dashboard
    when its port is taken) has a `running` attribute; reload starts it again.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def is_running(svc: Service) -> bool:
    return bool(getattr(svc, "running", True))


def _dashboard(gw: Gateway) -> Service | None:
    from gateway.web.server import factory

    return factory(gw)


def _commlog_purge(gw: Gateway) -> Service | None:
    from gateway.commlog_purge import factory

    return factory(gw)


def _submission(gw: Gateway) -> Service | None:
    from gateway.outbound.service import submission_service

    return submission_service(gw)


def _sender(gw: Gateway) -> Service | None:
    from gateway.outbound.service import sender_service

    return sender_service(gw)


def _poller(gw: Gateway) -> Service | None:
    from gateway.inbound.poller.scheduler import factory

    return factory(gw)


def _handoff(gw: Gateway) -> Service | None:
    if not gw.config.helpdesk.enabled:
        return None
    from gateway.helpdesk.worker import factory

    return factory(gw)


def _retrain(gw: Gateway) -> Service | None:
    from gateway.classify.service import factory

    return factory(gw)


# Factories of the optional services: (app) → Service | None. Each door adds one.
SERVICE_FACTORIES: list[Callable[[Gateway], Service | None]] = [_dashboard, _commlog_purge,
                                                                 _sender, _submission, _poller,
                                                                 _handoff, _retrain]


class Gateway:
    """Everything one deskgate process holds: config, runtime, store, pipeline."""

    def __init__(self, config: Config, *, engine: Engine | None = None,
                 stages: Stages | None = None) -> None:
        """`stages` replaces the production stage table (tests pass the stages they want)."""
        load_plugins()
        self.config = config
        self.runtime: Runtime = build_runtime(config)
        self.engine = engine or make_engine(config.database_url,
                                            fast_path=config.store.fast_path)
        self.writer = BatchWriter(self.engine, batch_max=config.gateway.batch_max)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pipeline")
        # The one place the inbound stage table is built (and checked: build_stages
        # refuses a table with a stage missing or repeated).
        self.pipeline = Pipeline(lambda: self.runtime, self.writer,
                                 stages if stages is not None else build_stages(),
                                 self.executor)
        self.services: list[Service] = []
        self.servers: list[asyncio.AbstractServer] = []
        # Session counters of the listeners (lmtp, submission), for /healthz.
        self.limits: dict[str, SessionLimit] = {}
        self.inflight = 0
        self._idle: asyncio.Event | None = None
        self.reload_hooks: list[Callable[[Config], Awaitable[None] | None]] = []
        # After a reload asked for from inside (the dashboard's admin pages): the
        # pre-forked LMTP workers reload too, as on SIGHUP. `serve` sets it.
        self.reload_others: Callable[[], None] = lambda: None
        self.with_services = False     # the main process runs the services, LMTP workers not

    # ---------------------------------------------------------------- setup

    def prepare_store(self) -> None:
        """Migrate the schema (when behind) and mirror queues/addresses from the config."""
        ensure_schema(self.engine)
        with self.engine.begin() as conn:
            repo.sync_config(conn, self.config)

    # ---------------------------------------------------------------- inbound

    def rcpt_status(self, address: str) -> SmtpReply:
        cfg = self.runtime.config
        addr = cfg.address_by_email(address)
        if addr is None:
            if cfg.lmtp.unknown_recipient == "default-queue":
                return errors.RCPT_OK
            return errors.RCPT_UNKNOWN
        if addr.valid == "invalid-temporarily":
            return errors.RCPT_TEMP_INVALID
        if addr.valid == "invalid":
            return errors.RCPT_INVALID
        return errors.RCPT_OK

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str) -> Outcome:
        env = Envelope(mail_from=mail_from, recipients=tuple(r.lower() for r in rcpts),
                       raw=raw, source="LMTP", account=peer,
                       trusted=self.runtime.config.lmtp.trusted)
        t0 = time.perf_counter()
        self.inflight += 1
        try:
            outcome = await self.pipeline.deliver(env)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self._idle is not None:
                self._idle.set()
        metrics.PIPELINE_SECONDS.labels("lmtp").observe(time.perf_counter() - t0)
        result = "tempfail" if outcome.replies and outcome.replies[0].temporary \
            else outcome.action
        metrics.MESSAGES.labels("lmtp", "in", result).inc()
        return outcome

    def log_connection(self, comm: Comm) -> None:
        """Queue an LMTP connection's communication; it is written with the next batch."""
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

    # ---------------------------------------------------------------- reload

    async def reload(self) -> bool:
        """Re-read conf.d and policies; swap them in only when they validate."""
        try:
            cfg = await asyncio.get_running_loop().run_in_executor(
                None, load_config, self.config.conf_dir)
            rt = build_runtime(cfg)
        except ConfigErrors as exc:
            log.error("reload refused; keeping the running configuration", errors=str(exc))
            metrics.RELOADS.labels("refused").inc()
            self._log_reload_failure(str(exc))
            return False
        except Exception as exc:
            log.error("reload failed; keeping the running configuration", error=repr(exc))
            metrics.RELOADS.labels("refused").inc()
            self._log_reload_failure(repr(exc))
            return False
        await self.writer.run(lambda conn: repo.sync_config(conn, cfg), isolated=True)
        self.config, self.runtime = cfg, rt
        for hook in self.reload_hooks:
            res = hook(cfg)
            if asyncio.iscoroutine(res):
                await res
        if self.with_services:
            await self._switch_handoff(cfg)
        await self._restart_failed_services()
        metrics.RELOADS.labels("ok").inc()
        log.info("configuration reloaded", filters=len(cfg.filters), queues=len(cfg.queue))
        return True

    async def _switch_handoff(self, cfg: Config) -> None:
        """A [helpdesk] added or removed by a reload starts or stops the hand-off worker
        (rows written meanwhile wait in the outbox)."""
        running = next((s for s in self.services if s.name == "helpdesk-handoff"), None)
        if cfg.helpdesk.enabled and running is None:
            svc = _handoff(self)
            if svc is not None:
                await svc.start()
                self.services.append(svc)
        elif not cfg.helpdesk.enabled and running is not None:
            self.services.remove(running)
            await running.stop()

    def _log_reload_failure(self, text: str) -> None:
        comm = Comm("Incoming", "Config", "reload")
        obj = comm.obj("Connection")
        obj.log("Error", "Reload", text[:4000])
        obj.close("Failed")
        comm.close("Failed")
        with contextlib.suppress(Exception):
            self.writer.submit(lambda conn: write_comm(conn, comm), isolated=True)

    # ---------------------------------------------------------------- run

    def bind(self) -> list[socket.socket]:
        from gateway.inbound.lmtp import bind_listeners

        cfg = self.config
        return bind_listeners(cfg.lmtp.listen, root=cfg.root, socket_mode=cfg.lmtp.socket_mode,
                              socket_group=cfg.lmtp.socket_group)

    async def start(self, socks: Sequence[socket.socket] | None = None, *,
                    services: bool = True) -> list[asyncio.AbstractServer]:
        """Serve LMTP (binding now unless sockets are handed in) and start the services."""
        from gateway.inbound.lmtp import start_listeners

        cfg = self.config
        # Room for every LMTP and submission session and the gateway's own files.
        raise_fd_limit(cfg.lmtp.max_sessions + cfg.submission.max_sessions + 4 * FD_MARGIN)
        limit = SessionLimit("lmtp", "LMTP", "Incoming", cfg.lmtp.max_sessions,
                             self.log_connection)
        self.limits["lmtp"] = limit
        servers = await start_listeners(
            self, socks if socks is not None else self.bind(),
            max_message_size=cfg.lmtp.max_message_size, max_recipients=cfg.lmtp.max_recipients,
            hostname=cfg.gateway.hostname, timeout=cfg.lmtp.timeout,
            shared=cfg.lmtp.workers > 1, limit=limit)
        self.servers = list(servers)
        if not services:
            return servers
        self.with_services = True
        for factory in SERVICE_FACTORIES:
            svc = factory(self)
            if svc is not None:
                await svc.start()
                self.services.append(svc)
                metrics.SERVICE_UP.labels(svc.name).set(1 if is_running(svc) else 0)
        return servers

    def services_up(self) -> list[str]:
        return [s.name for s in self.services if is_running(s)]

    def services_down(self) -> list[str]:
        return [s.name for s in self.services if not is_running(s)]

    async def _restart_failed_services(self) -> None:
        """Reload: start again what could not start (a dashboard whose port was taken)."""
        for svc in self.services:
            if is_running(svc):
                continue
            try:
                await svc.start()
            except Exception as exc:
                log.error("service still cannot start", service=svc.name, error=repr(exc))
            up = is_running(svc)
            metrics.SERVICE_UP.labels(svc.name).set(1 if up else 0)
            if up:
                log.info("service started on reload", service=svc.name)

    async def stop(self, servers: Sequence[asyncio.AbstractServer]) -> None:
        for s in servers:
            s.close()
        if not await self.wait_idle(60):
            log.warning("messages still in flight after 60 s; stopping anyway (the MTA "
                        "retries what got no reply)", inflight=self.inflight)
        for svc in reversed(self.services):
            with contextlib.suppress(Exception):
                await svc.stop()
        for s in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 10)
        self.close()

    def close(self) -> None:
        self.writer.close()
        self.executor.shutdown(wait=True)
        self.engine.dispose()
        crypto = getattr(self.runtime, "crypto", None)
        if crypto is not None and hasattr(crypto, "close"):
            crypto.close()      # the gpg-agent of the GnuPG home


def _report_unlogged(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("LMTP connection not logged", error=repr(exc)[:300])


async def serve(config: Config, *, ready: Callable[[], Any] | None = None,
                socks: Sequence[socket.socket] | None = None,
                workers: Sequence[int] = ()) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. `workers` are pre-forked LMTP
    processes sharing `socks`; they get our signals and are waited for."""
    if _PIDLOCK["fd"] is None:      # serve() run without run_serve (tests)
        lock_pidfile(config)
    gw = Gateway(config)
    if socks is None:
        await asyncio.get_running_loop().run_in_executor(None, gw.prepare_store)
    servers = await gw.start(socks)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    gw.reload_others = lambda: _signal_workers(workers, signal.SIGHUP)

    async def reload() -> None:
        sdnotify.reloading()
        _signal_workers(workers, signal.SIGHUP)
        try:
            await gw.reload()
        finally:
            sdnotify.notify("READY=1", "STATUS=serving")

    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    loop.add_signal_handler(signal.SIGUSR1, _wake_sender)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # blocked by run_serve until now
    pidfile = pidfile_path(config)
    log.info("deskgate serving", lmtp=list(config.lmtp.listen), lmtp_workers=len(workers) + 1,
             services=gw.services_up(), not_running=gw.services_down(),
             database=_safe_url(config.database_url))
    sdnotify.notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")
    if ready:
        ready()
    await stop.wait()
    sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing messages in flight")
    log.info("stopping: no new connections, finishing messages in flight")
    _signal_workers(workers, signal.SIGTERM)
    await gw.stop(servers)
    await loop.run_in_executor(None, _reap, workers)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    _release_pidfile()


async def serve_worker(config: Config, socks: Sequence[socket.socket]) -> None:
    """A pre-forked LMTP worker: LMTP on the shared sockets, no other service."""
    gw = Gateway(config)
    servers = await gw.start(socks, services=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the main process decides
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gw.reload()))
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    # The outbound sender runs in the main process only: an auto-response queued
    # here wakes it with SIGUSR1 instead of waiting for its next poll.
    from gateway.outbound.sender import add_waker

    main_pid = os.getppid()
    add_waker(lambda _delay: _poke_main(main_pid))
    if config.helpdesk.enabled:      # so is the hand-off worker
        from gateway.helpdesk.worker import add_waker as add_handoff_waker

        add_handoff_waker(lambda: _poke_main(main_pid))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    await stop.wait()
    await gw.stop(servers)


def _poke_main(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGUSR1)


def _wake_sender() -> None:
    """SIGUSR1: something was queued (by an LMTP worker, or an admin asks): look now."""
    from gateway.helpdesk.worker import notify_queued as handoff_queued
    from gateway.outbound.sender import notify_queued

    notify_queued()
    handoff_queued()


# Held back from fork until the event loops have their handlers (see run_serve).
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


def _die_with(parent: int) -> None:
    """A worker gets SIGTERM when the main process dies, however it dies (SIGKILL,
    OOM killer): no orphaned worker keeps accepting LMTP on the shared socket.
    SIGTERM is blocked until serve_worker handles it, so it stops gracefully."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):      # not Linux: the main process still reaps us
        return
    if os.getppid() != parent:             # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _signal_workers(workers: Sequence[int], sig: int) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(workers: Sequence[int]) -> None:
    for pid in workers:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run_serve(config: Config) -> None:
    """`deskgate serve`: lock the pid file, migrate, bind, fork [lmtp] workers - 1
    helpers, serve. Raises errors.InUse when another gateway runs on this configuration."""
    lock_pidfile(config)
    gw = Gateway(config)
    try:
        gw.prepare_store()
        socks = gw.bind()
    finally:
        gw.close()
    # A SIGTERM between the first fork and the handlers of serve() would kill this
    # process with the default action and leave the workers serving as orphans:
    # block the signals now; serve() and serve_worker() unblock them once handled.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: list[int] = []
    for _ in range(config.lmtp.workers - 1):
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:               # the worker: serve, then leave without running atexit
            code = 0
            # Only the main process holds the pid file lock (closing our copy keeps
            # it): a new serve may start as soon as the main one is gone.
            _release_pidfile()
            try:
                _die_with(parent)
                _run(serve_worker(config, socks))
            except BaseException:
                log.exception("LMTP worker failed")
                code = 1
            finally:
                os._exit(code)
        workers.append(pid)
    try:
        _run(serve(config, socks=socks, workers=workers))
    except BaseException:
        _signal_workers(workers, signal.SIGTERM)   # workers never outlive a failed main
        _reap(workers)
        raise


def pidfile_path(config: Config) -> Path:
    return config.state_dir / "run" / "deskgate.pid"


# The open, flock'ed pid file of this process (inherited by pre-forked workers).
_PIDLOCK: dict[str, int | None] = {"fd": None}


def lock_pidfile(config: Config) -> None:
    """Take an exclusive flock on the pid file before anything is bound, and write our pid.

    A second `deskgate serve` on the same configuration fails here, before it can
    touch the first one's sockets. The lock goes with the process (however it dies).
    """
    path = pidfile_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        holder = _read_pid(path)
        raise errors.InUse(f"{path} is locked by a running deskgate serve "
                    f"(pid {holder or 'unknown'}); stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _PIDLOCK["fd"] = fd


def _release_pidfile() -> None:
    fd = _PIDLOCK["fd"]
    if fd is not None:
        _PIDLOCK["fd"] = None
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
