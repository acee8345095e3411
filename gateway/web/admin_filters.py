"""The admin page of the postmaster filters: edit, add, delete, and a dry run.

The form holds the conditions (match or any, header, value or email regex, not),
the headers to set, stop after match and a comment. A dry run applies the form
to a copy of the filter set (validated like a save, nothing written) and runs
`deskgate filter test`'s engine on a pasted message.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDictProxy

from gateway import confedit
from gateway.config import Config, load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.inbound.xheaders import FOLLOWUP_ONLY, KNOWN

if TYPE_CHECKING:
    from gateway.web.admin import AdminPages

BLANK_CONDITIONS = 2          # empty condition rows offered below the filled ones
BLANK_SETS = 2
MAX_ROWS = 100                # rows read from one form
MAX_MESSAGE = 1024 * 1024     # bytes of a pasted message for the dry run
FILTER_DEFAULTS: dict[str, Any] = {"any": [], "set": {}, "stop_after_match": False,
                                   "comment": ""}


_COMPUTED = ("AttachmentCount", "AttachmentExists")
# Recognised after FollowUp- too, but no follow-up reads them (docs/policies.md,
# Follow-ups): not suggested in that form.
_NOT_FOR_FOLLOWUPS = ("Ignore", "Loop", "BodyDecrypted", "Sign", "Encrypt", "ArticleKey",
                      *_COMPUTED)


def set_headers(prefix: str) -> list[str]:
    """The documented X-headers a filter may set (computed ones excluded): the names
    for a new ticket and the message, then the FollowUp- ones that change a follow-up
    (FollowUp-State-Keep among them, which exists only in that form)."""
    plain = [k for k in KNOWN if k not in _COMPUTED]
    followup = [f"FollowUp-{k}" for k in (*KNOWN, *FOLLOWUP_ONLY)
                if k not in _NOT_FOR_FOLLOWUPS]
    return [prefix + k for k in (*plain, *followup)]


def _rows(form: MultiDictProxy[Any], fmt: str, keys: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows n = 0, 1, ... of the form while their first field is there."""
    out = []
    for n in range(MAX_ROWS):
        if fmt.format(n=n, k=keys[0]) not in form:
            break
        out.append({k: str(form.get(fmt.format(n=n, k=k), "")) for k in keys})
    return out


def read_form(form: MultiDictProxy[Any]) -> dict[str, Any]:
    """The filter as the form gives it: name, flags, condition and set rows (blank kept)."""
    conds = _rows(form, "c{n}_{k}", ("group", "header", "kind", "pattern", "not"))
    sets = _rows(form, "s{n}_{k}", ("header", "value"))
    return {"name": str(form.get("name", "")).strip(),
            "stop_after_match": bool(form.get("stop_after_match")),
            "comment": str(form.get("comment", "")).strip(),
            "conditions": [{**c, "header": c["header"].strip(),
                            "group": c["group"] or "match", "kind": c["kind"] or "value",
                            "not": bool(c["not"])} for c in conds],
            "sets": [{"header": s["header"].strip(), "value": s["value"]} for s in sets]}


def choice_errors(v: dict[str, Any]) -> dict[str, list[str]]:
    """Condition rows whose group or kind is none of the choices, by form place ('c3').

    Refused, not read as `match`/`value`: an `any` condition taken for `match` would
    turn an OR into an AND without a word.
    """
    out: dict[str, list[str]] = {}
    for n, c in enumerate(v["conditions"]):
        if not c["header"] and not c["pattern"]:
            continue                # an empty row: ignored
        if c["group"] not in ("match", "any"):
            out.setdefault(f"c{n}", []).append(f"{c['group']!r} is neither match nor any")
        if c["kind"] not in ("value", "email"):
            out.setdefault(f"c{n}", []).append(f"{c['kind']!r} is neither value nor email")
    return out


def from_config(f: Any) -> dict[str, Any]:
    """The form values of a configured filter."""
    conds = []
    for group in ("match", "any"):
        for c in getattr(f, group):
            kind = "email" if "email" in c else "value"
            conds.append({"group": group, "header": str(c.get("header", "")), "kind": kind,
                          "pattern": str(c.get(kind, "")), "not": bool(c.get("not", False))})
    return {"name": f.name, "stop_after_match": f.stop_after_match, "comment": f.comment,
            "conditions": conds, "sets": [{"header": k, "value": v} for k, v in f.set.items()]}


