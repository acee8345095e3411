"""The effective inventory: system addresses, queues, mail accounts and filters.

Pure functions of the Config and (optionally) a database connection that return
lists of plain dicts, shared by `deskgate addresses|queues|accounts|filters list`
and the dashboard. Searching is a case-insensitive substring match over the
fields a list shows; secrets are never part of a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.commlog_views import ACCOUNT_INTERMITTENT, ACCOUNT_OK, ACCOUNT_PERMANENT
from gateway.config import AccountConfig, Config, FilterConfig
from gateway.store.tables import CommObject, Communication, SystemAddress, Ticket

Row = dict[str, Any]

REMOVED_SOURCE = "(removed from configuration)"
# Ticket state types that no longer count as open work.
CLOSED_STATE_TYPES = ("closed", "merged", "removed")
# How far back the communication log is read for an account's status.
STATUS_WINDOW = timedelta(hours=24)

# Fields each list shows (table columns and JSON keys), in display order. The
# search looks at exactly these.
ADDRESS_FIELDS = ("email", "display_name", "queue", "valid", "comment", "source")
QUEUE_FIELDS = ("name", "address", "follow_up", "sign", "encrypt", "open_tickets", "comment")
ACCOUNT_FIELDS = ("name", "type", "host", "port", "login", "folder", "trusted", "dispatch",
                  "queue", "interval", "after_fetch", "auth", "valid", "comment", "source",
                  "last_poll", "last_result", "status")
FILTER_FIELDS = ("order", "name", "source", "stop_after_match", "conditions", "settings",
                 "comment")


# ---------------------------------------------------------------- search


def display(value: object) -> str:
    """How a value looks in a table cell (and so what the search sees)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={display(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(display(v) for v in value)
    return str(value)


def matches(row: Mapping[str, Any], text: str, fields: Iterable[str]) -> bool:
    """True when `text` is a case-insensitive substring of one of the row's fields."""
    needle = text.strip().casefold()
    if not needle:
        return True
    return any(needle in display(row.get(f)).casefold() for f in fields)


def search(rows: Iterable[Row], text: str | None, fields: Sequence[str]) -> list[Row]:
    return [r for r in rows if matches(r, text or "", fields)]


# ---------------------------------------------------------------- database


def open_store(cfg: Config) -> Engine | None:
    """The engine of the configured database when it exists and has a schema, else None.

    Never creates anything: an inventory read must not leave an empty SQLite
    file behind.
    """
    from gateway.store.db import make_engine

    url = cfg.database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if not path or path == ":memory:" or not Path(path).is_file():
            return None
    engine = make_engine(url, fast_path=cfg.store.fast_path)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(SystemAddress.__tablename__):
                engine.dispose()
                return None
    except SQLAlchemyError:
        engine.dispose()
        raise
    return engine


def source_path(cfg: Config, source: str) -> str:
    """A config file as an admin names it: relative to the parent of conf.d when inside it."""
    if not source:
        return ""
    try:
        return str(Path(source).relative_to(cfg.root))
    except ValueError:
        return source


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# ---------------------------------------------------------------- addresses


def list_addresses(cfg: Config, conn: Connection | None = None, *, text: str | None = None,
                   valid: str | None = None, queue: str | None = None) -> list[Row]:
    """Every system address of the files, plus those only the database still knows.

    An address removed from the files stays in the database (history refers to
    it) and is shown as invalid with REMOVED_SOURCE, whether or not the running
    gateway has synchronised since.
    """
    rows: list[Row] = [
        {"email": a.email, "display_name": a.display_name, "queue": a.queue, "valid": a.valid,
         "comment": a.comment, "source": source_path(cfg, a.source), "in_config": True}
        for a in cfg.address]
    if conn is not None:
        known = {a.email for a in cfg.address}
        for r in conn.execute(select(SystemAddress).order_by(SystemAddress.email)).all():
            if r.email in known:
                continue
            rows.append({"email": r.email, "display_name": r.display_name, "queue": r.queue,
                         "valid": "invalid", "comment": r.comment, "source": REMOVED_SOURCE,
                         "in_config": False})
    rows.sort(key=lambda r: (not r["in_config"], r["email"]))
    if valid:
        rows = [r for r in rows if r["valid"] == valid]
    if queue:
        rows = [r for r in rows if r["queue"].casefold() == queue.casefold()]
    return search(rows, text, ADDRESS_FIELDS)


# ---------------------------------------------------------------- queues


def open_ticket_counts(conn: Connection) -> dict[str, int]:
    """Queue name (case-folded) → tickets whose state type is not closed/merged/removed."""
    q = (select(Ticket.queue, func.count()).where(Ticket.state_type.not_in(CLOSED_STATE_TYPES))
         .group_by(Ticket.queue))
    out: dict[str, int] = {}
    for name, n in conn.execute(q).all():
        out[name.casefold()] = out.get(name.casefold(), 0) + int(n)
    return out


def list_queues(cfg: Config, conn: Connection | None = None, *,
                text: str | None = None) -> list[Row]:
    """Queues in configuration order with their system address, policies and open tickets."""
    counts = open_ticket_counts(conn) if conn is not None else {}
    rows = [{"name": q.name, "address": q.address, "follow_up": q.follow_up, "sign": q.sign,
             "encrypt": q.encrypt, "open_tickets": counts.get(q.name.casefold(), 0),
             "comment": q.comment} for q in cfg.queue]
    return search(rows, text, QUEUE_FIELDS)


# ---------------------------------------------------------------- accounts


def account_type_label(acc: AccountConfig) -> str:
    """The account_type the poller writes into the communication log (IMAPS, POP3, ...)."""
    return acc.type.upper()


# The labels of `log overview`, so CLI, dashboard and overview say the same.
ACCOUNT_UNKNOWN = "unknown"    # no finished connection in the window


def account_status(successful: int, failed: int) -> str:
    """OTOBO's account health from the connections of the last 24 hours."""
    if failed and successful:
        return ACCOUNT_INTERMITTENT
    if failed:
        return ACCOUNT_PERMANENT
    if successful:
        return ACCOUNT_OK
    return ACCOUNT_UNKNOWN


def account_health(conn: Connection, accounts: Sequence[AccountConfig],
                   now: datetime | None = None) -> dict[str, Row]:
    """Account name → {last_poll, last_result, status, successful, failed}.

    The last poll is the newest communication of the account; the status
    counts its Connection objects started within STATUS_WINDOW.
    """
    if not accounts:
        return {}
    now = now or datetime.now(UTC)
    since = now - STATUS_WINDOW
    by_key = {(account_type_label(a), a.name): a.name for a in accounts}
    names = sorted({a.name for a in accounts})
    types = sorted({t for t, _ in by_key})
    acct_type = func.upper(Communication.account_type)
    out: dict[str, Row] = {a.name: {"last_poll": None, "last_result": "", "status": ACCOUNT_UNKNOWN,
                                    "successful": 0, "failed": 0} for a in accounts}

    counts = conn.execute(
        select(acct_type, Communication.account, CommObject.status, func.count())
        .join(Communication, Communication.id == CommObject.communication_id)
        .where(CommObject.type == "Connection", CommObject.start >= since,
               Communication.account.in_(names), acct_type.in_(types))
        .group_by(acct_type, Communication.account, CommObject.status)).all()
    for typ, account, status, n in counts:
        name = by_key.get((typ, account))
        if name is None:
            continue
        if status == "Failed":
            out[name]["failed"] += int(n)
        elif status in ("Successful", "Warning"):
            out[name]["successful"] += int(n)

    newest = (select(acct_type.label("t"), Communication.account,
                     func.max(Communication.id).label("id"))
              .where(Communication.account.in_(names), acct_type.in_(types))
              .group_by(acct_type, Communication.account).subquery())
    last = conn.execute(select(newest.c.t, Communication.account, Communication.start,
                               Communication.status)
                        .join(newest, newest.c.id == Communication.id)).all()
    for typ, account, start, status in last:
        name = by_key.get((typ, account))
        if name is not None:
            out[name]["last_poll"] = _aware(start)
            out[name]["last_result"] = status
    for row in out.values():
        row["status"] = account_status(row["successful"], row["failed"])
    return out


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def account_row(cfg: Config, acc: AccountConfig) -> Row:
    """The configuration of one account, without any secret."""
    return {"name": acc.name, "type": acc.type, "host": acc.host, "port": acc.effective_port,
            "login": acc.login, "folder": acc.folder, "trusted": acc.trusted,
            "dispatch": acc.dispatch, "queue": acc.queue, "interval": _duration(acc.interval),
            "interval_seconds": acc.interval, "after_fetch": acc.after_fetch,
            "auth": "oauth2" if acc.oauth2 is not None else "password",
            "tls_ca_file": acc.tls_ca_file, "allow_plaintext": acc.allow_plaintext,
            "valid": acc.valid, "comment": acc.comment, "source": source_path(cfg, acc.source)}


def list_accounts(cfg: Config, conn: Connection | None = None, *, text: str | None = None,
                  now: datetime | None = None) -> list[Row]:
    """Mail accounts with their last poll and connection health from the communication log."""
    health = account_health(conn, cfg.account, now) if conn is not None else {}
    rows = []
    for acc in cfg.account:
        h = health.get(acc.name, {})
        rows.append({**account_row(cfg, acc), "last_poll": h.get("last_poll"),
                     "last_result": h.get("last_result", ""),
                     "status": h.get("status", ACCOUNT_UNKNOWN),
                     "connections_ok": h.get("successful", 0),
                     "connections_failed": h.get("failed", 0)})
    return search(rows, text, ACCOUNT_FIELDS)


# ---------------------------------------------------------------- filters


def condition_text(cond: Mapping[str, Any]) -> str:
    """'From ~ noreply@.*' style: `~` regex on the value, `=~` on each address, `!` negates."""
    header = str(cond.get("header", ""))
    if cond.get("email"):
        op, pattern = "=~", str(cond["email"])
    else:
        op, pattern = "~", str(cond.get("value", ""))
    if cond.get("not"):
        op = "!" + op
    return f"{header} {op} {pattern}"


def filter_row(cfg: Config, order: int, f: FilterConfig) -> Row:
    conditions = [condition_text(c) for c in f.match]
    if f.any:
        conditions.append("any of: " + " | ".join(condition_text(c) for c in f.any))
    return {"order": order, "name": f.name, "source": source_path(cfg, f.source),
            "stop_after_match": f.stop_after_match, "conditions": conditions,
            "match": [dict(c) for c in f.match], "any": [dict(c) for c in f.any],
            "settings": dict(f.set), "comment": f.comment}


def list_filters(cfg: Config, *, text: str | None = None) -> list[Row]:
    """Filters in evaluation order (the order the config loader sorted them into)."""
    rows = [filter_row(cfg, i, f) for i, f in enumerate(cfg.filters, 1)]
    return search(rows, text, FILTER_FIELDS)



# ---------------------------------------------------------------- sorting


def _sort_key(value: object) -> tuple[int, Any]:
    if value is None or value == "":
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, datetime):
        return (3, value.timestamp())
    return (4, display(value).casefold())


def sort_rows(rows: list[Row], sort: str | None, fields: Sequence[str]) -> list[Row]:
    """Order by `col` ascending or `-col` descending; anything else keeps the given order.

    Numbers sort as numbers, times as times, text ignoring case; empty cells first.
    """
    col = (sort or "").lstrip("-")
    if col not in fields:
        return rows
    return sorted(rows, key=lambda r: _sort_key(r.get(col)), reverse=(sort or "").startswith("-"))
