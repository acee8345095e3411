"""Read side of the communication log: overview, list, detail, purge.

The CLI (`deskgate log`) and the dashboard show the same data through these
functions; each takes a Connection and returns plain dicts in the JSON shapes
`deskgate log ... --json` prints, so nothing here knows about HTTP or argparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    delete,
    func,
    or_,
    select,
)

from gateway.commlog_names import (
    DIRECTIONS,
    PRIORITIES,
    SORT_COLUMNS,
    STATUSES,
    priorities_at_least,
)
from gateway.store.tables import Article, CommEntry, CommObject, Communication, Ticket

ACCOUNT_OK = "ok"
ACCOUNT_PERMANENT = "permanent connection errors"
ACCOUNT_INTERMITTENT = "intermittent connection errors"


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything we store is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LogFilter:
    """What `log list` and the dashboard list may filter, sort and page by."""

    since: datetime | None = None
    until: datetime | None = None
    direction: str | None = None
    status: str | None = None
    account: str | None = None          # account name or account type (LMTP, IMAPS, ...)
    priority: str | None = None         # communications with an entry at this level or worse
    search: str | None = None           # substring of any entry's key or value, or the account
    sort: str = "-start"                # a column of SORT_COLUMNS; leading '-' = descending
    limit: int = 100
    offset: int = 0

    def validate(self) -> None:
        if self.direction and self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.status and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if self.priority:
            priorities_at_least(self.priority)
        if self.sort.lstrip("-") not in SORT_COLUMNS:
            raise ValueError(f"sort must be one of {', '.join(SORT_COLUMNS)} (prefix - to "
                             "reverse)")
        if self.limit < 0 or self.offset < 0:
            raise ValueError("limit and offset cannot be negative")
        if self.limit > MAX_ROWS or self.offset > MAX_ROWS:
            raise ValueError(f"limit and offset can be at most {MAX_ROWS}")


# The largest limit/offset a database takes (a signed 64-bit integer).
MAX_ROWS = 2**63 - 1


def _duration(conn: Connection) -> ColumnElement[Any]:
    """Seconds between start and end, in the dialect's own arithmetic."""
    c = Communication
    if conn.dialect.name == "sqlite":
        return (func.julianday(c.end) - func.julianday(c.start)) * 86400.0
    return func.extract("epoch", c.end - c.start)


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(f: LogFilter) -> list[ColumnElement[bool]]:
    c = Communication
    conds: list[ColumnElement[bool]] = []
    if f.since is not None:
        conds.append(c.start >= f.since)
    if f.until is not None:
        conds.append(c.start < f.until)
    if f.direction:
        conds.append(c.direction == f.direction)
    if f.status:
        conds.append(c.status == f.status)
    if f.account:
        conds.append(or_(c.account == f.account, func.lower(c.account_type)
                         == f.account.lower()))
    # IN (subquery) rather than a correlated EXISTS: the entries are scanned once
    # instead of probed once per communication (10-50x faster on a big log).
    if f.priority:
        conds.append(c.id.in_(select(CommEntry.communication_id).where(
            CommEntry.priority.in_(priorities_at_least(f.priority)))))
    if f.search:
        pat = _like(f.search)
        conds.append(or_(
            func.lower(c.account).like(pat, escape="\\"),
            c.id.in_(select(CommEntry.communication_id).where(
                or_(func.lower(CommEntry.value).like(pat, escape="\\"),
                    func.lower(CommEntry.key).like(pat, escape="\\"))))))
    return conds


def _summary(row: Any) -> dict[str, Any]:
    return {"id": row.id, "direction": row.direction, "status": row.status,
            "account_type": row.account_type, "account": row.account,
            "start": utc(row.start), "end": utc(row.end)}