def toml_values(v: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The TOML values of the form, and the condition/set keys each filled row becomes
    (match[0], any[1], set.X-...) so errors can be shown at their row."""
    groups: dict[str, list[dict[str, Any]]] = {"match": [], "any": []}
    cond_keys = []
    for c in v["conditions"]:
        if not c["header"] and not c["pattern"]:
            cond_keys.append("")
            continue
        row: dict[str, Any] = {"header": c["header"], c["kind"]: c["pattern"]}
        if c["not"]:
            row["not"] = True
        cond_keys.append(f"{c['group']}[{len(groups[c['group']])}]")
        groups[c["group"]].append(row)
    sets = {s["header"]: s["value"] for s in v["sets"] if s["header"]}
    set_keys = [f"set.{s['header']}" if s["header"] else "" for s in v["sets"]]
    values = {"name": v["name"], "stop_after_match": v["stop_after_match"],
              "comment": v["comment"], "match": confedit.inline_list(groups["match"]),
              "any": confedit.inline_list(groups["any"]),
              "set": confedit.inline_table(sets)}
    return values, cond_keys, set_keys


def place_errors(errors: list[ConfigError], name: str, cond_keys: list[str],
                 set_keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Errors by form place: 'name', 'c3' (condition row), 's1' (set row); others apart."""
    base = f"filter[{name}]."
    placed: dict[str, list[str]] = {}
    other: list[str] = []
    for e in errors:
        where = ""
        if e.key.startswith(base):
            rest = e.key[len(base):]
            m = re.match(r"(match|any)\[\d+\]", rest)
            if m and m.group(0) in cond_keys:
                where = f"c{cond_keys.index(m.group(0))}"
            elif rest in set_keys:
                where = f"s{set_keys.index(rest)}"
            elif rest in ("name", "match", "any", "set", "comment", "stop_after_match"):
                where = "name" if rest in ("name", "match", "any") else rest
        if where:
            placed.setdefault(where, []).append(e.reason)
        else:
            other.append(str(e))
    return placed, other


class FilterPage:
    def __init__(self, admin: AdminPages) -> None:
        self.admin = admin
        self.dash = admin.dash

    def _page(self, request: web.Request, *, original: str, v: dict[str, Any],
              errors: dict[str, list[str]] | None = None, other: list[str] | None = None,
              dry: dict[str, Any] | None = None, message: str = "",
              status: int = 200) -> web.Response:
        cfg = self.dash.gw.config
        # The form is shown again without its empty rows: errors move with their rows.
        kept_c = [n for n, c in enumerate(v["conditions"]) if c["header"] or c["pattern"]]
        kept_s = [n for n, x in enumerate(v["sets"]) if x["header"]]
        moved = {**{f"c{n}": f"c{i}" for i, n in enumerate(kept_c)},
                 **{f"s{n}": f"s{i}" for i, n in enumerate(kept_s)}}
        errors = {moved.get(k, k): e for k, e in (errors or {}).items()}
        v = {**v, "conditions": [c for c in v["conditions"] if c["header"] or c["pattern"]] + [
            {"group": "match", "header": "", "kind": "value", "pattern": "", "not": False}
            for _ in range(BLANK_CONDITIONS)],
            "sets": [x for x in v["sets"] if x["header"]]
            + [{"header": "", "value": ""} for _ in range(BLANK_SETS)]}
        return self.dash.render(
            request, "admin_filter.html", status=status,
            title=f"Filter {original}" if original else "New postmaster filter",
            original=original, v=v, errors=errors or {}, other=other or [], dry=dry,
            message=message, x_headers=set_headers(cfg.gateway.header_prefixes[0]
                                                   if cfg.gateway.header_prefixes
                                                   else "X-Deskgate-"))

    async def form(self, request: web.Request) -> web.Response:
        cfg = self.dash.gw.config
        name = request.query.get("name", "")
        v: dict[str, Any] = {"name": "", "stop_after_match": False, "comment": "",
                             "conditions": [], "sets": []}
        if name:
            f = next((x for x in cfg.filters if x.name == name), None)
            if f is None:
                return self.dash.not_found(request, f"There is no filter {name!r}.")
            v = from_config(f)
        return self._page(request, original=name, v=v)

    def _edit(self, cfg: Config, original: str, v: dict[str, Any]
              ) -> tuple[confedit.Edit, list[str], list[str]]:
        current = next((x for x in cfg.filters if x.name == original), None) if original \
            else None
        if original and current is None:
            raise LookupError(f"There is no filter {original!r}.")
        pdir = cfg.path(cfg.gateway.policies or "policies")
        values, cond_keys, set_keys = toml_values(v)
        edit = confedit.Edit()
        confedit.upsert(edit, section="filter", label=f"filter {original or v['name']}",
                        source=Path(current.source) if current is not None else None,
                        owned=pdir / confedit.OWNED_POLICY,
                        match=lambda e: str(e.get("name", "")) == original,
                        values=values, defaults=FILTER_DEFAULTS)
        if current is None:
            edit.changes.insert(0, f"filter {v['name']} added")
        return edit, cond_keys, set_keys

    async def post(self, request: web.Request) -> web.Response:
        form = await request.post()
        cfg = self.dash.gw.config
        original = str(form.get("original", ""))
        action = str(form.get("action", "save"))
        v = read_form(form)
        message = str(form.get("message", ""))
        if action == "delete" and original:
            return await self._delete(request, original)
        unknown = choice_errors(v)
        if unknown:
            return self._page(request, original=original, v=v, message=message, status=422,
                              errors=unknown)
        if not original and any(f.name == v["name"] for f in cfg.filters):
            return self._page(request, original="", v=v, message=message, status=422,
                              errors={"name": [f"filter {v['name']!r} exists already"]})
        try:
            edit, cond_keys, set_keys = self._edit(cfg, original, v)
        except (LookupError, TypeError, ValueError) as exc:
            return self._page(request, original=original, v=v, other=[str(exc)],
                              message=message, status=409)
        if action == "dry-run":
            return await self._dry_run(request, original, v, edit, cond_keys, set_keys,
                                       message)
        errors = await self.admin.save(request, f"filter {original or v['name']}", edit)
        if errors:
            from gateway.web.admin import refusal_status

            placed, other = place_errors(errors, v["name"], cond_keys, set_keys)
            return self._page(request, original=original, v=v, errors=placed, other=other,
                              message=message, status=refusal_status(errors))
        return self.admin.saved(request, f"Filter {v['name']} saved", edit, "/filters")

    async def _dry_run(self, request: web.Request, original: str, v: dict[str, Any],
                       edit: confedit.Edit, cond_keys: list[str], set_keys: list[str],
                       message: str) -> web.Response:
        cfg = self.dash.gw.config
        raw = message.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        if not message.strip() or len(raw) > MAX_MESSAGE:
            return self._page(request, original=original, v=v, message=message, status=422,
                              errors={"message": ["paste a message (headers, blank line, "
                                                  f"body) of at most {MAX_MESSAGE} bytes"]})

        def run() -> dict[str, Any] | list[ConfigError]:
            from gateway.cli.filter import explain

            try:
                trial = load_config(cfg.conf_dir, replace=edit.files)
            except ConfigErrors as exc:
                return list(exc.errors)
            return explain(trial, raw)

        result = await asyncio.get_running_loop().run_in_executor(self.dash.pool, run)
        if isinstance(result, list):
            placed, other = place_errors(result, v["name"], cond_keys, set_keys)
            return self._page(request, original=original, v=v, errors=placed, other=other,
                              message=message, status=422)
        return self._page(request, original=original, v=v, dry=result, message=message)

    async def _delete(self, request: web.Request, name: str) -> web.Response:
        cfg = self.dash.gw.config
        current = next((x for x in cfg.filters if x.name == name), None)
        if current is None:
            return self.dash.not_found(request, f"There is no filter {name!r}.")
        edit = confedit.Edit()
        try:
            confedit.remove(edit, section="filter", label=f"filter {name}",
                            source=Path(current.source),
                            match=lambda e: str(e.get("name", "")) == name)
        except LookupError as exc:
            return self._page(request, original=name, v=from_config(current),
                              other=[str(exc)], status=409)
        errors = await self.admin.save(request, f"filter {name} deleted", edit)
        if errors:
            from gateway.web.admin import refusal_status

            return self._page(request, original=name, v=from_config(current),
                              other=[str(e) for e in errors],
                              status=refusal_status(errors))
        return self.admin.saved(request, f"Filter {name} deleted", edit, "/filters")
