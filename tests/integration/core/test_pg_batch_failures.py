"""A batch that fails because of the database, not of one message: the writer does
not make every message of it wait a lock timeout or a connect attempt in turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from gateway.store.db import make_engine
from gateway.store.writer import BatchWriter
from tests.peers.ports import free_port

pytestmark = pytest.mark.postgres

SHORT_LOCK = "?options=-c%20lock_timeout%3D1s"


@pytest.fixture
def plain(pg_url: str) -> Iterator[Engine]:
    eng = create_engine(pg_url)
    with eng.begin() as c:
        c.execute(text("CREATE TABLE probe (id int PRIMARY KEY, v int NOT NULL)"))
        c.execute(text("INSERT INTO probe VALUES (1, 0)"))
    yield eng
    eng.dispose()


def one_batch(w: BatchWriter, jobs: list) -> list:
    """Submit `jobs` so that the writer takes them as one batch: it is held busy by a
    first job until all are queued."""
    go = threading.Event()
    first = w.submit(lambda _c: go.wait(10))
    futs = [w.submit(j) for j in jobs]
    go.set()
    first.exception(30)          # done, whatever it met
    return futs


class TestHeldTableLock:
    def test_the_batch_fails_after_a_bounded_wait(self, pg_url, plain, monkeypatch):
        """A table locked by another session: once the one-by-one retry has spent its
        budget, the batch's other messages fail at once (4xx) instead of each waiting
        the lock timeout."""
        monkeypatch.setattr(BatchWriter, "ONE_BY_ONE_BUDGET", 0.0, raising=False)
        eng = make_engine(pg_url + SHORT_LOCK)
        w = BatchWriter(eng)
        holder = plain.connect()
        holder.execute(text("LOCK TABLE probe IN ACCESS EXCLUSIVE MODE"))
        runs: list[int] = []

        def job(conn: Connection) -> None:
            runs.append(1)
            conn.execute(text("UPDATE probe SET v = v + 1"))

        try:
            futs = one_batch(w, [job] * 5)
            errors = [f.exception(60) for f in futs]
        finally:
            holder.rollback()
            holder.close()
            w.close()
            eng.dispose()
        assert all(isinstance(e, OperationalError) for e in errors)
        assert "lock timeout" in str(errors[-1])
        assert len(runs) == 2            # the batch, then one message alone: not five

    def test_a_row_lock_holds_up_only_its_message(self, pg_url, plain):
        """A row locked by another session (an agent's ticket, say): the batch is run
        one by one and only the message that needs that row fails."""
        with plain.begin() as c:
            c.execute(text("INSERT INTO probe VALUES (2, 0)"))
        eng = make_engine(pg_url + SHORT_LOCK)
        w = BatchWriter(eng)
        holder = plain.connect()
        holder.execute(text("SELECT * FROM probe WHERE id = 2 FOR UPDATE"))

        def bump(row: int):
            return lambda conn: conn.execute(
                text("UPDATE probe SET v = v + 1 WHERE id = :id"), {"id": row}).rowcount

        try:
            futs = one_batch(w, [bump(1), bump(2), bump(1), bump(1)])
            outcomes = [f.exception(60) is None for f in futs]
        finally:
            holder.rollback()
            holder.close()
            w.close()
            eng.dispose()
        assert outcomes == [True, False, True, True]


class TestDatabaseGone:
    def test_one_reconnect_then_the_batch_fails_at_once(self, monkeypatch):
        """No server at the address: after the batch and one reconnect failed, the other
        messages fail without a connect attempt each (a host that drops packets costs
        the connect timeout per attempt)."""
        eng = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
        attempts: list[int] = []
        event.listen(eng, "do_connect", lambda *_a: attempts.append(1))
        w = BatchWriter(eng)
        try:
            futs = one_batch(w, [lambda c: c.execute(text("SELECT 1"))] * 5)
            errors = [f.exception(60) for f in futs]
        finally:
            w.close()
            eng.dispose()
        assert all(isinstance(e, OperationalError) for e in errors)
        assert len(attempts) <= 3        # held-busy job's, the batch's, one reconnect
