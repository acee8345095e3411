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
from gateway.config import DashboardConfig, split_listen
from gateway.portowner import in_use_by
from gateway.web import mailflow, monitoring
from gateway.web.auth import (
    SESSION_COOKIE,
    Authenticator,
    LoginThrottle,
    Session,
    Sessions,
    client_address,
    client_key,
    csrf_ok,
    forwarded_https,
    has_credentials,
    host_allowed,
    login_proof,
    role_of,
    session_current,
)
from gateway.web.monitoring import handoff_gauges, outbound_gauges
from gateway.web.requestkeys import CLIENT, ROLE, SESSION, USER, VERSION

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
        self.sessions = Sessions()          # login sessions: lost at a restart
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
        app.router.add_post("/logout", self.logout)
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
        session = self._session_of(request, d)
        if not has_credentials(d):
            if session is not None:
                request[SESSION] = session
            return await handler(request)
        authorization = request.headers.get("Authorization", "")
        if not authorization and "token" not in request.query:
            if session is None:
                return self._login_refused("authentication required\n")
            request[USER], request[SESSION] = session.user, session
            request[ROLE] = role_of(d, session.user) if session.user else "viewer"
            return await handler(request)
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
        if session is not None and session.user == request[USER]:
            request[SESSION] = session          # the same login as the cookie's
        if ("token" in request.query and request.method in ("GET", "HEAD")
                and request.path != "/metrics"):
            return self._exchange(request, d)
        return await handler(request)

    def _session_of(self, request: web.Request, d: DashboardConfig) -> Session | None:
        """The live session the request's cookie names, if its credential still holds."""
        sid = request.cookies.get(SESSION_COOKIE, "")
        session = self.sessions.get(sid) if sid else None
        if session is not None and not session_current(d, session):
            self.sessions.end(session.id)
            return None
        return session

    def _exchange(self, request: web.Request, d: DashboardConfig) -> web.Response:
        """A link's ?token=, once checked, becomes a session cookie: 303 to the same
        address without it, so the token stays out of history, later links and logs."""
        session = request.get(SESSION) or self.sessions.new(
            request[USER], login_proof(d, request[USER]))
        rest = [(k, v) for k, v in request.rel_url.query.items() if k != "token"]
        resp = web.Response(status=303, text="logged in; continue without the token\n",
                            headers={"Location": str(request.rel_url.with_query(rest))})
        self._set_cookie(request, resp, session)
        return resp

    def _set_cookie(self, request: web.Request, resp: web.StreamResponse,
                    session: Session) -> None:
        # No Max-Age: the browser forgets it when it closes. Lax, not Strict: a link to
        # the dashboard from a helpdesk or a mail still opens it logged in. Secure when
        # the browser uses https, here or at a trusted proxy.
        secure = request.secure or forwarded_https(
            request.remote, request.headers.items(), self.gw.config.dashboard.trusted_proxies)
        resp.set_cookie(SESSION_COOKIE, session.id, path="/", httponly=True, samesite="Lax",
                        secure=secure or None)

    async def logout(self, request: web.Request) -> web.Response:
        """End the request's session (its forms' token with it); POST with that token."""
        from gateway.web.inventory import same_site

        form = await request.post()
        session = request.get(SESSION)
        if (session is None or not same_site(request)
                or not csrf_ok(session, str(form.get("csrf", "")))):
            return web.Response(status=403, text="cross-site request refused\n")
        self.sessions.end(session.id)
        del request[SESSION]
        resp = self.render(request, "logged_out.html", title="Logged out", new_session=False)
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

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

    def render(self, request: web.Request, template: str, status: int = 200, *,
               new_session: bool = True, **ctx: Any) -> web.Response:
        """A page; a request without a session gets one (its cookie and CSRF token)."""
        def url(path: str, **params: Any) -> str:
            p = {k: v for k, v in params.items() if v not in (None, "")}
            return path + ("?" + urlencode(p) if p else "")

        d = self.gw.config.dashboard
        user = request.get(USER, "")
        session = request.get(SESSION)
        made = None
        if session is None and new_session:
            session = made = request[SESSION] = self.sessions.new(user, login_proof(d, user))
        body = self.env.get_template(template).render(
            url=url, hostname=self.gw.config.gateway.hostname,
            csrf=session.csrf if session else "", user=user,
            logout=session is not None and has_credentials(d),
            version=request.get(VERSION, ""), admin=request.get(ROLE) == "admin", **ctx)
        resp = web.Response(text=body, content_type="text/html", status=status)
        if made is not None:
            self._set_cookie(request, resp, made)
        return resp

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