def list_communications(conn: Connection, f: LogFilter) -> list[dict[str, Any]]:
    """`log list --json`: [{id, direction, status, account_type, account, start, end}]."""
    f.validate()
    c = Communication
    column = f.sort.lstrip("-")
    key: ColumnElement[Any] = _duration(conn) if column == "duration" else getattr(c, column)
    desc = f.sort.startswith("-")
    q: Select[Any] = select(  # type: ignore[assignment]
        c.id, c.direction, c.status, c.account_type, c.account, c.start, c.end
    ).where(*_where(f))
    q = q.order_by(key.desc() if desc else key.asc(), c.id.desc() if desc else c.id.asc())
    if f.limit:
        q = q.limit(f.limit)
    if f.offset:
        q = q.offset(f.offset)
    return [_summary(r) for r in conn.execute(q).all()]


def count_communications(conn: Connection, f: LogFilter) -> int:
    f.validate()
    return int(conn.execute(select(func.count()).select_from(Communication)
                            .where(*_where(f))).scalar_one())


def get_communication(conn: Connection, comm_id: int, *, priority: str | None = None
                      ) -> dict[str, Any] | None:
    """`log show ID --json`: the communication, its objects and their entries.

    Objects also carry article_id/outbound_id and the ticket number they produced
    (links in the dashboard); `priority` limits the entries shown ('Warn' → Warn, Error).
    """
    row = conn.execute(select(Communication).where(Communication.id == comm_id)).first()
    if row is None:
        return None
    o_ = CommObject
    objs = conn.execute(select(o_.id, o_.type, o_.status, o_.start, o_.end, o_.article_id,
                               o_.outbound_id, Ticket.number.label("ticket_number"))
                        .outerjoin(Article, Article.id == CommObject.article_id)
                        .outerjoin(Ticket, Ticket.id == Article.ticket_id)
                        .where(CommObject.communication_id == comm_id)
                        .order_by(CommObject.id)).all()
    eq = select(CommEntry).where(CommEntry.object_id.in_(
        select(CommObject.id).where(CommObject.communication_id == comm_id)))
    if priority:
        eq = eq.where(CommEntry.priority.in_(priorities_at_least(priority)))
    by_obj: dict[int, list[dict[str, Any]]] = {}
    for e in conn.execute(eq.order_by(CommEntry.id)).all():
        by_obj.setdefault(e.object_id, []).append(
            {"priority": e.priority, "key": e.key, "value": e.value, "time": utc(e.time)})
    out = _summary(row)
    out["transport"] = row.transport
    out["objects"] = [{
        "id": o.id, "type": o.type, "status": o.status, "start": utc(o.start),
        "end": utc(o.end), "article_id": o.article_id, "outbound_id": o.outbound_id,
        "ticket_number": o.ticket_number, "entries": by_obj.get(o.id, []),
    } for o in objs]
    return out


def account_status(statuses: list[str]) -> str:
    """OTOBO's account status from the statuses of its finished Connection objects."""
    failed = sum(1 for s in statuses if s == "Failed")
    if failed == 0:
        return ACCOUNT_OK
    if failed == len(statuses):
        return ACCOUNT_PERMANENT
    return ACCOUNT_INTERMITTENT


def overview(conn: Connection, *, period: float = 86400.0, now: datetime | None = None,
             since: datetime | None = None, status: str | None = None,
             priority: str | None = None, search: str | None = None) -> dict[str, Any]:
    """`log overview --json`: {accounts[{account_type, account, status}], failed,
    processing, average_processing_seconds} for the communications of the last `period`
    seconds (or since `since`); account status from the Connection objects of the same
    period (not the LMTP door's: a client's connection is no account of ours).

    `status`, `priority` and `search` narrow the communications counted as `log list`
    does (a status, an entry at that priority or worse, a text in an entry or the
    account): `--priority Error` gives the accounts and timings of what went wrong."""
    match = LogFilter(status=status, priority=priority, search=search)
    match.validate()
    narrow = _where(match)
    now = now or datetime.now(UTC)
    since = since or now - timedelta(seconds=period)
    c = Communication
    rows = conn.execute(select(c.account_type, c.account, CommObject.status)
                        .join(CommObject, CommObject.communication_id == c.id)
                        .where(CommObject.type == "Connection", CommObject.start >= since,
                               CommObject.status != "Processing",
                               c.account_type != "LMTP", *narrow)).all()
    per: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        per.setdefault((r.account_type, r.account), []).append(r.status)
    accounts = [{"account_type": t, "account": a, "status": account_status(s)}
                for (t, a), s in sorted(per.items())]
    failed = conn.execute(select(func.count()).select_from(c)
                          .where(c.start >= since, c.status == "Failed", *narrow)).scalar_one()
    processing = conn.execute(select(func.count()).select_from(c)
                              .where(c.status == "Processing", *narrow)).scalar_one()
    avg = conn.execute(select(func.avg(_duration(conn)))
                       .where(c.start >= since, c.end.is_not(None),
                              c.status != "Processing", *narrow)).scalar()
    return {"accounts": accounts, "failed": int(failed), "processing": int(processing),
            "average_processing_seconds": round(float(avg), 6) if avg is not None else None}


