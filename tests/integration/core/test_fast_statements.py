"""Prepared statements on the DBAPI cursor write exactly what Connection.execute writes,
and fail with the same SQLAlchemy exceptions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.commlog import Comm, add_comm
from gateway.store import Deferred, Prepared, deferred_writes, repo
from gateway.store.db import is_temporary, make_engine, migrate
from gateway.store.tables import (
    Article,
    CommEntry,
    CommObject,
    Communication,
    Delivery,
    Ticket,
)
from gateway.store.writer import BatchWriter
from tests.peers.require import not_applicable


@pytest.fixture(autouse=True)
def _fast_path_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the fast path itself, whatever the suite runs with."""
    monkeypatch.delenv("DESKGATE_STORE_FAST_PATH", raising=False)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = (request.getfixturevalue("pg_url") if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'store.db'}")
    eng = make_engine(url)
    migrate(eng)
    yield eng
    eng.dispose()


WHEN = datetime(2026, 11, 27, 8, 30, 15, 123456, tzinfo=UTC)


def _ticket(number: str) -> dict[str, object]:
    return {"number": number, "title": "Drucker kaputt \u2013 «urgent»", "queue": "Raw",
            "state": "new", "state_type": "new", "priority": "3 normal",
            "dynamic_fields": {"Server": "mail1", "n": [1, 2]},
            "created": WHEN, "changed": WHEN}


def _row(engine: Engine, number: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(Ticket).where(Ticket.number == number)).one()
    d = dict(row._mapping)
    d.pop("id")
    d.pop("number")
    return d


def test_same_row_as_sqlalchemy_execute(engine: Engine) -> None:
    prepared = Prepared(insert(Ticket).returning(Ticket.id))
    with engine.begin() as conn:
        fast_id = prepared.execute(conn, _ticket("1"))
        slow_id = conn.execute(insert(Ticket).returning(Ticket.id), _ticket("2")).scalar_one()
    assert isinstance(fast_id, int) and fast_id != slow_id
    fast, slow = _row(engine, "1"), _row(engine, "2")
    assert fast == slow
    # JSON and datetimes come back as what went in; defaults were filled in
    assert fast["dynamic_fields"] == {"Server": "mail1", "n": [1, 2]}
    assert fast["lock"] == "unlock" and fast["owner"] == "" and fast["pending_until"] is None
    created = fast["created"]
    assert isinstance(created, datetime)
    if engine.dialect.name == "postgresql":   # timestamptz: the instant, with a zone
        assert created.tzinfo is not None and created == WHEN
    else:                                     # SQLite stores the UTC wall time
        assert created.tzinfo is None and created == WHEN.replace(tzinfo=None)


def test_factory_defaults_and_missing_required_value(engine: Engine) -> None:
    prepared = Prepared(insert(Ticket).returning(Ticket.id))
    values = _ticket("3")
    del values["dynamic_fields"]           # default=dict
    with engine.begin() as conn:
        prepared.execute(conn, values)
    assert _row(engine, "3")["dynamic_fields"] == {}
    del values["queue"]                    # NOT NULL, no default: an error, not a NULL
    with pytest.raises(KeyError, match="queue"), engine.begin() as conn:
        prepared.execute(conn, {**values, "number": "4"})


def test_unique_violation_is_sqlalchemy_integrity_error(engine: Engine) -> None:
    prepared = Prepared(insert(Delivery))
    row = {"message_id": "<a@b>", "content_hash": "h" * 64, "recipient": "x@y",
           "article_id": None, "outcome": "stored", "created": WHEN}
    with engine.begin() as conn:
        prepared.executemany(conn, [row])
    with pytest.raises(IntegrityError) as info, engine.begin() as conn:
        prepared.executemany(conn, [row])
    assert not is_temporary(info.value)
    with engine.connect() as conn:    # the failed transaction left nothing behind
        assert len(conn.execute(select(Delivery)).all()) == 1


def test_counter_upsert_returns_consecutive_values(engine: Engine) -> None:
    with engine.begin() as conn:
        numbers = [repo.next_ticket_number(conn, "10", WHEN) for _ in range(3)]
    assert numbers == ["202611271000001", "202611271000002", "202611271000003"]


