"""Dashboard pages of the inventory: addresses, queues, accounts, filters, account check.

The lists are the same functions as `deskgate ... list` (gateway/inventory.py),
searched and sorted on the server (the dashboard serves no JavaScript). The
account check is the one state-touching action: a POST, behind the dashboard's
authentication and refused without the form's CSRF token or when the browser
says it comes from another site.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy import Connection

from gateway import inventory
from gateway.web.auth import csrf_ok
from gateway.web.requestkeys import SESSION

if TYPE_CHECKING:
    from gateway.web.server import Dashboard

# (field, column title) per list, in display order.
ADDRESS_COLUMNS = (("email", "address"), ("display_name", "display name"), ("queue", "queue"),
                   ("valid", "validity"), ("comment", "comment"), ("source", "file"))
QUEUE_COLUMNS = (("name", "queue"), ("address", "system address"), ("follow_up", "follow-up"),
                 ("sign", "sign"), ("encrypt", "encrypt"), ("open_tickets", "open tickets"),
                 ("comment", "comment"))
ACCOUNT_COLUMNS = (("name", "account"), ("type", "type"), ("host", "host"), ("port", "port"),
                   ("login", "login"), ("folder", "folder"), ("trusted", "trusted"),
                   ("dispatch", "dispatch"), ("queue", "queue"), ("interval", "interval"),
                   ("valid", "valid"), ("last_poll", "last poll"),
                   ("last_result", "last result"), ("status", "status"),
                   ("comment", "comment"))
FILTER_COLUMNS = (("order", "#"), ("name", "filter"), ("source", "file"),
                  ("stop_after_match", "stop after match"), ("conditions", "conditions"),
                  ("settings", "settings"), ("comment", "comment"))
NUMERIC = frozenset({"port", "open_tickets", "order"})


def add_routes(dash: Dashboard, app: web.Application) -> None:
    pages = InventoryPages(dash)
    app.add_routes([
        web.get("/addresses", pages.addresses),
        web.get("/queues", pages.queues),
        web.get("/accounts", pages.accounts),
        web.get("/filters", pages.filters),
        web.post("/accounts/check", pages.account_check),
    ])


def _lines(value: object) -> list[str]:
    """A cell as lines: lists one item a line, tables one `key = value` a line."""
    if isinstance(value, dict):
        return [f"{k} = {inventory.display(v)}" for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [inventory.display(v) for v in value]
    return [inventory.display(value)]


def _css(field: str, value: object) -> str:
    if field == "status" and isinstance(value, str):
        return value.split()[0]
    if field == "last_result" and isinstance(value, str):
        return value
    if field == "valid":
        return "ok" if value in (True, "valid") else "Warning"
    return "num" if field in NUMERIC else ""


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]
          ) -> list[list[dict[str, Any]]]:
    return [[{"field": f, "lines": _lines(r.get(f)), "css": _css(f, r.get(f))}
             for f, _ in columns] for r in rows]


class InventoryPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def _rows(self, fn: Any, **kw: Any) -> list[dict[str, Any]]:
        cfg = self.dash.gw.config

        def read(conn: Connection) -> list[dict[str, Any]]:
            return list(fn(cfg, conn, **kw))

        return await self.dash.db(read)

    def _page(self, request: web.Request, *, title: str, path: str, rows: list[dict[str, Any]],
              columns: Sequence[tuple[str, str]], params: dict[str, str],
              **extra: Any) -> web.Response:
        fields = [f for f, _ in columns]
        sort = params.get("sort", "")
        if sort.lstrip("-") not in fields:
            sort = params["sort"] = ""
        rows = inventory.sort_rows(rows, sort, fields)
        return self.dash.render(request, "inventory.html", title=title, path=path,
                                columns=columns, cells=table(rows, columns), rows=rows,
                                params=params, sort=sort, **extra)

    @staticmethod
    def _params(request: web.Request, *keys: str) -> dict[str, str]:
        return {k: request.query.get(k, "").strip() for k in ("search", "sort", *keys)}

    async def addresses(self, request: web.Request) -> web.Response:
        p = self._params(request, "valid", "queue")
        if p["valid"] not in ("", "valid", "invalid", "invalid-temporarily"):
            p["valid"] = ""
        rows = await self._rows(inventory.list_addresses, text=p["search"],
                                valid=p["valid"] or None, queue=p["queue"] or None)
        return self._page(request, title="System addresses", path="/addresses", rows=rows,
                          columns=ADDRESS_COLUMNS, params=p, kind="addresses",
                          noun=("address", "addresses"),
                          queues=[q.name for q in self.dash.gw.config.queue])

    async def queues(self, request: web.Request) -> web.Response:
        p = self._params(request)
        rows = await self._rows(inventory.list_queues, text=p["search"])
        return self._page(request, title="Queues", path="/queues", rows=rows,
                          columns=QUEUE_COLUMNS, params=p, kind="queues",
                          noun=("queue", "queues"))

    async def accounts(self, request: web.Request) -> web.Response:
        p = self._params(request)
        rows = await self._rows(inventory.list_accounts, text=p["search"])
        return self._page(request, title="Mail accounts", path="/accounts", rows=rows,
                          columns=ACCOUNT_COLUMNS, params=p, kind="accounts",
                          noun=("account", "accounts"))

    async def filters(self, request: web.Request) -> web.Response:
        p = self._params(request)
        rows = inventory.list_filters(self.dash.gw.config, text=p["search"])
        return self._page(request, title="Postmaster filters", path="/filters", rows=rows,
                          columns=FILTER_COLUMNS, params=p, kind="filters",
                          noun=("filter", "filters"))

    async def account_check(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not same_site(request) or not csrf_ok(request.get(SESSION),
                                                 str(form.get("csrf", ""))):
            return web.Response(status=403, text="cross-site request refused\n")
        name = str(form.get("account", ""))
        cfg = self.dash.gw.config
        account = cfg.account_by_name(name)
        if account is None:
            return self.dash.not_found(request, f"There is no mail account {name!r}.")
        from gateway.inbound.poller.check import check_account

        result = await asyncio.get_running_loop().run_in_executor(
            self.dash.pool, lambda: check_account(account, cfg, engine=self.dash.gw.engine))
        data = result.as_dict()
        return self.dash.render(request, "account_check.html",
                                title=f"Check of account {name}", r=data)


def same_site(request: web.Request) -> bool:
    """False when the browser says the POST comes from another site.

    Browsers send Sec-Fetch-Site (which no page can forge); under the dashboard's
    `Referrer-Policy: no-referrer` Chrome sends `Origin: null` even for our own
    forms, so a null Origin counts only together with Sec-Fetch-Site. Clients
    without either header (curl with the token) are not browsers and may post.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and fetch_site is not None):
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host
