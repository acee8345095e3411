"""Fakes for unit tests of the inbound stages: no migrated database, no key files, no
wall clock, no conf.d on disk.

A stage is a function of (MessageContext, Runtime) — commit stages also get a SQLAlchemy
Connection — so a unit test needs a Runtime, a context and, for commit stages, a
database:

- `FakeClock`: what the stages take "now" from (`Runtime.clock`, gateway.clock); it
  stands still until the test moves it.
- `FakeStore`: an in-memory SQLite database created from the table metadata
  (gateway.store.tables) instead of the Alembic migrations, with `transaction()`
  giving a Connection and its Deferred buffer as the writer does. Chosen over an
  in-memory object implementing the repo calls because commit stages are plain
  functions of a Connection and several query it directly (follow-up lookups by
  number, Message-ID and participants; the auto-response limits); dedupe relies on
  the unique delivery key and the store stage on the ticket-counter upsert. An object
  re-implementing those would be a second database with its own behaviour; SQLite
  from the same metadata runs the real statements (the fast path included) in about
  a millisecond. tests/integration/core/test_store_backends.py keeps the metadata and
  the migrations in agreement.
- `no_keys()`: crypto key stores holding no key and no GnuPG home, touching nothing
  on disk: the decrypt stage sees encrypted mail it cannot open and signatures it
  cannot check, and says so. Real S/MIME and PGP run against openssl and gpg in the
  crypto integration tests; a fake cipher here would test nothing.
- `config()`, `runtime()`, `context()`: a Config built in memory, a Runtime with
  the fakes, a MessageContext for raw bytes (parsed, as after the parse stage).

Example (a commit stage against the fake store):

    store, clock = FakeStore(), FakeClock()
    rt = runtime(clock=clock)
    ctx = context(b"From: a@customer.test\\r\\nSubject: hi\\r\\n\\r\\nbody\\r\\n")
    with store.transaction() as (conn, later):
        ctx.deferred = later
        ticket.store(ctx, rt, conn)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, create_engine, event, func, insert, select
from sqlalchemy.engine import Row
from sqlalchemy.pool import StaticPool

from gateway.commlog import CommObj
from gateway.config import AddressConfig, Config, QueueConfig
from gateway.crypto.keystore import CryptoStores, PgpStore, SmimeStore
from gateway.inbound.parse import parse_message
from gateway.model import Envelope, MessageContext
from gateway.runtime import Runtime
from gateway.store import Deferred
from gateway.store.tables import Article, Base, Delivery, Ticket

# Where nothing is: the fakes' paths (key stores, conf.d) point here and never create it.
NOWHERE = Path("/nonexistent/deskgate-testing")


class FakeClock:
    """A clock that only moves when told; timezone-aware UTC."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        """Move forward (advance(90), advance(days=1)); returns the new time."""
        self._now += timedelta(seconds=seconds, **delta)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


class FakeStore:
    """An in-memory SQLite database with deskgate's tables, created from the metadata."""

    def __init__(self) -> None:
        # One connection shared by every checkout: an in-memory database lives in it.
        self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                    connect_args={"check_same_thread": False})

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        Base.metadata.create_all(self.engine)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[tuple[Connection, Deferred]]:
        """A transaction and its Deferred buffer, flushed before the commit (as the
        BatchWriter does); rolled back, buffer and all, when the block raises."""
        with self.engine.begin() as conn:
            later = Deferred()
            yield conn, later
            later.flush(conn)

    def rows(self, table: Any) -> Sequence[Row[Any]]:
        """Every row of a table (a model class or a Table), in id order when it has one."""
        t: Table = table if isinstance(table, Table) else table.__table__
        order = list(t.primary_key.columns)
        with self.engine.connect() as conn:
            return conn.execute(select(t).order_by(*order)).all()

    def count(self, table: Any) -> int:
        t: Table = table if isinstance(table, Table) else table.__table__
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t)).scalar_one())

    def add_ticket(self, number: str, *, queue: str = "Raw", state: str = "open",
                   state_type: str = "open", customer: str = "carla@customer.test",
                   message_id: str = "", when: datetime | None = None) -> tuple[int, int]:
        """A ticket with one incoming article from `customer`; (ticket id, article id)."""
        when = when or datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        with self.engine.begin() as conn:
            tid = conn.execute(insert(Ticket).returning(Ticket.id), {
                "number": number, "title": f"ticket {number}", "queue": queue, "state": state,
                "state_type": state_type, "priority": "3 normal", "customer_user": customer,
                "customer_no": customer, "created": when, "changed": when}).scalar_one()
            aid = conn.execute(insert(Article).returning(Article.id), {
                "ticket_id": tid, "direction": "incoming", "sender_type": "customer",
                "from_addr": customer, "from_email": customer, "message_id": message_id,
                "subject": f"ticket {number}", "created": when}).scalar_one()
            if message_id:      # received: its delivery finds it by Message-ID, as in the store
                conn.execute(insert(Delivery), {
                    "message_id": message_id, "recipient": "support@example.org",
                    "content_hash": hashlib.sha256(message_id.encode()).hexdigest(),
                    "article_id": aid, "outcome": "stored", "created": when})
        return int(tid), int(aid)

    def close(self) -> None:
        self.engine.dispose()


def no_keys(*, store_decrypted_body: bool = True) -> CryptoStores:
    """Key stores with no S/MIME certificate and no GnuPG home; nothing on disk."""
    return CryptoStores(SmimeStore(NOWHERE / "smime", NOWHERE / "ca.pem"),
                        PgpStore(NOWHERE / "gnupg"), store_decrypted_body)


def config(*, queues: Sequence[QueueConfig] = (), addresses: Sequence[AddressConfig] = (),
           **sections: Any) -> Config:
    """A Config built in memory (no conf.d, no validation): the default sections, the
    queues Raw + Support with support@example.org unless given, and any section
    replaced by keyword (postmaster=PostmasterConfig(...), ...)."""
    if not queues:
        queues = (QueueConfig(name="Raw"),
                  QueueConfig(name="Support", address="support@example.org"))
    if not addresses:
        addresses = tuple(AddressConfig(email=q.address, queue=q.name) for q in queues
                          if q.address)
    return Config(root=NOWHERE, conf_dir=NOWHERE / "conf.d", queue=tuple(queues),
                  address=tuple(addresses), **sections)


def runtime(cfg: Config | None = None, *, clock: FakeClock | None = None,
            crypto: CryptoStores | None = None, filters: Any = None) -> Runtime:
    """A Runtime with the fakes: in-memory config, FakeClock, no_keys(); `filters` are
    compiled ones (gateway.inbound.filters.compile_filters) or None for none."""
    return Runtime(config=cfg or config(), filters=filters, crypto=crypto or no_keys(),
                   clock=clock or FakeClock())


def context(raw: bytes, *, mail_from: str = "carla@customer.test",
            recipients: Sequence[str] = ("support@example.org",), trusted: bool = False,
            parsed: bool = True) -> MessageContext:
    """A MessageContext for `raw`, parsed as after the parse stage (unless parsed=False)."""
    env = Envelope(mail_from=mail_from, recipients=tuple(recipients),
                   raw=raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), trusted=trusted)
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    if parsed:
        ctx.parsed = parse_message(env.raw)
    return ctx
