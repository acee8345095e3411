"""Admin forms for [[queue]] and [[account]] (with [account.oauth2]): one generic page.

A form shows the entry's values as its file has them (`10m` stays `10m`), so an
unchanged field is never rewritten. Secrets are never shown: a secret field left
empty keeps whatever the file has (the value, `_file` or `_env`); one filled in
replaces it. Queues and accounts are not deleted here (OTOBO has no delete
either): set an account `valid = false`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import confedit
from gateway.config import Config

if TYPE_CHECKING:
    from gateway.web.admin import AdminPages


@dataclass(frozen=True)
class Field:
    name: str                       # TOML key; "oauth2.x" for the [account.oauth2] table
    label: str
    kind: str = "text"              # text, select, textarea, bool, int, secret
    options: tuple[str, ...] = ()
    default: Any = ""


@dataclass(frozen=True)
class Kind:
    section: str
    noun: str
    key: str                        # the field naming an entry
    url: str
    list_url: str
    owned: str                      # file in conf.d for new entries
    mode: int                       # of that file when it is created
    fields: tuple[Field, ...]


QUEUE = Kind("queue", "queue", "name", "/admin/queue", "/queues", "50-admin-queues.toml",
             0o644, (
                 Field("name", "Name", default=None),
                 Field("address", "System address", "address"),
                 Field("follow_up", "Follow-up", "select", ("possible", "reject", "new-ticket"),
                       "possible"),
                 Field("sign", "Sign", "select", ("none", "smime", "pgp"), "none"),
                 Field("encrypt", "Encrypt", "select", ("never", "opportunistic", "required"),
                       "never"),
                 Field("auto_response_new", "Auto response (new ticket)", "textarea"),
                 Field("auto_response_followup", "Auto response (follow-up)", "textarea"),
                 Field("auto_response_reject", "Auto response (reject)", "textarea"),
                 Field("comment", "Comment"),
             ))
ACCOUNT = Kind("account", "mail account", "name", "/admin/account", "/accounts",
               "50-admin-accounts.toml", 0o600, (
                   Field("name", "Name", default=None),
                   Field("type", "Type", "select",
                         ("imaps", "imaptls", "imap", "pop3s", "pop3tls", "pop3"), None),
                   Field("host", "Host", default=None),
                   Field("port", "Port (0: the type's)", "int", default=0),
                   Field("login", "Login", default=None),
                   Field("password", "Password", "secret"),
                   Field("folder", "Folder", default="INBOX"),
                   Field("trusted", "Trusted (keeps X-headers)", "bool", default=False),
                   Field("dispatch", "Dispatch", "select", ("to", "queue"), "to"),
                   Field("queue", "Queue", "queue"),
                   Field("interval", "Interval", default="10m"),
                   Field("after_fetch", "After fetch (delete, keep, move:<folder>)",
                         default="delete"),
                   Field("valid", "Valid", "bool", default=True),
                   Field("comment", "Comment"),
                   Field("oauth2.token_url", "OAuth2 token URL", default=None),
                   Field("oauth2.client_id", "OAuth2 client id", default=None),
                   Field("oauth2.client_secret", "OAuth2 client secret", "secret"),
                   Field("oauth2.refresh_token", "OAuth2 refresh token", "secret"),
                   Field("oauth2.scope", "OAuth2 scope"),
                   Field("oauth2.grant", "OAuth2 grant", "select",
                         ("refresh_token", "client_credentials"), "refresh_token"),
               ))
KINDS = {"queue": QUEUE, "account": ACCOUNT}


def _entries(cfg: Config, kind: Kind) -> list[Any]:
    return list(getattr(cfg, kind.section))


def raw_entry(cfg: Config, kind: Kind, name: str) -> tuple[Path, dict[str, Any]] | None:
    """The file and TOML table of the entry named `name`, as written."""
    entry = next((e for e in _entries(cfg, kind) if getattr(e, kind.key) == name), None)
    if entry is None:
        return None
    path = Path(entry.source) if getattr(entry, "source", "") else None
    if path is None:                # queues carry no source: find the file
        for p in sorted(cfg.conf_dir.glob("*.toml")):
            with p.open("rb") as fh:
                data = tomllib.load(fh)
            if any(isinstance(t, dict) and t.get(kind.key) == name
                   for t in data.get(kind.section, [])):
                path = p
                break
    if path is None:
        return None
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    table = next((t for t in data.get(kind.section, []) if isinstance(t, dict)
                  and t.get(kind.key) == name), None)
    return (path, table) if table is not None else None


def _get(table: Mapping[str, Any], name: str) -> Any:
    head, _, rest = name.partition(".")
    if rest:
        sub = table.get(head)
        return sub.get(rest) if isinstance(sub, Mapping) else None
    return table.get(name)


def _has_secret(table: Mapping[str, Any], name: str) -> bool:
    head, _, rest = name.rpartition(".")
    sub = table.get(head) if head else table
    return isinstance(sub, Mapping) and any(f"{rest}{s}" in sub for s in ("", "_file", "_env"))


def form_values(kind: Kind, table: Mapping[str, Any]) -> dict[str, Any]:
    """What the form shows: the written value, else the default; secrets never."""
    out: dict[str, Any] = {}
    for f in kind.fields:
        if f.kind == "secret":
            out[f.name] = ""
            continue
        v = _get(table, f.name)
        out[f.name] = f.default if v is None else v
        if out[f.name] is None:
            out[f.name] = ""
    return out


def read_form(kind: Kind, form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Typed values of the posted form and the fields that could not be read."""
    values: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for f in kind.fields:
        raw = str(form.get(f.name, ""))
        raw = raw if f.kind in ("textarea", "secret") else raw.strip()
        if f.kind == "bool":
            values[f.name] = bool(form.get(f.name))
        elif f.kind == "int":
            try:
                values[f.name] = int(raw or 0)
            except ValueError:
                bad[f.name] = f"{raw!r} is not a number"
                values[f.name] = raw
        else:
            values[f.name] = raw
    return values, bad


