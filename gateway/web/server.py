"""The dashboard: aiohttp on the gateway's own loop, server-rendered Jinja2 pages.

Read-only but for the admin pages (gateway/web/admin.py), which need a user of
role "admin". Every database read runs on a small thread pool of its own, never on
the event loop. Pages: communication log (overview, list, detail), tickets (list,
detail), outbound queue; plus /metrics (Prometheus) and /healthz.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web
from sqlalchemy import Connection, func, inspect, select

from gateway import commlog_views as views
from gateway import metrics
from gateway.cli.tickets import list_tickets, ticket_detail
from gateway.config import parse_duration, split_listen
from gateway.portowner import in_use_by
from gateway.store.db import ping
from gateway.web.auth import Authenticator, csrf_token, host_allowed, role_of
from gateway.web.requestkeys import ROLE, USER, VERSION

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from gateway.interfaces import Host

log = structlog.get_logger(__name__)
T = TypeVar("T")

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZE = 50
# Numbers in URLs beyond these are refused with 400 (ids are 64-bit in the database).
MAX_ID = 2**63 - 1
MAX_PAGE = 10**6
MAX_PERIOD = 100 * 366 * 86400.0       # durations such as since=24h: a century at most
# Password hashes (scrypt, ~0.1 s each) run on a pool of their own, at most this
# many at a time with this many more waiting; beyond that a login gets 503, so a
# flood of wrong passwords never starves the pages and /healthz.
HASH_THREADS = 2
HASH_WAITING = 32
PERIODS = (("1h", "last hour"), ("24h", "last 24 hours"), ("7d", "last 7 days"),
           ("31d", "last 31 days"))


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
    env.globals["duration"] = _fmt_duration
    return env


def _security_headers(headers: Any) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy",
                       "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'")


def _id(request: web.Request) -> int:
    """The {id} of the URL; 400 when it cannot be a database id."""
    value = int(request.match_info["id"])
    if value > MAX_ID:
        raise web.HTTPBadRequest(text=f"no such id: {request.match_info['id']}\n")
    return value


def _query_value(q: Any, key: str) -> str | None:
    v = q.get(key, "")
    return v.strip() or None


class Dashboard:
    """The `dashboard` service of `deskgate serve`."""

    name = "dashboard"

    def __init__(self, gw: Host) -> None:
        self.gw = gw
        self.listen = gw.config.dashboard.listen
        self.env = make_env()
        self.auth = Authenticator()
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
        app.add_routes([
            web.get("/", self.index),
            web.get("/log", self.log_overview),
            web.get("/log/list", self.log_list),
            web.get(r"/log/{id:\d+}", self.log_detail),
            web.get("/tickets", self.tickets),
            web.get("/tickets/{number}", self.ticket),
            web.get("/outbound", self.outbound),
            web.get(r"/outbound/{id:\d+}", self.outbound_item),
            web.get("/handoff", self.handoff),
            web.get(r"/handoff/{id:\d{1,18}}", self.handoff_item),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
        ])
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
        if request.path == "/healthz":
            return await handler(request)
        d = self.gw.config.dashboard
        ok = self.auth.check_token(d, request.headers, request.query)
        request[USER], request[ROLE] = "", "viewer"
        if ok is None:
            pair = self.auth.basic_pair(request.headers)
            ok = pair is not None and await self._check_basic(pair[0], pair[1])
            if ok and pair is not None:
                request[USER], request[ROLE] = pair[0], role_of(d, pair[0])
            if ok is None:
                return web.Response(status=503, text="too many logins at once; retry\n",
                                    headers={"Retry-After": "1"})
        if not ok:
            return web.Response(status=401, text="authentication required\n",
                                headers={"WWW-Authenticate": 'Basic realm="deskgate", '
                                         'charset="UTF-8"'})
        return await handler(request)

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

    # ------------------------------------------------------------ pages

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self._keep_token(request, "/log"))

    def _keep_token(self, request: web.Request, path: str) -> str:
        t = request.query.get("token")
        return path + ("?" + urlencode({"token": t}) if t else "")

    async def log_overview(self, request: web.Request) -> web.Response:
        period_s = request.query.get("period", "24h")
        try:
            period = parse_duration(period_s)
        except ValueError:
            period_s, period = "24h", 86400.0
        if not 0 <= period <= MAX_PERIOD:
            raise web.HTTPBadRequest(text=f"period {period_s!r}: at most 100 years\n")

        def read(conn: Connection) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
            return views.overview(conn, period=period), views.status_counts(conn, period=period)

        data, counts = await self.db(read)
        since = (datetime.now(UTC) - timedelta(seconds=period)).strftime("%Y-%m-%dT%H:%M:%S")
        return self.render(request, "log_overview.html", title="Communication log",
                           data=data, counts=counts, period=period_s, periods=PERIODS,
                           since=since, statuses=views.STATUSES)

    def _filter_from(self, q: Any) -> tuple[views.LogFilter, dict[str, str], str | None]:
        params = {k: q.get(k, "").strip() for k in ("since", "until", "direction", "status",
                                                     "account", "priority", "search", "sort")}
        error = None

        def when(v: str) -> datetime | None:
            nonlocal error
            if not v:
                return None
            try:
                seconds = parse_duration(v)
            except ValueError:
                pass
            else:
                if not 0 <= seconds <= MAX_PERIOD:
                    raise web.HTTPBadRequest(text=f"{v!r}: a duration of at most 100 years\n")
                return datetime.now(UTC) - timedelta(seconds=seconds)
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                error = f"{v!r} is neither a time nor a duration such as 24h"
                return None
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)

        try:
            page = max(1, int(q.get("page", "1") or 1))
        except ValueError:
            page = 1
        if page > MAX_PAGE:
            raise web.HTTPBadRequest(text=f"page: at most {MAX_PAGE}\n")
        f = views.LogFilter(
            since=when(params["since"]), until=when(params["until"]),
            direction=params["direction"] or None, status=params["status"] or None,
            account=params["account"] or None, priority=params["priority"] or None,
            search=params["search"] or None, sort=params["sort"] or "-start",
            limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        try:
            f.validate()
        except ValueError as exc:
            error = str(exc)
            f = views.LogFilter(limit=PAGE_SIZE)
        params["page"] = str(page)
        return f, params, error

    async def log_list(self, request: web.Request) -> web.Response:
        f, params, error = self._filter_from(request.query)

        def read(conn: Connection) -> tuple[list[dict[str, Any]], int, list[tuple[str, str]]]:
            return (views.list_communications(conn, f), views.count_communications(conn, f),
                    views.known_accounts(conn))

        rows, total, accounts = await self.db(read)
        pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
        return self.render(request, "log_list.html", title="Communications", rows=rows,
                           total=total, params=params, page=int(params["page"]), pages=pages,
                           error=error, accounts=accounts, statuses=views.STATUSES,
                           directions=views.DIRECTIONS, priorities=views.PRIORITIES,
                           columns=views.SORT_COLUMNS[:-1], sort=f.sort)

    async def log_detail(self, request: web.Request) -> web.Response:
        comm_id = _id(request)
        priority = _query_value(request.query, "priority")
        if priority and priority not in views.PRIORITIES:
            priority = None
        data = await self.db(lambda c: views.get_communication(c, comm_id, priority=priority))
        if data is None:
            return self.not_found(request, f"There is no communication #{comm_id}.")
        return self.render(request, "log_detail.html", title=f"Communication #{comm_id}",
                           c=data, priority=priority or "", priorities=views.PRIORITIES)

    async def tickets(self, request: web.Request) -> web.Response:
        queue = _query_value(request.query, "queue")
        state = _query_value(request.query, "state")
        rows = await self.db(lambda c: list_tickets(c, queue=queue, state=state, limit=200))
        return self.render(request, "tickets.html", title="Tickets", rows=rows,
                           queue=queue or "", state=state or "",
                           queues=[q.name for q in self.gw.config.queue])

    async def ticket(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        url = self.gw.config.helpdesk.ticket_url
        data = await self.db(lambda c: ticket_detail(c, number, url))
        if data is None:
            return self.not_found(request, f"There is no ticket {number}.")
        if data["helpdesk"]:
            from gateway.helpdesk.outbox import attempt_note

            data["helpdesk"]["attempt"] = attempt_note(data["helpdesk"])
        return self.render(request, "ticket.html", title=f"Ticket {number}", t=data,
                           hook=self.gw.config.gateway.ticket_hook)

    async def outbound(self, request: web.Request) -> web.Response:
        data = await self.db(read_outbound)
        return self.render(request, "outbound.html", title="Outbound queue", data=data)

    async def outbound_item(self, request: web.Request) -> web.Response:
        oid = _id(request)
        data = await self.db(lambda c: read_outbound_item(c, oid))
        if data is None:
            return self.not_found(request, f"There is no outbound message #{oid}.")
        return self.render(request, "outbound_item.html", title=f"Outbound message #{oid}",
                           m=data)

    async def handoff(self, request: web.Request) -> web.Response:
        from gateway.helpdesk import outbox

        def read(conn: Connection) -> tuple[list[dict[str, Any]], outbox.Stats]:
            return outbox.list_handoffs(conn, limit=500), outbox.stats(conn)

        rows, st = await self.db(read)
        for r in rows:
            r["attempt"] = outbox.attempt_note(r)
        hd = self.gw.config.helpdesk
        return self.render(request, "handoff.html", title="Hand-offs to the helpdesk",
                           rows=rows, configured=hd.enabled, helpdesk=hd.type,
                           stats={"pending": st.pending, "failed": st.failed,
                                  "oldest": st.oldest_pending})

    async def handoff_item(self, request: web.Request) -> web.Response:
        from gateway.helpdesk import outbox

        hid = int(request.match_info["id"])
        data = await self.db(lambda c: outbox.show(c, hid))
        if data is None:
            return self.not_found(request, f"There is no hand-off #{hid}.")
        data["attempt"] = outbox.attempt_note(data)
        return self.render(request, "handoff_item.html", title=f"Hand-off #{hid}", h=data)

    async def metrics(self, request: web.Request) -> web.Response:
        body, ctype = await asyncio.get_running_loop().run_in_executor(
            self.pool, metrics.render, self.gw.engine, SCRAPE_HOOKS)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        db_ok = await asyncio.get_running_loop().run_in_executor(self.pool, ping,
                                                                 self.gw.engine)
        servers = list(getattr(self.gw, "servers", []))
        listeners = [bool(s.is_serving()) for s in servers]
        # A listener that is up but would refuse the next connection (max_sessions
        # reached, descriptors exhausted) cannot accept either: name it and why.
        not_accepting = {name: why for name, lim in self.gw.limits.items()
                         if (why := lim.refuses()) is not None}
        sessions = {name: {"open": lim.active, "max": lim.max_sessions,
                           "refused": lim.refused_total}
                    for name, lim in self.gw.limits.items()}
        for srv, up in zip(servers, listeners, strict=True):
            if not up:
                socks = list(getattr(srv, "sockets", None) or [])
                where = str(socks[0].getsockname()) if socks else "?"
                not_accepting[f"lmtp {where}"] = "not serving"
        down = self.gw.services_down()
        remote = getattr(getattr(self.gw, "pipeline", None), "remote", None)
        # "gone": this process, or an LMTP worker (it reports to this one), commits in
        # its own writer (slower; nothing is lost)
        gone_in = [] if remote is None or remote.up else ["main"]
        if remote is not None:
            gone_in += self.gw.commit_lost_by_workers()
        commit_process = "off" if remote is None else "gone" if gone_in else "up"
        # A node without LMTP (`[lmtp] listen = []`: a poller or submission node)
        # needs no listener to be healthy; one with LMTP configured needs them all.
        wanted = bool(self.gw.config.lmtp.listen)
        ok = (db_ok and (bool(listeners) or not wanted) and all(listeners)
              and not not_accepting and not down)
        body = {"ok": ok, "database": db_ok, "listeners": len(listeners),
                "listeners_serving": sum(listeners), "not_accepting": not_accepting,
                "sessions": sessions, "services": self.gw.services_up(),
                "services_not_running": down, "commit_process": commit_process,
                "commit_process_gone_in": gone_in,
                "time": time.time()}
        return web.Response(text=json.dumps(body) + "\n", content_type="application/json",
                            status=200 if ok else 503)

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


def read_outbound(conn: Connection) -> dict[str, Any]:
    """The waiting outbound queue and the 50 most recently finished messages."""
    try:
        from gateway.outbound import queue as outq
        from gateway.store.tables import OutboundMessage
    except ImportError:
        return {"available": False, "waiting": [], "done": []}
    if "outbound_message" not in set(inspect(conn).get_table_names()):
        return {"available": False, "waiting": [], "done": []}
    waiting = outq.list_queue(conn, include_done=False, limit=500)
    m = OutboundMessage
    done = [{"id": r.id, "queue": r.queue, "sender": r.sender, "status": r.status,
             "attempts": r.attempts, "updated": r.updated, "last_error": r.last_error}
            for r in conn.execute(select(m.id, m.queue, m.sender, m.status, m.attempts,
                                         m.updated, m.last_error)
                                  .where(m.status != "queued").order_by(m.id.desc())
                                  .limit(50)).all()]
    return {"available": True, "waiting": waiting, "done": done}


def read_outbound_item(conn: Connection, oid: int) -> dict[str, Any] | None:
    try:
        from gateway.outbound import queue as outq
    except ImportError:
        return None
    return outq.show(conn, oid)


def _read_for_gauges(engine: Any, name: str, gauges: Sequence[Gauge],
                     read: Callable[[Connection], T]) -> T | None:
    """read(conn) for a scrape hook; None when the database does not answer, with
    `gauges` set to NaN for this scrape and deskgate_gauge_refresh_errors_total{gauges=
    name} counting it."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except Exception:
        # A scrape must still answer (/healthz reports the database), but not with the
        # last values as if they were current: a backlog growing unseen would look calm.
        metrics.GAUGE_REFRESH_ERRORS.labels(name).inc()
        for gauge in gauges:
            gauge.set(math.nan)
        return None


