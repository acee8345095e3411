"""The dashboard's admin pages: forms that change the configuration files.

Only a [[dashboard.user]] with role = "admin" reaches them, and not at all when
the dashboard has no credentials (a login-free dashboard could not say who
changed what). Every POST needs the form's CSRF token and a same-site browser.
A save edits the files (gateway.confedit), validates the whole new
configuration as `deskgate check` does, writes atomically, reloads and records
who changed what in the communication log; a save that does not validate
writes nothing and shows the errors next to the fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from gateway import confedit
from gateway.commlog import Comm, write_comm
from gateway.errors import ConfigError
from gateway.web.auth import csrf_ok, has_credentials
from gateway.web.inventory import same_site
from gateway.web.requestkeys import CLIENT, RESTART_NEEDED, ROLE, SESSION, USER, VERSION

if TYPE_CHECKING:
    from gateway.web.server import Dashboard

log = structlog.get_logger(__name__)

VALIDITIES = ("valid", "invalid", "invalid-temporarily")
ADDRESS_FIELDS = ("email", "display_name", "queue", "valid", "comment")
ADDRESS_DEFAULTS = {"display_name": "", "queue": "", "valid": "valid", "comment": ""}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StaleFile(ConfigError):
    """A file the save would write changed on disk after the form's edit read it."""


MAX_REASON = 2000               # characters of a refused reload's reason shown


def reload_outcome(gw: object) -> dict[str, object]:
    """The gateway's last reload: result, reason (of a refusal), restart_needed."""
    outcome = getattr(gw, "last_reload", None)
    return outcome if isinstance(outcome, dict) else {}


def refusal_status(errors: list[ConfigError]) -> int:
    """409 when a file changed meanwhile (another save, an editor), as the form-version
    check answers; 422 for a configuration that does not validate."""
    return 409 if any(isinstance(e, StaleFile) for e in errors) else 422


def add_routes(dash: Dashboard, app: web.Application) -> None:
    from gateway.web.admin_entries import ACCOUNT, QUEUE, EntryPage
    from gateway.web.admin_filters import FilterPage
    from gateway.web.admin_keys import KeysPage

    pages = AdminPages(dash)
    filters = FilterPage(pages)
    queues, accounts = EntryPage(pages, QUEUE), EntryPage(pages, ACCOUNT)
    keys = KeysPage(pages)
    app.add_routes([
        web.get("/admin/address", pages.guard(pages.address_form)),
        web.post("/admin/address", pages.guard(pages.address_save)),
        web.get("/admin/filter", pages.guard(filters.form)),
        web.post("/admin/filter", pages.guard(filters.post)),
        web.get("/admin/queue", pages.guard(queues.form)),
        web.post("/admin/queue", pages.guard(queues.post)),
        web.get("/admin/account", pages.guard(accounts.form)),
        web.post("/admin/account", pages.guard(accounts.post)),
        web.get("/admin/keys", pages.guard(keys.show)),
        web.post("/admin/keys", pages.guard(keys.post)),
    ])