def status_counts(conn: Connection, *, period: float = 86400.0,
                  now: datetime | None = None) -> dict[str, dict[str, int]]:
    """{direction: {status: n}} for the period (the dashboard's overview table)."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=period)
    c = Communication
    out: dict[str, dict[str, int]] = {d: dict.fromkeys(STATUSES, 0) for d in DIRECTIONS}
    for r in conn.execute(select(c.direction, c.status, func.count())
                          .where(c.start >= since).group_by(c.direction, c.status)).all():
        out.setdefault(r[0], dict.fromkeys(STATUSES, 0))[r[1]] = int(r[2])
    return out


def purge_candidates(conn: Connection, *, successful_after: float, all_after: float,
                     now: datetime | None = None, limit: int = 5000) -> list[int]:
    """Ids to purge: Successful ones older than successful_after, any older than all_after
    (a communication still Processing goes only by the latter)."""
    now = now or datetime.now(UTC)
    c = Communication
    cond = or_(and_(c.status == "Successful",
                    c.start < now - timedelta(seconds=successful_after)),
               c.start < now - timedelta(seconds=all_after))
    # The bound both sides imply, and the order of ix_communication_start: without
    # them SQLite reads the whole log in id order on every run.
    older = c.start < now - timedelta(seconds=min(successful_after, all_after))
    return list(conn.execute(select(c.id).where(older, cond).order_by(c.start, c.id)
                             .limit(limit)).scalars())


def purge_ids(conn: Connection, ids: list[int]) -> int:
    if not ids:
        return 0
    # through the objects: comm_entry.communication_id has no index (0016)
    conn.execute(delete(CommEntry).where(CommEntry.object_id.in_(
        select(CommObject.id).where(CommObject.communication_id.in_(ids)))))
    conn.execute(delete(CommObject).where(CommObject.communication_id.in_(ids)))
    conn.execute(delete(Communication).where(Communication.id.in_(ids)))
    return len(ids)


def purge(conn: Connection, *, successful_after: float, all_after: float,
          now: datetime | None = None, batch: int = 5000) -> int:
    """Delete what purge_candidates selects, in batches; returns how many went."""
    total = 0
    while True:
        ids = purge_candidates(conn, successful_after=successful_after, all_after=all_after,
                               now=now, limit=batch)
        total += purge_ids(conn, ids)
        if len(ids) < batch:
            return total


def known_accounts(conn: Connection) -> list[tuple[str, str]]:
    """(account_type, account) pairs seen in the log, for the dashboard's filter menu."""
    c = Communication
    return [(r[0], r[1]) for r in conn.execute(
        select(c.account_type, c.account).distinct().order_by(c.account_type, c.account)
        .limit(500)).all()]


__all__ = ["DIRECTIONS", "PRIORITIES", "SORT_COLUMNS", "STATUSES", "LogFilter", "account_status",
           "count_communications", "get_communication", "known_accounts",
           "list_communications", "overview", "priorities_at_least", "purge",
           "status_counts", "utc"]
