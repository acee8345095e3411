"""The group-commit writer's transactions on both backends: ticket numbers counted
within one transaction, and the writer's kept connection (failed transactions,
a connection the server cut)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from gateway.app import Gateway
from gateway.config import load_config
from gateway.model import Envelope
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Ticket, TicketCounter
from gateway.store.writer import BatchWriter

WHEN = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
DAY = "20261203"


@pytest.fixture
def writer(engine):
    w = BatchWriter(engine)
    yield w
    w.close()


@pytest.fixture
def cut_commit(pg_url):
    """cut_commit(n) → (engine, writer) on PostgreSQL with a table probe_rows, whose
    n-th COMMIT reaches the server and then loses its connection before the answer."""
    import psycopg

    made: list[tuple] = []

    def make(n: int):
        eng = make_engine(pg_url)
        migrate(eng)
        with eng.begin() as c:
            c.execute(text("CREATE TABLE probe_rows (id serial primary key, note text)"))
        orig = eng.dialect.do_commit
        commits: list[int] = []

        def do_commit(dbapi_conn):
            orig(dbapi_conn)                       # the server has it ...
            commits.append(1)
            if len(commits) == n:
                dbapi_conn.dbapi_connection.close()   # ... the answer never comes
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        eng.dialect.do_commit = do_commit
        w = BatchWriter(eng)
        made.append((eng, w))
        return eng, w

    yield make
    for eng, w in made:
        w.close()
        eng.dispose()


def counter(engine, day=DAY) -> int | None:
    with engine.connect() as c:
        return c.execute(select(TicketCounter.value).where(TicketCounter.day == day)).scalar()


def serial(number: str) -> int:
    return int(number[-5:])


class TestNumbersInOneTransaction:
    def test_counted_in_memory_and_saved_at_the_end(self, engine, writer):
        """The first number of a transaction comes from the counter row, the next ones
        are counted in memory; the row holds the last one after the commit, and the
        next transaction goes on from there."""
        def job(conn, later):
            first = repo.next_ticket_number(conn, "10", WHEN, later)
            # the row still says `first` inside the transaction: nothing written per number
            mid = conn.execute(select(TicketCounter.value)).scalar()
            rest = [repo.next_ticket_number(conn, "10", WHEN, later) for _ in range(4)]
            return [first, *rest], mid

        numbers, mid = writer.submit_deferring(job).result()
        assert [serial(n) for n in numbers] == [1, 2, 3, 4, 5]
        assert all(n.startswith(f"{DAY}10") for n in numbers)
        assert mid == 1
        assert counter(engine) == 5
        after = writer.submit_deferring(
            lambda conn, later: repo.next_ticket_number(conn, "10", WHEN, later)).result()
        assert serial(after) == 6 and counter(engine) == 6

    def test_a_plain_call_in_the_same_transaction_goes_on_counting(self, engine, writer):
        """A call without the buffer (outbound code, tests) in a transaction that is
        counting in memory takes the next number from memory, not a stale row."""
        def job(conn, later):
            a = repo.next_ticket_number(conn, "10", WHEN, later)
            b = repo.next_ticket_number(conn, "10", WHEN)
            c = repo.next_ticket_number(conn, "10", WHEN, later)
            return [a, b, c]

        numbers = writer.submit_deferring(job).result()
        assert [serial(n) for n in numbers] == [1, 2, 3]
        assert counter(engine) == 3

    def test_days_are_counted_apart(self, engine, writer):
        tomorrow = WHEN.replace(day=4)

        def job(conn, later):
            return [repo.next_ticket_number(conn, "10", w, later)
                    for w in (WHEN, tomorrow, WHEN, tomorrow, tomorrow)]

        numbers = writer.submit_deferring(job).result()
        assert [serial(n) for n in numbers] == [1, 1, 2, 2, 3]
        assert counter(engine) == 2 and counter(engine, "20261204") == 3

    def test_a_failed_transaction_gives_its_numbers_back(self, engine, writer):
        """Numbers counted in a transaction that rolls back are not used up, and the
        next transaction does not pick up the failed one's memory."""
        def failing(conn, later):
            for _ in range(3):
                repo.next_ticket_number(conn, "10", WHEN, later)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            writer.submit_deferring(failing, isolated=True).result()
        assert counter(engine) is None
        again = writer.submit_deferring(
            lambda conn, later: [repo.next_ticket_number(conn, "10", WHEN, later)
                                 for _ in range(2)]).result()
        assert [serial(n) for n in again] == [1, 2]
        assert counter(engine) == 2

    def test_concurrent_deliveries_get_unique_consecutive_numbers(self, db_url, make_confdir):
        """Many messages at once share commits: their numbers are distinct and without
        gaps, and the counter row ends at the last one."""
        root = make_confdir()
        if db_url.startswith("postgresql"):
            (root / "90-db.toml").write_text(f'[gateway]\ndatabase = "{db_url}"\n')
        gw = Gateway(load_config(root))
        try:
            gw.prepare_store()

            async def many() -> list[str]:
                outs = await asyncio.gather(*(gw.pipeline.deliver(Envelope(
                    mail_from="a@customer.test", recipients=("support@example.org",),
                    raw=(f"From: a@customer.test\r\nTo: support@example.org\r\n"
                         f"Subject: n{i}\r\nMessage-ID: <n{i}@c.test>\r\n\r\nhi\r\n").encode()))
                    for i in range(40)))
                return [o.ticket_number for o in outs]

            numbers = asyncio.run(many())
            assert gw.writer.batches < gw.writer.jobs     # commits were shared
            serials = sorted(serial(n) for n in numbers)
            assert serials == list(range(serials[0], serials[0] + 40))
            with gw.engine.connect() as c:
                stored = c.execute(select(Ticket.number)).scalars().all()
                last = c.execute(select(TicketCounter.value)).scalar()
            assert sorted(stored) == sorted(numbers)
            assert last == serials[-1]
        finally:
            gw.close()


