"""Helpers shared by the CLI modules: loading the config, printing JSON and tables.

Every CLI module is imported to build the parser (`deskgate --help` lists them
all), so they import at the top only what argparse needs; the configuration,
the store, the pipeline and the rest are imported inside the command that uses
them. tests/unit/ops/test_ops_coldstart.py keeps it so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.app import Gateway
    from gateway.config import Config

EX_OK = 0
EX_DATAERR = 65
EX_USAGE = 64
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

MAX_ID = 2**63 - 1      # row ids are 64-bit: a larger number names no row (and overflows)


def load(args: argparse.Namespace, *, quiet_logs: bool = True, refused: int = 1) -> Config:
    """Load and validate the configuration (every check of gateway.validators)
    or exit `refused` listing every error."""
    from gateway.config import load_config
    from gateway.errors import ConfigErrors
    from gateway.logs import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(str(err), file=sys.stderr)
        raise SystemExit(refused) from None
    setup_logging("warning" if quiet_logs else cfg.gateway.log_level, cfg.gateway.log_format)
    return cfg


def load_readonly(args: argparse.Namespace) -> Config:
    """The configuration of a command that only reads the database.

    It is validated without the section checks of gateway.validators (keys,
    certificates, DKIM, ...), which such a command does not need. When conf.d or
    a policy file is broken, the errors are printed as warnings and the command
    goes on with the [gateway] keys that locate the database and format ticket
    numbers (database, state_dir, ticket_hook): an admin can look at tickets and
    the log exactly when the files are being fixed.
    """
    from gateway.config import Config, GatewayConfig, load_config
    from gateway.errors import ConfigErrors
    from gateway.logs import setup_logging
    from gateway.rawconf import config_dir, read_sections

    try:
        cfg = load_config(args.config, section_checks=False)
    except ConfigErrors as exc:
        conf = config_dir(args.config)
        if not conf.is_dir():
            for err in exc.errors:
                print(str(err), file=sys.stderr)
            raise SystemExit(1) from None
        for err in exc.errors:
            print(f"warning: {err}", file=sys.stderr)
        raw = read_sections(conf, ("gateway",))["gateway"]
        keys = {k: raw[k] for k in ("database", "state_dir", "ticket_hook")
                if isinstance(raw.get(k), str)}
        print("warning: the configuration has errors (`deskgate check` lists them); "
              "reading the database with [gateway] database, state_dir and ticket_hook only",
              file=sys.stderr)
        cfg = Config(root=conf.parent, conf_dir=conf, gateway=GatewayConfig(**keys))
    setup_logging("warning", cfg.gateway.log_format)
    return cfg


def database_failure(url: str, exc: BaseException) -> str | None:
    """`gateway.database (URL, password hidden): reason` in one line when exc says the
    database does not answer (down, locked, unreachable); None for anything else."""
    if "sqlalchemy" not in sys.modules:     # no database was touched
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from gateway.store.db import is_temporary

    if not (isinstance(exc, SQLAlchemyError) and is_temporary(exc)):
        return None
    orig = getattr(exc, "orig", None) or exc
    detail = " ".join(str(orig).split()) or type(orig).__name__
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        shown = "?"
    return f"gateway.database ({shown}): {detail}"


def configured_database_url(args: argparse.Namespace) -> str:
    """The database URL of --config, also when the configuration has errors."""
    from gateway.config import Config, GatewayConfig, load_config
    from gateway.errors import ConfigErrors
    from gateway.rawconf import config_dir, read_sections

    try:
        return load_config(args.config, section_checks=False).database_url
    except ConfigErrors:
        conf = config_dir(args.config)
        raw = read_sections(conf, ("gateway",))["gateway"]
        keys = {k: raw[k] for k in ("database", "state_dir") if isinstance(raw.get(k), str)}
        return Config(root=conf.parent, conf_dir=conf, gateway=GatewayConfig(**keys)).database_url


def envelope_problem(mail_from: str, rcpts: list[str]) -> str:
    """Why -f/-r cannot be an envelope (a control character such as CR or LF, < or >
    in an address, an empty recipient: nothing an MTA sends), in-process as over LMTP,
    and for `send` as over SMTP, whose relay refuses the same addresses; "" when they
    can."""
    from gateway.textsafe import address_refusal

    for addr in (mail_from, *rcpts):
        if address_refusal(addr) or "<" in addr or ">" in addr:
            return (f"cannot use {addr!r} as an envelope address (a control character, "
                    "< or > in it)")
    if not all(rcpts):
        return "an empty recipient (-r '')"
    return ""


def _default(o: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(o, datetime):
        # Every time deskgate stores is UTC; SQLite hands it back without the offset,
        # PostgreSQL with it: the JSON says +00:00 either way.
        return (o if o.tzinfo else o.replace(tzinfo=UTC)).isoformat()
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    return str(o)


def print_json(obj: Any) -> None:
    import json

    json.dump(obj, sys.stdout, indent=2, default=_default, ensure_ascii=False)
    sys.stdout.write("\n")


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    rows = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, v in enumerate(r):
            widths[i] = min(max(widths[i], len(v)), 60)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers).rstrip())
    for r in rows:
        print(fmt.format(*[v if len(v) <= 60 else v[:57] + "..." for v in r]).rstrip())


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def read_stdin_message(command: str) -> bytes | None:
    """The message on stdin with CRLF line ends; None (and a message) when empty."""
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        print(f"{command}: empty message on stdin", file=sys.stderr)
        return None
    if b"\r\n" not in raw:
        raw = raw.replace(b"\n", b"\r\n")
    return raw


def open_gateway(cfg: Config, command: str) -> Gateway | None:
    """A Gateway with a migrated store; None (and a message) when the database is down."""
    from gateway.app import Gateway
    from gateway.store.db import is_temporary

    try:
        gw = Gateway(cfg)
        gw.prepare_store()
    except Exception as exc:
        if is_temporary(exc):
            line = database_failure(cfg.database_url, exc)
            print(f"{command}: {line or f'database unavailable: {exc}'}", file=sys.stderr)
            return None
        raise
    return gw


@contextlib.contextmanager
def connect_store(cfg: Config, command: str, table: str, missing: str, *,
                  write: bool = False) -> Iterator[Connection]:
    """A connection to the gateway's database (a transaction with `write`); exit 1 with
    "deskgate COMMAND: the database has no MISSING yet; run `deskgate db upgrade` ..."
    when `table` is not there."""
    from sqlalchemy import inspect

    from gateway.store.db import make_engine

    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(table):
                print(f"deskgate {command}: the database has no {missing} yet; run "
                      "`deskgate db upgrade` (or start `deskgate serve`)", file=sys.stderr)
                raise SystemExit(1)
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