def toml_values(kind: Kind, values: Mapping[str, Any], table: Mapping[str, Any] | None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values, defaults) for confedit.upsert; an empty secret keeps what the file has
    and a new one replaces its _file/_env forms."""
    out: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    sub: dict[str, Any] = dict((table or {}).get("oauth2") or {})
    sub_touched = False
    for f in kind.fields:
        v = values[f.name]
        head, _, rest = f.name.rpartition(".")
        if f.kind == "secret":
            if not v:
                continue
            target = sub if head else out
            for s in ("_file", "_env"):
                if head:
                    target.pop(rest + s, None)
                else:
                    out[rest + s] = None
            target[rest] = v
            sub_touched = sub_touched or bool(head)
            continue
        if head:
            if v in ("", None) or v == f.default:
                sub.pop(rest, None)
            else:
                sub[rest] = v
            sub_touched = True
            continue
        out[f.name] = v
        if f.default is not None:
            defaults[f.name] = f.default
        elif f.kind in ("text", "textarea", "address", "queue"):
            defaults[f.name] = ""
    if sub_touched:
        out["oauth2"] = confedit.inline_table(sub) if any(
            k in sub for k in ("token_url", "client_id")) else None
    return out, defaults


class EntryPage:
    def __init__(self, admin: AdminPages, kind: Kind) -> None:
        self.admin = admin
        self.dash = admin.dash
        self.kind = kind

    def _page(self, request: web.Request, *, original: str, v: dict[str, Any],
              errors: dict[str, list[str]] | None = None, other: list[str] | None = None,
              status: int = 200, has_secret: frozenset[str] = frozenset()) -> web.Response:
        cfg = self.dash.gw.config
        return self.dash.render(
            request, "admin_entry.html", status=status,
            title=f"{self.kind.noun.capitalize()} {original}" if original
            else f"New {self.kind.noun}",
            kind=self.kind, original=original, v=v, errors=errors or {}, other=other or [],
            addresses=[a.email for a in cfg.address], queues=[q.name for q in cfg.queue],
            has_secret=has_secret)

    def _secrets(self, table: Mapping[str, Any] | None) -> frozenset[str]:
        return frozenset(f.name for f in self.kind.fields
                         if f.kind == "secret" and table and _has_secret(table, f.name))

    async def form(self, request: web.Request) -> web.Response:
        cfg = self.dash.gw.config
        name = request.query.get("name", "")
        table: Mapping[str, Any] = {}
        if name:
            found = raw_entry(cfg, self.kind, name)
            if found is None:
                return self.dash.not_found(request, f"There is no {self.kind.noun} {name!r}.")
            table = found[1]
        return self._page(request, original=name, v=form_values(self.kind, table),
                          has_secret=self._secrets(table))

    async def post(self, request: web.Request) -> web.Response:
        form = await request.post()
        cfg = self.dash.gw.config
        kind = self.kind
        original = str(form.get("original", ""))
        values, bad = read_form(kind, form)
        name = str(values[kind.key])
        found = raw_entry(cfg, kind, original) if original else None
        if original and found is None:
            return self.dash.not_found(request, f"There is no {kind.noun} {original!r}.")
        table = found[1] if found else None
        secrets = self._secrets(table)
        if not original and any(str(getattr(e, kind.key)).lower() == name.lower()
                                for e in _entries(cfg, kind)):
            bad[kind.key] = f"{kind.noun} {name!r} exists already"
        if bad:
            return self._page(request, original=original, v=values, status=422,
                              errors={k: [v] for k, v in bad.items()}, has_secret=secrets)
        new_values, defaults = toml_values(kind, values, table)
        edit = confedit.Edit()
        label = f"{kind.section} {original or name}"
        try:
            position = confedit.upsert(
                edit, section=kind.section, label=label,
                source=found[0] if found else None, owned=cfg.conf_dir / kind.owned,
                match=lambda e: str(e.get(kind.key, "")) == original,
                values=new_values, defaults=defaults)
        except (LookupError, TypeError, ValueError) as exc:
            return self._page(request, original=original, v=values, other=[str(exc)],
                              status=409, has_secret=secrets)
        if found is None:
            edit.changes.insert(0, f"{kind.section} {name} added")
        path = next(iter(edit.files))
        index = confedit.merged_index(cfg, edit, kind.section, path, position)
        edit.modes[path] = kind.mode
        if any(f.kind == "secret" and values[f.name] for f in kind.fields):
            edit.private.add(path)      # a typed secret: no longer group/other-readable
        errors = await self.admin.save(request, label, edit)
        if errors:
            from gateway.web.admin import field_errors, refusal_status

            names = tuple(f.name for f in kind.fields)
            placed, other = field_errors(errors, f"{kind.section}[{index}]", names)
            for e in errors:       # [account.oauth2] keys: account[N].oauth2.<key>
                prefix = f"{kind.section}[{index}].oauth2."
                if e.key.startswith(prefix) and f"oauth2.{e.key[len(prefix):]}" in names:
                    placed.setdefault(f"oauth2.{e.key[len(prefix):]}", []).append(e.reason)
                    other = [o for o in other if o != str(e)]
            return self._page(request, original=original, v=values, errors=placed,
                              other=other, status=refusal_status(errors),
                              has_secret=secrets)
        return self.admin.saved(request, f"{kind.noun.capitalize()} {name} saved", edit,
                                kind.list_url)