def test_read_only_sqlite_is_temporary(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'ro.db'}")
    migrate(eng)
    eng.dispose()
    ro = make_engine(f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true")
    prepared = Prepared(insert(Article).returning(Article.id))
    with pytest.raises(OperationalError) as info, ro.begin() as conn:
        prepared.execute(conn, {"ticket_id": 1, "direction": "incoming",
                                "sender_type": "customer", "created": WHEN})
    assert is_temporary(info.value)
    ro.dispose()


def _comm(i: int) -> Comm:
    comm = Comm("Incoming", "LMTP", f"peer{i}")
    obj = comm.obj("Message")
    obj.article_id = None
    for k in range(i % 3 + 1):          # 1, 2 or 3 entries
        obj.log("Info", f"K{i}", f"entry {k} of message {i}")
    obj.close("Successful")
    comm.close()
    return comm


def test_insert_rows_returns_ids_in_row_order(engine: Engine) -> None:
    """Several rows per statement (chunks of 64, 32, ... on SQLite); ids match the rows."""
    prepared = Prepared(insert(Ticket).returning(Ticket.id))
    with engine.begin() as conn:
        prepared.execute(conn, _ticket("first"))       # ids do not start at 1
        ids = prepared.insert_rows(conn, [_ticket(f"n{i}") for i in range(100)])
    assert len(ids) == len(set(ids)) == 100
    with engine.connect() as conn:
        by_id = dict(conn.execute(select(Ticket.id, Ticket.number)).all())
    assert [by_id[i] for i in ids] == [f"n{i}" for i in range(100)]


def test_deferred_rows_written_at_the_end_and_linked(engine: Engine) -> None:
    """Deferred communications keep each object and entry with its own communication."""
    comms = [_comm(i) for i in range(40)]
    with engine.begin() as conn, deferred_writes(conn) as later:
        for c in comms:
            add_comm(conn, c, later)
        # nothing is written before the block ends
        assert conn.execute(select(func.count()).select_from(Communication)).scalar() == 0
    with engine.connect() as conn:
        rows = conn.execute(select(Communication.account, CommEntry.key, CommEntry.value)
                            .join(CommObject, CommObject.communication_id == Communication.id)
                            .join(CommEntry, CommEntry.object_id == CommObject.id)
                            .where(CommEntry.communication_id == Communication.id)).all()
    assert len(rows) == sum(i % 3 + 1 for i in range(40))
    for account, key, value in rows:
        i = int(account.removeprefix("peer"))
        assert key == f"K{i}" and value.endswith(f"of message {i}")
    assert all(c.id is not None and c.objects[0].id is not None for c in comms)


def test_deferred_rows_dropped_with_a_failed_block(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn, deferred_writes(conn) as later:
        add_comm(conn, _comm(1), later)
        raise RuntimeError("job failed")
    with engine.begin() as conn:        # and a later transaction does not write them
        add_comm(conn, _comm(2))        # no buffer: written at once
    with engine.connect() as conn:
        assert conn.execute(select(Communication.account)).scalars().all() == ["peer2"]


def test_duplicate_delivery_refused_when_deferred_rows_are_written(engine: Engine) -> None:
    """The unique key still refuses a second delivery of the same message in one batch."""
    with pytest.raises(IntegrityError), engine.begin() as conn, deferred_writes(conn) as later:
        repo.record_deliveries(conn, "<m@x>", "h" * 64, ["a@x"], None, "stored", later)
        repo.record_deliveries(conn, "<m@x>", "h" * 64, ["a@x"], None, "stored", later)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar() == 0


def test_none_in_a_json_column_is_json_null_as_with_execute(engine: Engine) -> None:
    prepared = Prepared(insert(Ticket).returning(Ticket.id))
    with engine.begin() as conn:
        prepared.execute(conn, {**_ticket("j1"), "dynamic_fields": None})
        conn.execute(insert(Ticket), {**_ticket("j2"), "dynamic_fields": None})
    assert _row(engine, "j1") == _row(engine, "j2")


def test_naive_offset_and_missing_datetimes_as_with_execute(engine: Engine) -> None:
    """A naive datetime, one with a non-UTC offset, a date without microseconds and a
    None in a nullable datetime column are stored as Connection.execute stores them."""
    prepared = Prepared(insert(Ticket).returning(Ticket.id))
    india = timezone(timedelta(hours=5, minutes=30))
    for pending in (None, datetime(2026, 12, 1, 9, 0, tzinfo=india)):
        values = {**_ticket("x"), "created": WHEN.replace(tzinfo=None),
                  "changed": datetime(2026, 3, 4, 23, 59, 59, tzinfo=india),
                  "pending_until": pending, "classification": {"queue": "Raw", "p": 0.5}}
        with engine.begin() as conn:
            prepared.execute(conn, {**values, "number": f"d{pending is None}"})
            conn.execute(insert(Ticket), {**values, "number": f"e{pending is None}"})
        assert _row(engine, f"d{pending is None}") == _row(engine, f"e{pending is None}")


def test_prefixed_insert_is_not_rewritten(engine: Engine) -> None:
    """INSERT OR IGNORE (SQLite) keeps its prefix: the shortcuts only take bare inserts."""
    if engine.dialect.name != "sqlite":
        not_applicable("OR IGNORE is SQLite syntax")
    prepared = Prepared(insert(Delivery).prefix_with("OR IGNORE").returning(Delivery.id))
    row = {"message_id": "<p@x>", "content_hash": "h" * 64, "recipient": "x@y",
           "article_id": None, "outcome": "stored", "created": WHEN}
    with engine.begin() as conn:
        first = prepared.execute(conn, row)
        second = prepared.execute(conn, row)       # ignored, not an IntegrityError
    assert first is not None and second is None


class TestWriterBuffer:
    """The BatchWriter hands each transaction's Deferred buffer to the jobs that ask."""

    def test_rows_of_one_batch_written_before_its_commit(self, engine: Engine) -> None:
        """Deferring jobs of one batch share the buffer; their rows are there after the
        commit their futures wait for."""
        writer = BatchWriter(engine)
        seen: list[int] = []

        def job(conn: Connection, later: Deferred) -> None:
            seen.append(id(later))
            repo.record_deliveries(conn, f"<{len(seen)}@x>", "h" * 64, ["a@x"], None, "stored",
                                   later)
            add_comm(conn, _comm(len(seen)), later)
            # nothing written yet: the rows wait for the end of the transaction
            assert conn.execute(select(func.count()).select_from(Delivery)).scalar() == 0

        try:
            gate = threading.Event()
            writer.submit(lambda conn: gate.wait(10))     # holds the writer: the next queue up
            futures = [writer.submit_deferring(job) for _ in range(5)]
            gate.set()
            for f in futures:
                f.result(10)
        finally:
            writer.close()
        assert len(set(seen)) == 1            # one transaction, one buffer
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Delivery)).scalar() == 5
            assert conn.execute(select(func.count()).select_from(Communication)).scalar() == 5

    def test_failed_batch_drops_its_buffer_and_retries_with_a_fresh_one(
            self, engine: Engine) -> None:
        """A batch that fails is retried job by job: the good job's rows are written
        once, the failing job's rows never."""
        writer = BatchWriter(engine)

        def good(conn: Connection, later: Deferred) -> str:
            add_comm(conn, _comm(1), later)
            return "ok"

        def bad(conn: Connection, later: Deferred) -> None:
            add_comm(conn, _comm(2), later)
            raise RuntimeError("this job fails")

        try:
            gate = threading.Event()
            writer.submit(lambda conn: gate.wait(10))
            ok, failed = writer.submit_deferring(good), writer.submit_deferring(bad)
            gate.set()
            assert ok.result(10) == "ok"
            with pytest.raises(RuntimeError):
                failed.result(10)
        finally:
            writer.close()
        with engine.connect() as conn:
            assert conn.execute(select(Communication.account)).scalars().all() == ["peer1"]

    def test_plain_jobs_write_at_once(self, engine: Engine) -> None:
        """Without the buffer (a plain job), add_comm writes the rows right away."""
        writer = BatchWriter(engine)

        def job(conn: Connection) -> int:
            add_comm(conn, _comm(3))
            return int(conn.execute(select(func.count()).select_from(CommEntry)).scalar_one())

        try:
            assert writer.submit(job).result(10) == 1
        finally:
            writer.close()
