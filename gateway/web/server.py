"""The dashboard: aiohttp on the gateway's own loop, server-rendered Jinja2 pages.

Read-only but for the admin pages (gateway/web/admin.py), which need a user of
role "admin". Every database read runs on a small thread pool of its own, never on
the event loop. This module is the server: the application, its middlewares (host
check, login, security headers), page rendering and the service's start and stop.
The pages are in mailflow.py (communication log, tickets, outbound queue,
hand-offs), monitoring.py (/metrics, /healthz), inventory.py and admin.py.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
import structlog
from aiohttp import web
from sqlalchemy import Connection

from gateway import commlog_views as views
from gateway.config import split_listen
from gateway.portowner import in_use_by
from gateway.web import mailflow, monitoring
from gateway.web.auth import (
    Authenticator,
    LoginThrottle,
    client_address,
    client_key,
    csrf_token,
    has_credentials,
    host_allowed,
    role_of,
)
from gateway.web.monitoring import handoff_gauges, outbound_gauges
from gateway.web.requestkeys import CLIENT, ROLE, USER, VERSION

if TYPE_CHECKING:
    from gateway.interfaces import Host

# The gauges are imported from here by existing callers; they live in monitoring.py.
__all__ = ["Dashboard", "factory", "handoff_gauges", "outbound_gauges"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

TEMPLATES = Path(__file__).parent / "templates"
# Password hashes (scrypt, ~0.1 s each) run on a pool of their own, at most this
# many at a time with this many more waiting; beyond that a login gets 503, so a
# flood of wrong passwords never starves the pages and /healthz.
HASH_THREADS = 2
HASH_WAITING = 32


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    value = views.utc(value)
    assert value is not None
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(views.utc(end) - views.utc(start)).total_seconds():.3f} s"  # type: ignore[operator]


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["t"] = _fmt_time
    # One path segment of a link (a helpdesk's ticket number may hold ?, # or /).
    env.filters["seg"] = lambda value: quote(str(value), safe=":")
    env.globals["duration"] = _fmt_duration
    return env


def _security_headers(headers: Any) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    # default-src covers neither form targets, <base> nor framing: said separately.
    headers.setdefault("Content-Security-Policy",
                       "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Dashboard:
    """The `dashboard` service of `deskgate serve`."""

    name = "dashboard"

    def __init__(self, gw: Host) -> None:
        self.gw = gw
        self.listen = gw.config.dashboard.listen
        self.env = make_env()
        self.auth = Authenticator()
        self.throttle = LoginThrottle()     # failed logins per client address
        self.csrf_key = secrets.token_bytes(32)     # new each start: old forms stop working
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dashboard")
        self.hash_pool = ThreadPoolExecutor(max_workers=HASH_THREADS,
                                            thread_name_prefix="dashboard-hash")
        self.hashing = 0          # basic-auth checks running or waiting for hash_pool
        # one admin change at a time (configuration saves, key imports): validate or
        # import, write, reload
        self.save_lock = asyncio.Lock()
        self.runner: web.AppRunner | None = None
        self.started_once = False
        self.bound: tuple[str, int] | None = None
        self.app = self.build_app()

    # ------------------------------------------------------------ plumbing

    def build_app(self) -> web.Application:
        # Headers outermost: refusals (401, 421) and errors (400, 404) carry them too.
        # The body limit fits the largest form: the filter dry run's message of up to
        # MAX_MESSAGE bytes, which URL-encoding makes up to three times larger (aiohttp's
        # default of 1 MiB answered a bare 413 from ~350 KB on). Bodies are read only
        # after the host and login checks.
        from gateway.web.admin_filters import MAX_MESSAGE

        app = web.Application(middlewares=[self._headers_mw, self._host_mw, self._auth_mw],
                              client_max_size=3 * MAX_MESSAGE + 64 * 1024)
        mailflow.add_routes(self, app)
        monitoring.add_routes(self, app)
        from gateway.web import admin, inventory

        inventory.add_routes(self, app)
        admin.add_routes(self, app)
        return app

    async def db(self, fn: Callable[[Connection], T]) -> T:
        """Run a read on the dashboard's threads with a connection of its own."""
        def job() -> T:
            with self.gw.engine.connect() as conn:
                return fn(conn)
        return await asyncio.get_running_loop().run_in_executor(self.pool, job)

    @web.middleware
    async def _host_mw(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        """A login-free dashboard answers only to loopback names (DNS rebinding)."""
        if request.path == "/healthz" or host_allowed(self.gw.config.dashboard,
                                                      request.headers.get("Host")):
            return await handler(request)
        return web.Response(status=421, text="this dashboard answers only to a loopback host "
                            "name or one of [dashboard] allowed_hosts\n")

    async def _check_basic(self, name: str, password: str) -> bool | None:
        """Verify on the hash pool; None when too many checks are already waiting."""
        if self.hashing >= HASH_THREADS + HASH_WAITING:
            return None
        self.hashing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.hash_pool, self.auth.check_basic, self.gw.config.dashboard, name,
                password)
        finally:
            self.hashing -= 1

    @web.middleware
    async def _auth_mw(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        d = self.gw.config.dashboard
        request[CLIENT] = client_address(request.remote, request.headers.items(),
                                         d.trusted_proxies)
        if request.path == "/healthz":
            return await handler(request)
        request[USER], request[ROLE] = "", "viewer"
        if not has_credentials(d):
            return await handler(request)
        authorization = request.headers.get("Authorization", "")
        if not authorization and "token" not in request.query:
            return self._login_refused("authentication required\n")
        # Credentials were given: a failed check counts against the client's address.
        addr = client_key(request[CLIENT])
        wait = self.throttle.begin(addr)
        if wait:
            # 503 as for too many logins at once: the client is to retry later.
            return web.Response(status=503, text="too many failed logins from this "
                                f"address; try again in {wait} s\n",
                                headers={"Retry-After": str(wait)})
        ok: bool | None = None
        try:
            ok = self.auth.check_token(d, request.headers, request.query)
            if ok is None:
                pair = self.auth.basic_pair(request.headers)
                ok = pair is not None and await self._check_basic(pair[0], pair[1])
                if ok and pair is not None:
                    request[USER], request[ROLE] = pair[0], role_of(d, pair[0])
        finally:
            self.throttle.end(addr, ok=ok)
        if ok is None:
            return web.Response(status=503, text="too many logins at once; retry\n",
                                headers={"Retry-After": "1"})
        if not ok:
            basic = authorization.lower().startswith("basic ")
            log.info("dashboard login failed", client=request[CLIENT],
                     method="basic" if basic else "token")
            return self._login_refused("wrong user name or password\n" if basic
                                       else "wrong token\n")
        return await handler(request)

    @staticmethod
    def _login_refused(text: str) -> web.Response:
        return web.Response(status=401, text=text,
                            headers={"WWW-Authenticate": 'Basic realm="deskgate", '
                                     'charset="UTF-8"'})

    @web.middleware
    async def _headers_mw(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:      # 400, 404, 405, redirects: raised, not returned
            _security_headers(exc.headers)
            raise
        _security_headers(resp.headers)
        return resp

    def render(self, request: web.Request, template: str, status: int = 200,
               **ctx: Any) -> web.Response:
        token = request.query.get("token", "")

        def url(path: str, **params: Any) -> str:
            """A link that keeps ?token= when the visitor came with one."""
            p = {k: v for k, v in params.items() if v not in (None, "")}
            if token:
                p["token"] = token
            return path + ("?" + urlencode(p) if p else "")

        user = request.get(USER, "")
        body = self.env.get_template(template).render(
            url=url, token=token, hostname=self.gw.config.gateway.hostname,
            csrf=csrf_token(self.csrf_key, user), user=user, version=request.get(VERSION, ""),
            admin=request.get(ROLE) == "admin", **ctx)
        return web.Response(text=body, content_type="text/html", status=status)

    def not_found(self, request: web.Request, what: str) -> web.Response:
        return self.render(request, "error.html", status=404, title="Not found", message=what)

    # ------------------------------------------------------------ service

    @property
    def running(self) -> bool:
        """False when the listen address could not be bound (reload tries again)."""
        return self.runner is not None

    async def start(self) -> None:
        if self.runner is not None:
            return
        if self.started_once:           # a retry on reload: the listen address may be new
            self.listen = self.gw.config.dashboard.listen
            self.app = self.build_app()
        self.started_once = True
        host, port = split_listen(self.listen)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            # Mail flow matters more than the dashboard: log loudly and keep serving.
            log.error("dashboard cannot listen; continuing without it (reload retries)",
                      listen=self.listen, error=str(exc),
                      held_by=in_use_by(port) if exc.errno == errno.EADDRINUSE else "")
            await self.runner.cleanup()
            self.runner = None
            return
        server: Any = site._server
        sockets = [s.getsockname() for s in (server.sockets if server else [])]
        if sockets:
            self.bound = (str(sockets[0][0]), int(sockets[0][1]))
        log.info("dashboard listening", listen=self.listen)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.pool.shutdown(wait=False)
        self.hash_pool.shutdown(wait=False)


def factory(gw: Host) -> Dashboard | None:
    """SERVICE_FACTORIES entry: the dashboard unless [dashboard] listen is empty."""
    if not gw.config.dashboard.listen:
        return None
    return Dashboard(gw)
