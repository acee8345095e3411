"""Secrets written inline in conf.d files that group or others may read.

A `…_file` secret that is not private refuses the configuration
(gateway.privatefiles); an inline one is the admin's choice and stays valid, but
the file then needs the same care. A conf.d file may be readable by the
gateway's own group (root:deskgate 0640, as /etc/deskgate is); any other group
or the rest of the world reading a secret is a warning for `check`, for `serve`
at start and after each reload that worked (SIGHUP, `deskgate reload`, a dashboard
save). The warning names the file and its mode, never the secret.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from gateway.config import Config

log = structlog.get_logger(__name__)


def _secret_keys(cls: type, prefix: str) -> list[str]:
    """Dotted keys of the fields marked secret() under `cls` (array entries as `[]`)."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if "secret" in f.metadata:
            out.append(f"{prefix}{f.metadata['secret']}")
            continue
        hint = hints[f.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            hint = next(a for a in args if a is not type(None))
        elif origin is tuple and args:
            hint, key = args[0], key + "[]"
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            out.extend(_secret_keys(hint, key + "."))
    return out


# Keys whose inline value is a secret: relay.password, account[].oauth2.client_secret, ...
SECRET_KEYS = frozenset(_secret_keys(Config, ""))
# A database URL may carry a password too (postgresql+psycopg://user:pw@host/db).
DATABASE_KEY = "gateway.database"


def _found(data: dict[str, Any], pattern: str, key: str,
           counts: dict[str, int]) -> list[str]:
    """The dotted keys (with merged array indexes) of `data` that hold an inline secret."""
    out: list[str] = []
    for name, value in data.items():
        pat, dotted = f"{pattern}{name}", f"{key}{name}"
        if isinstance(value, dict):
            out.extend(_found(value, pat + ".", dotted + ".", counts))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            start = counts.get(dotted, 0)      # [[arrays]] append across files (as merged)
            counts[dotted] = start + len(value)
            for i, entry in enumerate(value):
                out.extend(_found(entry, pat + "[].", f"{dotted}[{start + i}].", counts))
        elif isinstance(value, str) and value and (
                pat in SECRET_KEYS or (pat == DATABASE_KEY and _has_password(value))):
            out.append(dotted)
    return out


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:      # not a URL: check reports gateway.database
        return False


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _reason(path: Path, st: os.stat_result, gid: int, key: str) -> str:
    mode = stat.S_IMODE(st.st_mode)
    ours = _group_name(gid)
    if mode & stat.S_IROTH:
        who = "others may read it"
        fix = f"chmod 600 it (or chmod 640 with group {ours}, the gateway's group)"
    else:
        who = f"members of group {_group_name(st.st_gid)} may read it"
        fix = f"chmod 600 it (or chgrp {ours} it, the gateway's group)"
    if key == DATABASE_KEY:
        move = ("leave the password out of the URL and give it to libpq in the gateway "
                "user's ~/.pgpass (mode 0600)")
    else:
        name = key.rpartition(".")[2]
        move = f"move the secret to {name}_file (a file of its own, mode 0600)"
    return f"{path} (mode {mode:04o}) holds the secret inline and {who}: {fix}, or {move}"


def inline_secret_warnings(conf_dir: Path, gid: int | None = None) -> list[tuple[str, str]]:
    """(key, reason) for every inline secret in a conf.d file that others, or a group
    other than `gid` (default: the effective group of this process, the gateway's),
    may read. Files that cannot be read or parsed are left to `check`'s errors."""
    gid = os.getegid() if gid is None else gid
    out: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    try:
        files = sorted(conf_dir.glob("*.toml"))
    except OSError:
        return out
    for path in files:
        try:
            st = path.stat()
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        keys = _found(data, "", "", counts)     # also counts the arrays of private files
        readable = st.st_mode & stat.S_IROTH or (st.st_mode & stat.S_IRGRP
                                                 and st.st_gid != gid)
        if readable:
            out.extend((key, _reason(path, st, gid, key)) for key in keys)
    return out


def log_inline_secret_warnings(conf_dir: Path) -> None:
    """Log each inline secret that group or others may read (`check` lists them too)."""
    for key, reason in inline_secret_warnings(conf_dir):
        log.warning("a secret in the configuration is readable by group or others",
                    key=key, reason=reason)
