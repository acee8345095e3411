"""Composition root: builds the services from the config and wires them together.

Only this module wires stages and doors together: the inbound stage table, the
LMTP backend, the optional services (SERVICE_FACTORIES). A reload (SIGHUP)
builds a new Config and Runtime and swaps them in only when they validate.
Processes, signals and the pid file are gateway.supervise's; the services see
the Gateway only through gateway.interfaces.Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from sqlalchemy import Connection, Engine

from gateway import metrics
from gateway.commlog import Comm, write_comm
from gateway.config import Config, load_config
from gateway.errors import ConfigErrors, SmtpReply
from gateway.inbound.backend import InboundBackend
from gateway.inbound.pipeline import Pipeline, Stages
from gateway.inbound.stages import build_stages
from gateway.inline_secrets import log_inline_secret_warnings
from gateway.interfaces import Host, ReloadHook, Service, ServiceFactory, is_running
from gateway.limits import FD_MARGIN, SessionLimit, raise_fd_limit
from gateway.model import Envelope, Outcome
from gateway.outbound.pipeline import OutboundPipeline
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import ensure_schema, make_engine
from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)


def _dashboard(host: Host) -> Service | None:
    from gateway.web.server import factory

    return factory(host)


def _commlog_purge(host: Host) -> Service | None:
    from gateway.commlog_purge import factory

    return factory(host)


def _submission(host: Host) -> Service | None:
    from gateway.outbound.service import submission_service

    return submission_service(host)


def _sender(host: Host) -> Service | None:
    from gateway.outbound.service import sender_service

    return sender_service(host)


def _poller(host: Host) -> Service | None:
    from gateway.inbound.poller.scheduler import factory

    return factory(host)


def _handoff(host: Host) -> Service | None:
    if not host.config.helpdesk.enabled:
        return None
    from gateway.helpdesk.worker import factory

    return factory(host)


def _retrain(host: Host) -> Service | None:
    from gateway.classify.service import factory

    return factory(host)


# The optional services of the main process, in start order (stopped in reverse).
SERVICE_FACTORIES: tuple[ServiceFactory, ...] = (_dashboard, _commlog_purge, _sender,
                                                 _submission, _poller, _handoff, _retrain)


# Settings a running process cannot take from a reload (listening sockets, the store
# and logging are set up at start): a reload changing one applies the rest and names
# these in a warning (docs/operations.md, "Reload and stop").
_RESTART_KEYS: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("gateway.state_dir", lambda c: c.state_dir),
    ("gateway.database", lambda c: c.database_url),
    ("gateway.batch_max", lambda c: c.gateway.batch_max),
    ("gateway.log_level", lambda c: c.gateway.log_level),
    ("gateway.log_format", lambda c: c.gateway.log_format),
    ("gateway.hostname", lambda c: c.gateway.hostname),
    ("store.fast_path", lambda c: c.store.fast_path),
    ("store.commit_process", lambda c: c.store.commit_process),
    ("lmtp.listen", lambda c: c.lmtp.listen),
    ("lmtp.socket_mode", lambda c: c.lmtp.socket_mode),
    ("lmtp.socket_group", lambda c: c.lmtp.socket_group),
    ("lmtp.workers", lambda c: c.lmtp.workers),
    ("submission.listen", lambda c: c.submission.listen),
    ("submission.tls_listen", lambda c: c.submission.tls_listen),
    ("dashboard.listen", lambda c: c.dashboard.listen),
)


class Gateway:
    """Everything one deskgate process holds: config, runtime, store, pipeline,
    services. Implements gateway.interfaces.Host for the services."""

    def __init__(self, config: Config, *, engine: Engine | None = None,
                 stages: Stages | None = None) -> None:
        """`stages` replaces the production stage table (tests pass the stages they want)."""
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
        # Recipient checks, delivery and the connection log of the LMTP listener.
        self.inbound = InboundBackend(lambda: self.runtime, self.pipeline, self.writer)
        self.services: list[Service] = []
        self.servers: list[asyncio.AbstractServer] = []
        # Session counters of the listeners (lmtp, submission), for /healthz.
        self.limits: dict[str, SessionLimit] = {}
        self.reload_hooks: list[ReloadHook] = []
        self.outbound: OutboundPipeline | None = None
        # After a reload asked for from inside (the dashboard's admin pages): the
        # pre-forked LMTP workers reload too, as on SIGHUP. `serve` sets it.
        self.reload_others: Callable[[], None] = lambda: None
        # The pre-forked LMTP workers that commit in their own writer because their
        # connection to the commit process is gone ("lmtp worker N"), for /healthz.
        # `serve` sets it; the workers report over their control sockets.
        self.commit_lost_by_workers: Callable[[], list[str]] = lambda: []
        self.with_services = False     # the main process runs the services, LMTP workers not
        # The outcome of the last reload: result ("ok", "refused"), reason (why it was
        # refused) and restart_needed (changed keys a reload cannot apply).
        self.last_reload: dict[str, object] = {}

    # ---------------------------------------------------------------- setup

    def prepare_store(self) -> None:
        """Migrate the schema (when behind) and mirror queues/addresses from the config."""
        ensure_schema(self.engine)
        with self.engine.begin() as conn:
            repo.sync_config(conn, self.config)
            _read_retired(self.runtime, conn)

    # ---------------------------------------------------------------- inbound

    # The LMTP backend (gateway.inbound.backend) seen through the Gateway: the
    # listener is handed the Gateway, so wrapping gw.deliver (benchmarks, tests)
    # wraps what the listener calls.

    def rcpt_status(self, address: str) -> SmtpReply:
        return self.inbound.rcpt_status(address)

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str, *, client: str = "", queue_id: str = "") -> Outcome:
        return await self.inbound.deliver(mail_from, rcpts, raw, peer, client=client,
                                          queue_id=queue_id)

    def log_connection(self, comm: Comm) -> None:
        self.inbound.log_connection(comm)

    async def deliver_envelope(self, env: Envelope, comm: Comm | None = None) -> Outcome:
        return await self.inbound.run(env, comm)

    @property
    def inflight(self) -> int:
        """Messages in the inbound pipeline now (LMTP and poller)."""
        return self.inbound.inflight

    async def wait_idle(self, limit: float) -> bool:
        return await self.inbound.wait_idle(limit)

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
            self.last_reload = {"result": "refused", "reason": str(exc), "restart_needed": []}
            return False
        except Exception as exc:
            log.error("reload failed; keeping the running configuration", error=repr(exc))
            metrics.RELOADS.labels("refused").inc()
            self._log_reload_failure(repr(exc))
            self.last_reload = {"result": "refused", "reason": repr(exc), "restart_needed": []}
            return False
        def sync(conn: Connection) -> None:
            repo.sync_config(conn, cfg)
            _read_retired(rt, conn)

        await self.writer.run(sync, isolated=True)
        restart = self._restart_needed(self.config, cfg)
        self.config, self.runtime = cfg, rt
        self._apply_limits(cfg)
        # From here on the new configuration is in place (and the other processes
        # follow it): a service that cannot follow is logged, not a failed reload.
        for hook in list(self.reload_hooks):
            try:
                res = hook(cfg)
                if asyncio.iscoroutine(res):
                    await res
            except Exception as exc:
                log.error("reload: a service did not take the new configuration",
                          hook=getattr(hook, "__qualname__", repr(hook)), error=repr(exc))
        if self.with_services:
            try:
                await self._switch_handoff(cfg)
                await self._start_sender()
            except Exception as exc:
                log.error("reload: a service could not be switched", error=repr(exc))
        await self._restart_failed_services()
        metrics.RELOADS.labels("ok").inc()
        log.info("configuration reloaded", filters=len(cfg.filters), queues=len(cfg.queue))
        self.last_reload = {"result": "ok", "reason": "", "restart_needed": restart}
        if restart and self.with_services:      # once: not again by each LMTP worker
            log.warning("reload: changed settings keep their running value until a restart",
                        keys=restart)
        if self.with_services:
            # As `serve` does at start; the main process only (the LMTP workers reload
            # too), so each reload warns once.
            await asyncio.get_running_loop().run_in_executor(
                None, log_inline_secret_warnings, cfg.conf_dir)
        return True

    def _restart_needed(self, old: Config, new: Config) -> list[str]:
        """The changed keys a reload cannot apply (a process's sockets, store,
        logging and thread pools are set up once, at start)."""
        have = {s.name: is_running(s) for s in self.services}
        keys = [key for key, get in _RESTART_KEYS if get(old) != get(new)]
        skip = set()
        if have.get("dashboard") is False:  # one that could not bind retries the new address
            skip.add("dashboard.listen")
        if "submission" not in have:        # its greeting; LMTP's follows the reload
            skip.add("gateway.hostname")
        return [k for k in keys if k not in skip]

    def _apply_limits(self, cfg: Config) -> None:
        """The session limits of the listeners follow the reloaded configuration (the
        submission service's own hook takes its limits)."""
        if (lmtp := self.limits.get("lmtp")) is not None:
            lmtp.max_sessions = cfg.lmtp.max_sessions
        raise_fd_limit(cfg.lmtp.max_sessions + cfg.submission.max_sessions + 4 * FD_MARGIN)

    async def _switch_handoff(self, cfg: Config) -> None:
        """A [helpdesk] added or removed by a reload starts or stops the hand-off worker
        (rows written meanwhile wait in the outbox)."""
        running = next((s for s in self.services if s.name == "helpdesk-handoff"), None)
        if cfg.helpdesk.enabled and running is None:
            await self._add_service(_handoff)
        elif not cfg.helpdesk.enabled and running is not None:
            self.services.remove(running)
            hook = getattr(running, "reload", None)
            if hook in self.reload_hooks:
                self.reload_hooks.remove(hook)
            metrics.SERVICE_UP.labels(running.name).set(0)
            await running.stop()

    async def _start_sender(self) -> None:
        """A [relay] host added by a reload starts the outbound sender that had none
        at start (mail queued meanwhile goes out now)."""
        if any(s.name == "outbound-sender" for s in self.services):
            return
        if await self._add_service(_sender) is not None:
            log.info("outbound sender started: [relay] configured")

    async def _add_service(self, make: ServiceFactory) -> Service | None:
        """A service a reload adds: made, started and kept, with its up metric. One
        that cannot start is logged, stopped and left out with the reload hooks its
        factory registered (the next reload tries again) instead of failing the
        reload with the new configuration already in place."""
        hooks = len(self.reload_hooks)
        svc = make(self)
        if svc is None:
            return None
        try:
            await svc.start()
        except Exception as exc:
            log.error("service cannot start", service=svc.name, error=repr(exc))
            del self.reload_hooks[hooks:]
            with contextlib.suppress(Exception):
                await svc.stop()
            metrics.SERVICE_UP.labels(svc.name).set(0)
            return None
        self.services.append(svc)
        metrics.SERVICE_UP.labels(svc.name).set(1 if is_running(svc) else 0)
        return svc

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
            shared=cfg.lmtp.workers > 1, limit=limit, config=lambda: self.config)
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
        if self.pipeline.remote is not None:
            self.pipeline.remote.close()
        self.writer.close()
        self.executor.shutdown(wait=True)
        self.engine.dispose()
        if self.runtime.crypto is not None:
            self.runtime.crypto.close()     # the gpg-agent of the GnuPG home


def _read_retired(rt: Runtime, conn: Connection) -> None:
    """The runtime's retired addresses, read on a connection open anyway (a Runtime
    that tests built with a set of their own has nothing to read)."""
    if isinstance(rt.retired, repo.RetiredAddresses):
        rt.retired.read(conn)
