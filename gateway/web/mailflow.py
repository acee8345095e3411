"""Dashboard pages that follow mail through the gateway: the communication log
(overview, list, detail), tickets (list, detail), the outbound queue and the
hand-offs to the helpdesk. All read-only; every read runs on the dashboard's
database threads (Dashboard.db).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import Connection, func, inspect, select

from gateway import commlog_views as views
from gateway.config import parse_duration
from gateway.web import logdetail, ticketdetail

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.web.server import Dashboard

PAGE_SIZE = 50
# The ticket list pages through every ticket; the outbound and hand-off pages show at
# most this many waiting rows (and count them all).
TICKET_PAGE = 100
OUTBOUND_SHOWN = 500
HANDOFF_SHOWN = 500
# Objects of one communication per page (a poll run has one per fetched message).
OBJECTS_PAGE = 100
# Articles of one ticket per page (a mail loop can leave tens of thousands).
ARTICLES_PAGE = 100
# Numbers in URLs beyond these are refused with 400 (ids are 64-bit in the database).
MAX_ID = 2**63 - 1
MAX_PAGE = 10**6
MAX_PERIOD = 100 * 366 * 86400.0       # durations such as since=24h: a century at most
PERIODS = (("1h", "last hour"), ("24h", "last 24 hours"), ("7d", "last 7 days"),
           ("31d", "last 31 days"))


def add_routes(dash: Dashboard, app: web.Application) -> None:
    pages = MailFlowPages(dash)
    app.add_routes([
        web.get("/", pages.index),
        web.get("/log", pages.log_overview),
        web.get("/log/list", pages.log_list),
        web.get(r"/log/{id:\d+}", pages.log_detail),
        web.get("/tickets", pages.tickets),
        web.get("/tickets/{number}", pages.ticket),
        web.get("/outbound", pages.outbound),
        web.get(r"/outbound/{id:\d+}", pages.outbound_item),
        web.get("/handoff", pages.handoff),
        web.get(r"/handoff/{id:\d{1,18}}", pages.handoff_item),
    ])


def _id(request: web.Request) -> int:
    """The {id} of the URL; 400 when it cannot be a database id."""
    value = int(request.match_info["id"])
    if value > MAX_ID:
        raise web.HTTPBadRequest(text=f"no such id: {request.match_info['id']}\n")
    return value


def _page_number(q: Any) -> int:
    """The ?page= of a paged list: 1 when missing or empty; 400 for anything but a whole
    number from 1 to MAX_PAGE (a negative or mistyped page is a broken link, not page 1)."""
    raw = q.get("page", "").strip()
    if not raw:
        return 1
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise web.HTTPBadRequest(text=f"page: a whole number from 1 to {MAX_PAGE}\n")
    return int(raw)


def _query_value(q: Any, key: str) -> str | None:
    v = q.get(key, "")
    return v.strip() or None


class MailFlowPages:
    """The communication log, ticket, outbound and hand-off pages of one dashboard."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/log")

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

        data, counts = await self.dash.db(read)
        since = (datetime.now(UTC) - timedelta(seconds=period)).strftime("%Y-%m-%dT%H:%M:%S")
        return self.dash.render(request, "log_overview.html", title="Communication log",
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

        page = _page_number(q)
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

        rows, total, accounts = await self.dash.db(read)
        pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
        return self.dash.render(request, "log_list.html", title="Communications", rows=rows,
                                total=total, params=params, page=int(params["page"]),
                                pages=pages, error=error, accounts=accounts,
                                statuses=views.STATUSES, directions=views.DIRECTIONS,
                                priorities=views.PRIORITIES,
                                columns=views.SORT_COLUMNS[:-1], sort=f.sort)

    async def log_detail(self, request: web.Request) -> web.Response:
        comm_id = _id(request)
        priority = _query_value(request.query, "priority")
        if priority and priority not in views.PRIORITIES:
            priority = None
        page = _page_number(request.query)
        size = OBJECTS_PAGE
        data = await self.dash.db(lambda c: logdetail.read_page(
            c, comm_id, priority=priority, limit=size, offset=(page - 1) * size))
        if data is None:
            return self.dash.not_found(request, f"There is no communication #{comm_id}.")
        n = data["object_count"]
        return self.dash.render(request, "log_detail.html", title=f"Communication #{comm_id}",
                                c=data, priority=priority or "", priorities=views.PRIORITIES,
                                page=page, pages=max(1, (n + size - 1) // size),
                                first=min(n, (page - 1) * size + 1),
                                last=(page - 1) * size + len(data["objects"]))

    async def tickets(self, request: web.Request) -> web.Response:
        queue = _query_value(request.query, "queue")
        state = _query_value(request.query, "state")
        page = _page_number(request.query)
        size = TICKET_PAGE
        config = self.dash.gw.config
        rows, total = await self.dash.db(lambda c: read_tickets(
            c, config, queue=queue, state=state, limit=size, offset=(page - 1) * size))
        return self.dash.render(request, "tickets.html", title="Tickets", rows=rows,
                                queue=queue or "", state=state or "", total=total,
                                page=page, pages=max(1, (total + size - 1) // size),
                                queues=[q.name for q in self.dash.gw.config.queue])

    async def ticket(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        url = self.dash.gw.config.helpdesk.ticket_url
        page = _page_number(request.query)
        size = ARTICLES_PAGE
        data = await self.dash.db(lambda c: ticketdetail.read_page(
            c, number, url, limit=size, offset=(page - 1) * size))
        if data is None:
            return self.dash.not_found(request, f"There is no ticket {number}.")
        if data["helpdesk"]:
            from gateway.helpdesk.outbox import attempt_note

            data["helpdesk"]["attempt"] = attempt_note(data["helpdesk"])
        n = data["article_count"]
        return self.dash.render(request, "ticket.html", title=f"Ticket {number}", t=data,
                                hook=self.dash.gw.config.gateway.ticket_hook,
                                here="/tickets/" + quote(number, safe=":"), page=page,
                                pages=max(1, (n + size - 1) // size),
                                first=min(n, (page - 1) * size + 1),
                                last=(page - 1) * size + len(data["articles"]))

    async def outbound(self, request: web.Request) -> web.Response:
        data = await self.dash.db(read_outbound)
        return self.dash.render(request, "outbound.html", title="Outbound queue", data=data)

    async def outbound_item(self, request: web.Request) -> web.Response:
        oid = _id(request)
        data = await self.dash.db(lambda c: read_outbound_item(c, oid))
        if data is None:
            return self.dash.not_found(request, f"There is no outbound message #{oid}.")
        return self.dash.render(request, "outbound_item.html",
                                title=f"Outbound message #{oid}", m=data)

    async def handoff(self, request: web.Request) -> web.Response:
        from gateway.helpdesk import outbox

        def read(conn: Connection) -> tuple[list[dict[str, Any]], outbox.Stats]:
            return outbox.list_handoffs(conn, limit=HANDOFF_SHOWN), outbox.stats(conn)

        rows, st = await self.dash.db(read)
        for r in rows:
            r["attempt"] = outbox.attempt_note(r)
        hd = self.dash.gw.config.helpdesk
        return self.dash.render(request, "handoff.html", title="Hand-offs to the helpdesk",
                                rows=rows, total=st.pending + st.failed,
                                configured=hd.enabled, helpdesk=hd.type,
                                stats={"pending": st.pending, "failed": st.failed,
                                       "oldest": st.oldest_pending})

    async def handoff_item(self, request: web.Request) -> web.Response:
        from gateway.helpdesk import outbox

        hid = int(request.match_info["id"])
        data = await self.dash.db(lambda c: outbox.show(c, hid))
        if data is None:
            return self.dash.not_found(request, f"There is no hand-off #{hid}.")
        data["attempt"] = outbox.attempt_note(data)
        return self.dash.render(request, "handoff_item.html", title=f"Hand-off #{hid}", h=data)


def read_tickets(conn: Connection, config: Config, *, queue: str | None, state: str | None,
                 limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """One page of `tickets list` (newest first) and how many tickets match in all; the
    queue in any case, as `tickets list --queue` matches it."""
    from gateway.cli.tickets import queue_condition, queue_spellings, ticket_summary
    from gateway.store.tables import Ticket

    where = [c for c in (queue_condition(queue, queue_spellings(config)) if queue else None,
                         Ticket.state == state if state else None) if c is not None]
    rows = conn.execute(select(Ticket).where(*where).order_by(Ticket.id.desc())
                        .limit(limit).offset(offset)).all()
    total = conn.execute(select(func.count()).select_from(Ticket).where(*where)).scalar_one()
    return [ticket_summary(t) for t in rows], int(total)


def read_outbound(conn: Connection) -> dict[str, Any]:
    """The oldest waiting outbound messages (and how many wait in all) and the 50 most
    recently finished ones."""
    try:
        from gateway.outbound import queue as outq
        from gateway.store.tables import OutboundMessage
    except ImportError:
        return {"available": False, "waiting": [], "total": 0, "done": []}
    if "outbound_message" not in set(inspect(conn).get_table_names()):
        return {"available": False, "waiting": [], "total": 0, "done": []}
    waiting = outq.list_queue(conn, include_done=False, limit=OUTBOUND_SHOWN)
    m = OutboundMessage
    total = conn.execute(select(func.count()).select_from(m)
                         .where(m.status == "queued")).scalar_one()
    done = [{"id": r.id, "queue": r.queue, "sender": r.sender, "status": r.status,
             "attempts": r.attempts, "updated": r.updated, "last_error": r.last_error}
            for r in conn.execute(select(m.id, m.queue, m.sender, m.status, m.attempts,
                                         m.updated, m.last_error)
                                  .where(m.status != "queued").order_by(m.id.desc())
                                  .limit(50)).all()]
    return {"available": True, "waiting": waiting, "total": int(total), "done": done}


def read_outbound_item(conn: Connection, oid: int) -> dict[str, Any] | None:
    try:
        from gateway.outbound import queue as outq
    except ImportError:
        return None
    return outq.show(conn, oid)