class TestKeptConnection:
    def test_one_connection_for_many_transactions(self, engine, writer):
        """The writer keeps its connection between transactions (no checkout per batch)."""
        seen = [writer.submit(lambda conn: conn).result() for _ in range(3)]
        assert seen[0] is seen[1] is seen[2] and not seen[0].closed

    def test_a_failed_transaction_starts_the_next_on_a_fresh_connection(self, engine, writer):
        first = writer.submit(lambda conn: conn).result()

        def bad(conn):
            conn.execute(text("SELECT * FROM no_such_table"))

        with pytest.raises(Exception, match="no_such_table"):
            writer.submit(bad, isolated=True).result()
        assert first.closed                 # given back to the pool (reset there)
        second = writer.submit(lambda conn: conn).result()
        assert second is not first and not second.closed
        assert writer.submit(lambda conn: conn.execute(text("SELECT 1")).scalar()).result() == 1

    @pytest.mark.postgres
    def test_a_connection_the_server_cut_is_replaced_without_an_error(self, pg_url):
        """PostgreSQL ends the writer's idle connection (restart, idle timeout): the next
        job runs on a new connection instead of failing, as the pool's pre-ping would."""
        eng = make_engine(pg_url)
        migrate(eng)
        w = BatchWriter(eng)
        try:
            pid = w.submit(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar()
                           ).result()
            with eng.connect() as admin:
                assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            number = w.submit(lambda conn: repo.next_ticket_number(conn, "10", WHEN)).result()
            assert serial(number) == 1
            new_pid = w.submit(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar()
                               ).result()
            assert new_pid != pid
        finally:
            w.close()
            eng.dispose()

    @pytest.mark.postgres
    def test_a_job_whose_commit_failed_is_not_run_again(self, cut_commit):
        """The server committed, then the connection broke before the reply: the job
        is reported failed (the MTA retries; inbound dedupe finds the delivery), not run
        a second time on a new connection, which would write its rows twice."""
        eng, w = cut_commit(1)
        job = w.submit(lambda conn: conn.execute(
            text("INSERT INTO probe_rows (note) VALUES ('one')")))
        with pytest.raises(Exception, match="closed the connection"):
            job.result(10)
        with eng.connect() as c:
            assert c.execute(text("SELECT count(*) FROM probe_rows")).scalar() == 1
        # and the writer goes on, on a new connection
        assert w.submit(lambda conn: conn.execute(text("SELECT 1")).scalar()).result() == 1

    @pytest.mark.postgres
    def test_a_batch_whose_commit_failed_is_not_run_again_one_by_one(self, cut_commit):
        """The same for a batch: its jobs are not retried one by one (which a failure of
        one of its jobs would do), each waiter gets the error."""
        eng, w = cut_commit(2)                     # the second transaction: the batch
        gate = threading.Event()
        first = w.submit(lambda conn: gate.wait(5))
        time.sleep(0.2)                            # the writer is inside the first job
        jobs = [w.submit(lambda conn, i=i: conn.execute(
            text("INSERT INTO probe_rows (note) VALUES (:n)"), {"n": f"m{i}"}))
            for i in range(3)]
        gate.set()
        assert first.result(10) is True
        for job in jobs:
            with pytest.raises(Exception, match="closed the connection"):
                job.result(10)
        with eng.connect() as c:
            assert c.execute(text("SELECT count(*) FROM probe_rows")).scalar() == 3
        assert (w.batches, w.jobs) == (2, 4)

@pytest.fixture
def sqlite_writer(tmp_path):
    """(writer, other): a writer on a SQLite file, and another open file description
    of its lock file, as another process would hold it."""
    db = tmp_path / "store.db"
    eng = make_engine(f"sqlite:///{db}")
    migrate(eng)
    w = BatchWriter(eng)
    other = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    yield w, other
    os.close(other)
    w.close()
    eng.dispose()


class TestBatchesAcrossProcesses:
    def test_what_arrives_while_another_process_writes_joins_the_batch(self, sqlite_writer):
        """The writer takes the database's lock file before it collects its batch: the
        jobs queued while another process (here: this test) holds it are committed
        together, with one fsync, instead of one small batch after another."""
        w, fd = sqlite_writer
        fcntl.flock(fd, fcntl.LOCK_EX)           # the other process is writing
        first = w.submit(lambda conn: repo.next_ticket_number(conn, "10", WHEN))
        time.sleep(0.3)                          # the writer now waits for the lock
        rest = [w.submit(lambda conn: repo.next_ticket_number(conn, "10", WHEN))
                for _ in range(9)]
        time.sleep(0.1)
        assert not first.done()                  # nothing is written while the lock is held
        fcntl.flock(fd, fcntl.LOCK_UN)
        numbers = [f.result(10) for f in [first, *rest]]
        assert sorted(serial(n) for n in numbers) == list(range(1, 11))
        assert (w.batches, w.jobs) == (1, 10)

    def test_a_retry_pause_lets_the_other_processes_write(self, sqlite_writer):
        """While the writer waits before retrying ("database is locked") it lets go of
        the lock file, so the other workers are not held up by its sleep."""
        w, other = sqlite_writer

        def other_can_lock() -> bool:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

        with w._write_lock():
            assert not other_can_lock()
            pausing = threading.Thread(target=w._pause, args=(0.5,))
            pausing.start()
            time.sleep(0.1)
            assert other_can_lock()
            pausing.join()
            assert not other_can_lock()          # taken back after the pause