def outbound_gauges(engine: Any) -> None:
    """deskgate_outbound_queue_depth / _oldest_seconds from the queued messages."""
    try:
        from gateway.store.tables import OutboundMessage as m
    except ImportError:
        return
    row = _read_for_gauges(
        engine, "outbound_queue",
        (metrics.OUTBOUND_QUEUE_DEPTH, metrics.OUTBOUND_QUEUE_OLDEST_SECONDS),
        lambda conn: conn.execute(select(func.count(), func.min(m.created))
                                  .where(m.status == "queued")).one())
    if row is None:
        return
    n, created = row
    metrics.OUTBOUND_QUEUE_DEPTH.set(n or 0)
    oldest = views.utc(created)
    metrics.OUTBOUND_QUEUE_OLDEST_SECONDS.set(
        (datetime.now(UTC) - oldest).total_seconds() if oldest else 0)


def handoff_gauges(engine: Any) -> None:
    """deskgate_handoff_pending / _failed / _oldest_pending_seconds from the outbox."""
    from gateway.helpdesk.outbox import stats

    st = _read_for_gauges(
        engine, "handoff",
        (metrics.HANDOFF_PENDING, metrics.HANDOFF_FAILED, metrics.HANDOFF_OLDEST_SECONDS),
        stats)
    if st is None:
        return
    metrics.HANDOFF_PENDING.set(st.pending)
    metrics.HANDOFF_FAILED.set(st.failed)
    metrics.HANDOFF_OLDEST_SECONDS.set(
        (datetime.now(UTC) - st.oldest_pending).total_seconds() if st.oldest_pending else 0)


# Run before each /metrics scrape: the gauges read from the database.
SCRAPE_HOOKS: tuple[metrics.ScrapeHook, ...] = (outbound_gauges, handoff_gauges)


def factory(gw: Host) -> Dashboard | None:
    """SERVICE_FACTORIES entry: the dashboard unless [dashboard] listen is empty."""
    if not gw.config.dashboard.listen:
        return None
    return Dashboard(gw)
