"""Writes and reads shared by the doors. Plain functions of a Connection, so they
compose into one transaction (the group commit of the inbound path)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.config import Config
from gateway.model import AttachmentData
from gateway.store.fast import Deferred, Prepared
from gateway.store.tables import (
    Article,
    Attachment,
    Delivery,
    Handoff,
    Quarantine,
    Queue,
    RawMessage,
    SystemAddress,
    Ticket,
    TicketCounter,
    helpdesk_ref,
    sent_by_us,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


_LENGTHS: dict[str, dict[str, int]] = {}


def fit(model: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Make text values storable in `model`'s columns on every backend.

    Mail is hostile: a 200 KB Message-ID, a 600-character address or a NUL byte
    in a header are accepted by SQLite but refused by PostgreSQL (varchar length,
    no NUL in text), and a refusal must not turn into a 4xx that the MTA retries
    for days. The raw message keeps the exact bytes; the columns get a truncated
    value, and NUL becomes U+FFFD. Changes `values` in place and returns it.
    """
    lengths = _LENGTHS.get(model.__tablename__)
    if lengths is None:
        lengths = _LENGTHS[model.__tablename__] = {
            c.key: c.type.length for c in model.__table__.c
            if getattr(c.type, "length", None)}
    for key, value in values.items():
        if isinstance(value, str):
            if "\x00" in value:
                value = values[key] = value.replace("\x00", "\ufffd")
            limit = lengths.get(key)
            if limit and len(value) > limit:
                values[key] = value[:limit]
    return values


def _fit_one(model: Any, key: str, value: str) -> str:
    return str(fit(model, {key: value})[key])


# Statements of the inbound hot path are built once and compiled once per dialect;
# they run on the driver's cursor (gateway.store.fast), values go in as parameters.
def _counter_stmt(dialect: str) -> Any:
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = ins(TicketCounter).values(day=bindparam("day"), value=1)
    return stmt.on_conflict_do_update(index_elements=["day"],
                                      set_={"value": TicketCounter.value + 1}
                                      ).returning(TicketCounter.value)


# The two databases deskgate supports (db.database_problem refuses others).
_COUNTER = {d: Prepared(_counter_stmt(d), f"ticket_counter.next.{d}", dialect=d)
            for d in ("sqlite", "postgresql")}
_INS_RAW = Prepared(insert(RawMessage).returning(RawMessage.id), "raw_message.insert")
_INS_TICKET = Prepared(insert(Ticket).returning(Ticket.id), "ticket.insert")
_INS_ARTICLE = Prepared(insert(Article).returning(Article.id), "article.insert")
_INS_ATTACHMENT = Prepared(insert(Attachment), "attachment.insert")
_INS_DELIVERY = Prepared(insert(Delivery), "delivery.insert")
_SEL_DELIVERY = select(Delivery.recipient, Delivery.article_id, Delivery.outcome).where(
    Delivery.content_hash == bindparam("h"), Delivery.message_id == bindparam("mid"),
    Delivery.recipient.in_(bindparam("rcpts", expanding=True)))
_SEL_DELIVERY_ONE = select(Delivery.recipient, Delivery.article_id, Delivery.outcome).where(
    Delivery.content_hash == bindparam("h"), Delivery.message_id == bindparam("mid"),
    Delivery.recipient == bindparam("rcpt"))


def next_ticket_number(conn: Connection, system_id: str, when: datetime | None = None,
                       later: Deferred | None = None) -> str:
    """YYYYMMDD + system_id + a per-day counter (atomic on SQLite and PostgreSQL).

    With `later` (the writer transaction's buffer) the first number of a day in the
    transaction is taken from the database and the next ones are counted here; the
    counter row is set to the last one when the transaction ends, before its commit.
    The first upsert holds the row's write lock until that commit (PostgreSQL's row
    lock, SQLite's one writer), so no other transaction or node can count in between;
    a rolled-back transaction takes its numbers back with it.
    """
    day = _day(when or utcnow())
    tx = conn.get_transaction()
    kept = conn.info.get(_COUNTING)
    counting: dict[str, list[int]] | None = kept[1] if kept and kept[0] is tx else None
    if counting is not None and day in counting:
        box = counting[day]
        box[1] += 1
        return f"{day}{system_id}{box[1]:05d}"
    value = int(_COUNTER[conn.dialect.name].execute(conn, {"day": day}))
    if later is not None and tx is not None:
        if counting is None:
            counting = {}
            conn.info[_COUNTING] = (tx, counting)
        counting[day] = [value, value]
        later.add_item("ticket_counter", _save_counters, (day, counting[day]))
    return f"{day}{system_id}{value:05d}"


