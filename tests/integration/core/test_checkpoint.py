"""SQLite's WAL is copied back into the database file by the writer's Checkpointer
thread, not inside the writer's COMMIT; the WAL stays bounded and nothing is lost."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.store.checkpoint import Checkpointer
from gateway.store.db import make_engine
from gateway.store.writer import BatchWriter

BLOB = os.urandom(8192)


@pytest.fixture
def db(tmp_path: Path):
    path = tmp_path / "cp.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)"))
    writer = BatchWriter(engine)
    yield path, writer
    writer.close()
    engine.dispose()


def insert(writer: BatchWriter, n: int) -> None:
    """n commits of one 8 KB row each (each job waits: one transaction per row)."""
    for _ in range(n):
        writer.submit(lambda conn: conn.execute(
            text("INSERT INTO t (data) VALUES (:d)"), {"d": BLOB})).result(30)


def count(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute("SELECT count(*) FROM t").fetchone()[0])


def test_checkpoints_run_on_their_own_thread_and_the_wal_stays_small(db):
    path, writer = db
    insert(writer, 1500)          # ~4 WAL pages each: 6,000 pages, under the fallback
    cp = writer._checkpointer
    assert cp is not None
    # Due checkpoints that come while one runs are taken together (on a loaded
    # machine one pass can span several CHECKPOINT_EVERY commits), so the count of
    # runs depends on timing; what it must show is that they ran again and again.
    assert cp.runs >= 2
    assert any(t.name == "db-checkpoint" for t in threading.enumerate())
    with writer._conn.begin():       # the writer's connection leaves checkpoints alone
        pages = writer._conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        temp_store = writer._conn.exec_driver_sql("PRAGMA temp_store").scalar()
    assert pages == Checkpointer.FALLBACK_PAGES
    assert temp_store == 2            # MEMORY: no statement journal files in /var/tmp
    # The rows reached the database file while the WAL was started over again
    # (a checkpoint that never completes would leave a WAL of ~24 MB here).
    assert path.stat().st_size > 1500 * 8192
    assert Path(f"{path}-wal").stat().st_size < 4 << 20
    assert count(path) == 1500
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_long_reader_does_not_stop_the_writer(db):
    """A read transaction pins the WAL: the checkpoints copy what they may and never
    wait for it, the writer goes on, and the next checkpoint after it catches up."""
    path, writer = db
    insert(writer, 30)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 30
    t0 = time.monotonic()
    insert(writer, 200)
    assert time.monotonic() - t0 < 30
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 30   # its snapshot
    reader.execute("COMMIT")
    reader.close()
    runs = writer._checkpointer.runs
    insert(writer, 2 * Checkpointer.CHECKPOINT_EVERY)
    deadline = time.monotonic() + 10
    while writer._checkpointer.runs < runs + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer._checkpointer.runs >= runs + 2
    insert(writer, 1)                # starts the WAL over after the complete checkpoint
    assert count(path) == 281
    assert Path(f"{path}-wal").stat().st_size < 4 << 20


def test_close_stops_the_thread_and_a_later_commit_starts_it_again(db):
    _path, writer = db
    insert(writer, Checkpointer.CHECKPOINT_EVERY)
    cp = writer._checkpointer
    thread = cp._thread
    assert thread is not None and thread.is_alive()
    cp.close()
    assert not thread.is_alive()
    insert(writer, Checkpointer.CHECKPOINT_EVERY)
    assert cp._thread is not None and cp._thread.is_alive() and cp._thread is not thread


def test_a_thread_that_died_is_started_again(db, tmp_path):
    """A checkpoint thread that stopped (here: its lock file cannot be opened) is
    replaced at the next due checkpoint, instead of leaving the WAL to the writer's
    fallback inside a COMMIT."""
    path, writer = db
    cp = writer._checkpointer
    lock_path = cp.lock_path
    cp.lock_path = str(tmp_path / "missing" / "cp.db.lock")
    insert(writer, Checkpointer.CHECKPOINT_EVERY)
    dead = cp._thread
    assert dead is not None
    dead.join(10)
    assert not dead.is_alive() and cp.runs == 0
    cp.lock_path = lock_path
    insert(writer, Checkpointer.CHECKPOINT_EVERY)
    assert cp._thread is dead           # not again within RETRY_AFTER of its start
    cp.RETRY_AFTER = 0.0
    insert(writer, Checkpointer.CHECKPOINT_EVERY)
    assert cp._thread is not dead and cp._thread.is_alive()
    deadline = time.monotonic() + 10
    while cp.runs < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cp.runs >= 1
    assert count(path) == 3 * Checkpointer.CHECKPOINT_EVERY


def test_an_in_memory_database_has_none():
    writer = BatchWriter(make_engine("sqlite:///:memory:"))
    assert writer._checkpointer is None