def field_errors(errors: list[ConfigError], prefix: str, fields: tuple[str, ...],
                 extra: Callable[[ConfigError], str | None] = lambda e: None
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """Errors of the edited entry by form field (key `<prefix>.<field>`), the rest apart."""
    by_field: dict[str, list[str]] = {}
    other: list[str] = []
    for e in errors:
        name = extra(e)
        if name is None and e.key.startswith(prefix + "."):
            name = e.key[len(prefix) + 1:].split(".")[0].split("[")[0]
        if name in fields:
            by_field.setdefault(name, []).append(e.reason)
        else:
            other.append(str(e))
    for name, reasons in by_field.items():
        # A value that could not be converted is also reported as missing: say it once.
        if len(reasons) > 1:
            by_field[name] = [r for r in reasons if r != "required key is missing"]
    return by_field, other


class AdminPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.lock = dash.save_lock      # one save at a time: validate, write, reload

    def guard(self, handler: Handler) -> Handler:
        """Admins only; POSTs only with the CSRF token from a same-site page."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            d = self.dash.gw.config.dashboard
            if not has_credentials(d):
                return self.dash.render(
                    request, "error.html", status=403, title="Admin pages are off",
                    message="The admin pages need [[dashboard.user]] entries with role = "
                    "\"admin\"; a dashboard without credentials only reads.")
            if request.get(ROLE) != "admin":
                return self.dash.render(
                    request, "error.html", status=403, title="Not allowed",
                    message="Changing the configuration needs a dashboard user with "
                    "role = \"admin\".")
            request[VERSION] = await self.version()
            if request.method == "POST":
                form = await request.post()
                if not same_site(request) or not csrf_ok(
                        request.get(SESSION), str(form.get("csrf", ""))):
                    return web.Response(status=403, text="cross-site request refused\n")
                if "version" in form and str(form["version"]) != request[VERSION]:
                    return self.dash.render(
                        request, "error.html", status=409, title="Changed meanwhile",
                        message="The configuration changed since this form was shown "
                        "(another save or an editor). Nothing was written; open the form "
                        "again.")
            return await handler(request)
        return guarded

    async def version(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self.dash.pool, confedit.config_version, self.dash.gw.config)

    # ------------------------------------------------------------ saving

    async def save(self, request: web.Request, what: str, edit: confedit.Edit
                   ) -> list[ConfigError] | None:
        """Validate, write, reload, log. Errors (nothing written) or None when saved."""
        if not edit.changes:
            return None
        async with self.lock:
            return await self._save(request, what, edit)

    async def _save(self, request: web.Request, what: str, edit: confedit.Edit
                    ) -> list[ConfigError] | None:
        gw = self.dash.gw
        loop = asyncio.get_running_loop()
        stale = await loop.run_in_executor(self.dash.pool, edit.stale)
        if stale:
            return [StaleFile(str(p), "", "changed since this form was read (another save "
                                "or an editor); nothing was written: open the form again")
                    for p in stale]
        errors = await loop.run_in_executor(self.dash.pool, confedit.validate, gw.config, edit)
        if errors:
            return errors
        try:
            before = await loop.run_in_executor(self.dash.pool, confedit.apply, edit)
        except OSError as exc:
            return [ConfigError(str(exc.filename or gw.config.conf_dir), "",
                                f"cannot write: {exc.strerror}; nothing was changed")]
        if not await gw.reload():
            # Valid for `check` but the runtime refused it: put the files back.
            await loop.run_in_executor(self.dash.pool, confedit.undo, before)
            why = str(reload_outcome(gw).get("reason", "")) or "see the communication log"
            if len(why) > MAX_REASON:
                why = why[:MAX_REASON] + " …"
            return [ConfigError(str(gw.config.conf_dir), "", "the gateway refused to reload "
                                f"this configuration; nothing was changed: {why}")]
        # What `deskgate reload` prints too: changed settings the reload could not apply.
        restart = reload_outcome(gw).get("restart_needed", [])
        request[RESTART_NEEDED] = [str(k) for k in restart] if isinstance(restart, list) else []
        gw.reload_others()
        self.record(request[USER], what, edit, client=request.get(CLIENT, ""))
        return None

    def record(self, user: str, what: str, edit: confedit.Edit, client: str = "") -> None:
        """A communication-log entry: who changed what from where, old → new (secrets
        redacted)."""
        comm = Comm("Incoming", "Config", "dashboard")
        obj = comm.obj("Connection")
        obj.log("Notice", "User", user)
        if client:
            obj.log("Info", "Client", client)
        obj.log("Notice", "Action", what)
        for path in edit.files:
            obj.log("Info", "File", str(path))
        for line in edit.changes:
            obj.log("Info", "Change", line)
        obj.close("Successful")
        comm.close("Successful")
        log.info("configuration changed in the dashboard", user=user, action=what,
                 changes=len(edit.changes), client=client)
        with contextlib.suppress(Exception):
            self.dash.gw.writer.submit(lambda conn: write_comm(conn, comm), isolated=True)

    def saved(self, request: web.Request, title: str, edit: confedit.Edit,
              back: str) -> web.Response:
        root = self.dash.gw.config.root
        files = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                 for p in edit.files]
        return self.dash.render(request, "admin_saved.html", title=title,
                                changes=edit.changes, files=files, back=back,
                                restart_needed=request.get(RESTART_NEEDED, []))

    # ------------------------------------------------------------ addresses

    async def address_form(self, request: web.Request) -> web.Response:
        cfg = self.dash.gw.config
        email = request.query.get("email", "")
        values = {"email": "", "display_name": "", "queue": "", "valid": "valid", "comment": ""}
        if email:
            a = cfg.address_by_email(email)
            if a is None:
                return self.dash.not_found(request, f"There is no system address {email!r}.")
            values = {f: str(getattr(a, f)) for f in ADDRESS_FIELDS}
        return self._address_page(request, original=email, values=values)

    def _address_page(self, request: web.Request, *, original: str, values: dict[str, str],
                      errors: dict[str, list[str]] | None = None,
                      other: list[str] | None = None, status: int = 200) -> web.Response:
        cfg = self.dash.gw.config
        used_by = [q.name for q in cfg.queue if original and q.address == original.lower()]
        return self.dash.render(
            request, "admin_address.html", status=status,
            title=f"System address {original}" if original else "New system address",
            original=original, v=values, errors=errors or {}, other=other or [],
            queues=[q.name for q in cfg.queue], validities=VALIDITIES, used_by=used_by)

    async def address_save(self, request: web.Request) -> web.Response:
        form = await request.post()
        cfg = self.dash.gw.config
        original = str(form.get("original", "")).strip().lower()
        values = {f: str(form.get(f, "")).strip() for f in ADDRESS_FIELDS}
        current = cfg.address_by_email(original) if original else None
        if original and current is None:
            return self.dash.not_found(request, f"There is no system address {original!r}.")
        if values["valid"] not in (*VALIDITIES, ""):
            # Not silently "valid": that would put an invalid address back into service.
            return self._address_page(
                request, original=original, values=values, status=422,
                errors={"valid": [f"{values['valid']!r} is not one of "
                                  + ", ".join(VALIDITIES)]})
        values["valid"] = values["valid"] or "valid"
        if not original and cfg.address_by_email(values["email"]) is not None:
            return self._address_page(
                request, original="", values=values, status=422,
                errors={"email": [f"{values['email']!r} is already a system address"]})
        source = Path(current.source) if current is not None else None
        edit = confedit.Edit()
        label = f"address {original or values['email']}"
        try:
            position = confedit.upsert(
                edit, section="address", label=label, source=source,
                owned=cfg.conf_dir / confedit.OWNED_CONF["address"],
                match=lambda e: str(e.get("email", "")).lower() == original,
                values=values, defaults=ADDRESS_DEFAULTS)
        except (LookupError, TypeError, ValueError) as exc:
            return self._address_page(request, original=original, values=values,
                                      other=[str(exc)], status=409)
        if current is None:
            edit.changes.insert(0, f"address {values['email']} added")
        path = next(iter(edit.files))
        index = confedit.merged_index(cfg, edit, "address", path, position)
        errors = await self.save(request, f"address {original or values['email']}", edit)
        if errors:
            email = values["email"].lower()

            def queue_uses(e: ConfigError) -> str | None:
                if re.fullmatch(r"queue\[\d+\]\.address", e.key) and repr(email) in e.reason:
                    return "valid"
                return None

            by_field, other = field_errors(errors, f"address[{index}]", ADDRESS_FIELDS,
                                           queue_uses)
            return self._address_page(request, original=original, values=values,
                                      errors=by_field, other=other,
                                      status=refusal_status(errors))
        return self.saved(request, f"System address {values['email']} saved", edit,
                          "/addresses")