def _day(when: datetime) -> str:
    """when.strftime("%Y%m%d") without strftime's cost (once per message); a year
    before 1000 goes to strftime, whose %Y is not zero-padded on every platform."""
    if when.year < 1000:
        return when.strftime("%Y%m%d")
    return f"{when.year}{when.month:02d}{when.day:02d}"


# Once per transaction that counted: on the driver's cursor, as the inserts (through
# SQLAlchemy's execute it cost the writer ~35 µs per batch).
_SET_COUNTER = Prepared(update(TicketCounter).where(TicketCounter.day == bindparam("d"))
                        .values(value=bindparam("v")), "ticket_counter.set")
# conn.info key: (the transaction, {day: [first, last]}) of the numbers counted in memory
_COUNTING = "deskgate_ticket_counter"


def _save_counters(conn: Connection, days: list[tuple[str, list[int]]]) -> None:
    """End of the transaction: the counter rows take the last number counted in memory."""
    for day, (first, last) in days:
        if last > first:
            _SET_COUNTER.execute(conn, {"d": day, "v": last})
    conn.info.pop(_COUNTING, None)


def insert_raw(conn: Connection, raw: bytes, sha256: str | None = None,
               created: datetime | None = None) -> int:
    return int(_INS_RAW.execute(conn, {
        "sha256": sha256 or hashlib.sha256(raw).hexdigest(), "size": len(raw), "data": raw,
        "created": created or utcnow()}))


def insert_ticket(conn: Connection, **values: Any) -> int:
    if "created" not in values or "changed" not in values:
        now = utcnow()
        values.setdefault("created", now)
        values.setdefault("changed", now)
    return int(_INS_TICKET.execute(conn, fit(Ticket, values)))


def update_ticket(conn: Connection, ticket_id: int, **values: Any) -> None:
    values.setdefault("changed", utcnow())
    conn.execute(update(Ticket).where(Ticket.id == ticket_id).values(**fit(Ticket, values)))


def insert_article(conn: Connection, attachments: Sequence[AttachmentData] = (),
                   **values: Any) -> int:
    if "created" not in values:
        values["created"] = utcnow()
    article_id = int(_INS_ARTICLE.execute(conn, fit(Article, values)))
    if attachments:
        _INS_ATTACHMENT.executemany(conn, [fit(Attachment, {
            "article_id": article_id, "filename": a.filename, "content_type": a.content_type,
            "content_id": a.content_id, "disposition": a.disposition, "size": len(a.content),
            "content": a.content}) for a in attachments])
    return article_id


def find_deliveries(conn: Connection, message_id: str, content_hash: str,
                    recipients: Iterable[str]) -> dict[str, tuple[int | None, str]]:
    """Recipients that already have this message: recipient → (article_id, outcome)."""
    message_id = _fit_one(Delivery, "message_id", message_id)
    rcpts = [_fit_one(Delivery, "recipient", r) for r in recipients]
    if len(rcpts) == 1:
        rows = conn.execute(_SEL_DELIVERY_ONE, {"h": content_hash, "mid": message_id,
                                                "rcpt": rcpts[0]}).all()
    else:
        rows = conn.execute(_SEL_DELIVERY, {"h": content_hash, "mid": message_id,
                                            "rcpts": rcpts}).all()
    return {r.recipient: (r.article_id, r.outcome) for r in rows}


def articles_by_message_ids(conn: Connection, message_ids: Sequence[str], *,
                            sent_only: bool = False) -> list[Any]:
    """The articles stored with one of these Message-IDs (exactly as given), oldest
    first, as rows of (id, ticket_id, direction, message_id).

    An inbound article is found through its deliveries (the unique key leads with
    the Message-ID), one deskgate sent through the article's own index, which holds
    only those (migration 0016). `sent_only`: only the articles deskgate sent.
    """
    if not message_ids:
        return []
    ids = list(dict.fromkeys(message_ids))
    sent = select(Article.id, Article.ticket_id, Article.direction, Article.message_id).where(
        Article.message_id.in_(ids), sent_by_us(Article.direction))
    if sent_only:
        return list(conn.execute(sent.order_by(Article.id)).all())
    inbound = (select(Article.id, Article.ticket_id, Article.direction, Delivery.message_id)
               .select_from(Delivery).join(Article, Article.id == Delivery.article_id)
               .where(Delivery.message_id.in_(ids), Article.direction == "incoming"))
    rows = {r.id: r for r in conn.execute(union_all(sent, inbound)).all()}
    return [rows[k] for k in sorted(rows)]


