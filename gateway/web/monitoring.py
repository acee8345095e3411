"""What monitoring reads from the dashboard: /healthz and /metrics (Prometheus),
and the gauges each scrape refreshes from the database.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from sqlalchemy import Connection, func, select

from gateway import commlog_views as views
from gateway import metrics
from gateway.store.db import ping

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from gateway.web.server import Dashboard

T = TypeVar("T")


def add_routes(dash: Dashboard, app: web.Application) -> None:
    pages = MonitoringPages(dash)
    app.add_routes([
        web.get("/metrics", pages.metrics),
        web.get("/healthz", pages.healthz),
    ])


class MonitoringPages:
    """/metrics and /healthz of one dashboard."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def metrics(self, request: web.Request) -> web.Response:
        body, ctype = await asyncio.get_running_loop().run_in_executor(
            self.dash.pool, metrics.render, self.dash.gw.engine, SCRAPE_HOOKS)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        gw = self.dash.gw
        db_ok = await asyncio.get_running_loop().run_in_executor(self.dash.pool, ping, gw.engine)
        servers = list(getattr(gw, "servers", []))
        listeners = [bool(s.is_serving()) for s in servers]
        # A listener that is up but would refuse the next connection (max_sessions
        # reached, descriptors exhausted) cannot accept either: name it and why.
        not_accepting = {name: why for name, lim in gw.limits.items()
                         if (why := lim.refuses()) is not None}
        sessions = {name: {"open": lim.active, "max": lim.max_sessions,
                           "refused": lim.refused_total}
                    for name, lim in gw.limits.items()}
        for srv, up in zip(servers, listeners, strict=True):
            if not up:
                socks = list(getattr(srv, "sockets", None) or [])
                where = str(socks[0].getsockname()) if socks else "?"
                not_accepting[f"lmtp {where}"] = "not serving"
        down = gw.services_down()
        remote = getattr(getattr(gw, "pipeline", None), "remote", None)
        # "gone": this process, or an LMTP worker (it reports to this one), commits in
        # its own writer (slower; nothing is lost)
        gone_in = [] if remote is None or remote.up else ["main"]
        if remote is not None:
            gone_in += gw.commit_lost_by_workers()
        commit_process = "off" if remote is None else "gone" if gone_in else "up"
        # A node without LMTP (`[lmtp] listen = []`: a poller or submission node)
        # needs no listener to be healthy; one with LMTP configured needs them all.
        wanted = bool(gw.config.lmtp.listen)
        ok = (db_ok and (bool(listeners) or not wanted) and all(listeners)
              and not not_accepting and not down)
        body = {"ok": ok, "database": db_ok, "listeners": len(listeners),
                "listeners_serving": sum(listeners), "not_accepting": not_accepting,
                "sessions": sessions, "services": gw.services_up(),
                "services_not_running": down, "commit_process": commit_process,
                "commit_process_gone_in": gone_in,
                "time": time.time()}
        return web.Response(text=json.dumps(body) + "\n", content_type="application/json",
                            status=200 if ok else 503)


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