def record_deliveries(conn: Connection, message_id: str, content_hash: str,
                      recipients: Iterable[str], article_id: int | None, outcome: str,
                      later: Deferred | None = None) -> None:
    """One delivery row per distinct recipient; with `later` (the writer transaction's
    buffer) they are written at the end of the transaction, with the batch's others."""
    now = utcnow()
    # One row per distinct recipient: the same address may come twice in one
    # envelope (RCPT TO:<Support@x> and <support@x> are lowercased alike), and a
    # second row would break the unique key, turning the message into a 451 loop.
    unique: dict[str, dict[str, Any]] = {}
    for r in recipients:
        row = fit(Delivery, {"message_id": message_id, "content_hash": content_hash,
                             "recipient": r, "article_id": article_id, "outcome": outcome,
                             "created": now})
        unique.setdefault(row["recipient"], row)
    rows = list(unique.values())
    if later is None:
        _INS_DELIVERY.executemany(conn, rows)
        return
    # Nobody reads them back in this transaction: a second copy of the message in
    # the same batch is refused by the unique key when they are written, which fails
    # the batch; the writer then retries job by job, and the copy's dedupe sees the
    # first one committed (a duplicate, answered 250). Costs time, loses nothing.
    for row in rows:
        later.add(_INS_DELIVERY, row)


def insert_quarantine(conn: Connection, *, source: str, envelope_from: str,
                      recipients: Sequence[str], reason: str, detail: str, raw: bytes) -> int:
    return conn.execute(insert(Quarantine).values(**fit(Quarantine, dict(
        source=source, envelope_from=envelope_from, recipients=list(recipients), reason=reason,
        detail=detail, raw=raw, created=utcnow()))).returning(Quarantine.id)).scalar_one()


# pg_advisory_xact_lock key of sync_config's writes: "dg-confs" in ASCII.
CONFIG_LOCK = 0x64672D636F6E6673


def sync_config(conn: Connection, cfg: Config) -> None:
    """Mirror [[queue]] and [[address]] into the database.

    An address that disappeared from the files stays, marked invalid, because
    history refers to it; the same for queues. Only rows that differ are written
    (and get a new `changed`), so an unchanged configuration costs two reads and
    no write: `deskgate deliver` runs this once per message.

    On PostgreSQL, nodes that find the same rows to write at the same moment (they
    start together, or `deliver` after a configuration change) take turns on an
    advisory lock held until the commit, and the later one reads again: what the
    first one wrote is then there, instead of a unique-key error.
    """
    if not _sync_config(conn, cfg, write=False):
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CONFIG_LOCK})
    _sync_config(conn, cfg, write=True)


def _sync_config(conn: Connection, cfg: Config, *, write: bool) -> bool:
    """Whether the rows differ from the configuration; with `write`, make them equal."""
    now = utcnow()
    differs = False

    def change(stmt: Any) -> bool:
        nonlocal differs
        differs = True
        if write:
            conn.execute(stmt)
        return not write        # True: stop here, the answer is known

    existing_q = {r.name: r for r in conn.execute(select(Queue)).all()}
    for q in cfg.queue:
        vals = {"address": q.address, "follow_up": q.follow_up, "comment": q.comment,
                "valid": True}
        if q.name in existing_q:
            if not _same(existing_q[q.name], vals) and change(
                    update(Queue).where(Queue.name == q.name).values(**vals, changed=now)):
                return True
        elif change(insert(Queue).values(name=q.name, **vals, changed=now)):
            return True
    names = {q.name for q in cfg.queue}
    for name, row in existing_q.items():
        if name not in names and row.valid and change(
                update(Queue).where(Queue.name == name).values(valid=False, changed=now)):
            return True

    existing_a = {r.email: r for r in conn.execute(select(SystemAddress)).all()}
    for a in cfg.address:
        vals = {"display_name": a.display_name, "queue": a.queue, "valid": a.valid,
                "comment": a.comment, "source": a.source, "in_config": True}
        if a.email in existing_a:
            if not _same(existing_a[a.email], vals) and change(
                    update(SystemAddress).where(SystemAddress.email == a.email)
                    .values(**vals, changed=now)):
                return True
        elif change(insert(SystemAddress).values(email=a.email, **vals, changed=now)):
            return True
    emails = {a.email for a in cfg.address}
    for email, arow in existing_a.items():
        if email not in emails and (arow.in_config or arow.valid != "invalid") and change(
                update(SystemAddress).where(SystemAddress.email == email).values(
                    valid="invalid", in_config=False, changed=now)):
            return True
    return differs


def _same(row: Any, vals: dict[str, Any]) -> bool:
    return all(getattr(row, k) == v for k, v in vals.items())


_SEL_ADDRESS_EMAILS = select(SystemAddress.email)


def retired_addresses(conn: Connection, cfg: Config) -> frozenset[str]:
    """The system addresses the database knows and `cfg` no longer has: removed from
    the files, they stay in the database as invalid (sync_config), and RCPT refuses
    them as invalid (550 5.2.1) instead of as unknown. Also right before sync_config
    wrote `cfg` (a reload builds its runtime first): an address just removed is in
    the database, not in `cfg`."""
    configured = {a.email for a in cfg.address}
    return frozenset(e for e in conn.execute(_SEL_ADDRESS_EMAILS).scalars()
                     if e not in configured)


def load_retired(cfg: Config) -> frozenset[str]:
    """retired_addresses over a connection of its own: the Runtime builder, run when a
    process loads or reloads its configuration, so RCPT looks an address up in a set
    instead of the database. Empty when there is nothing to read yet (no SQLite file,
    no table before the first migration; the file is not created here) and, logged,
    when the database cannot be read: those addresses then answer as unknown until
    the next reload."""
    import structlog
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.store.db import make_engine

    url = make_url(cfg.database_url)
    db = url.database or ""
    if url.get_backend_name() == "sqlite" and (
            not db or db == ":memory:" or (not db.startswith("file:") and not Path(db).exists())):
        return frozenset()
    engine = make_engine(cfg.database_url, pool_size=1, fast_path=False)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(SystemAddress.__tablename__):
                return frozenset()
            return retired_addresses(conn, cfg)
    except SQLAlchemyError as exc:
        structlog.get_logger(__name__).warning(
            "retired system addresses not read; they answer as unknown until a reload",
            error=" ".join(str(getattr(exc, "orig", None) or exc).split())[:500])
        return frozenset()
    finally:
        engine.dispose()


class RetiredAddresses(AbstractSet[str]):
    """The retired addresses of one configuration (retired_addresses), read when first
    needed: on its own connection (load_retired) at the first lookup, or on a
    connection the caller has open (`read`), as Gateway.prepare_store and every
    reload do right after sync_config. So building a Runtime opens no database
    connection, and a `deskgate deliver` to a configured address never reads them.
    Read twice by two threads at once gives the same set twice: no lock."""

    __slots__ = ("_config", "_emails")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._emails: frozenset[str] | None = None

    def read(self, conn: Connection) -> None:
        self._emails = retired_addresses(conn, self._config)

    def _get(self) -> frozenset[str]:
        emails = self._emails
        if emails is None:
            emails = self._emails = load_retired(self._config)
        return emails

    def __contains__(self, email: object) -> bool:
        return email in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


_INS_HANDOFF = Prepared(insert(Handoff).returning(Handoff.id), "handoff.insert")


def insert_handoff(conn: Connection, values: dict[str, Any]) -> int:
    """The helpdesk hand-off row of a stored article (on the inbound hot path)."""
    return int(_INS_HANDOFF.execute(conn, values))


def ticket_by_number(conn: Connection, number: str) -> Any:
    """By deskgate's number, else by the helpdesk's (a ticket handed off to a helpdesk)."""
    row = conn.execute(select(Ticket).where(Ticket.number == number)).first()
    if row is None and number:
        row = conn.execute(select(Ticket).where(Ticket.helpdesk_ticket_number == number,
                                                helpdesk_ref(Ticket.helpdesk_ticket_number))
                           .order_by(Ticket.id).limit(1)).first()
    return row


_SEL_TICKET_BY_ID = select(Ticket).where(Ticket.id == bindparam("tid"))


def ticket_by_id(conn: Connection, ticket_id: int) -> Any:
    return conn.execute(_SEL_TICKET_BY_ID, {"tid": ticket_id}).first()
