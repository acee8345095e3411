"""PostgreSQL sessions of deskgate: lock, statement and idle-in-transaction timeouts
(a lock held by a stuck session gives a prompt 451, not a wait for ever), TCP
keepalives and user timeout (a database host that vanished is noticed), and the
writer running a transaction again after a deadlock or serialization failure."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from gateway.store import db
from gateway.store.db import MIGRATION_LOCK, make_engine, migrate
from gateway.store.writer import BatchWriter
from tests.integration.core.stored import Store, db_conf
from tests.peers.lmtp import LmtpClient

pytestmark = pytest.mark.postgres

SHORT_LOCK = "?options=-c%20lock_timeout%3D1s"
MESSAGE = (b"From: Customer <cust@customer.test>\r\nTo: support@example.org\r\n"
           b"Subject: printer on fire\r\nMessage-ID: <held-lock@customer.test>\r\n"
           b"\r\nPlease help.\r\n")


def settings(engine: Engine, *names: str) -> dict[str, str]:
    with engine.connect() as conn:
        return {n: str(conn.execute(text(f"SHOW {n}")).scalar()) for n in names}


@pytest.fixture
def plain(pg_url: str) -> Iterator[Engine]:
    """An engine on the test database without deskgate's session settings: an admin's
    psql, another node's stuck session."""
    eng = create_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def probe(pg_url: str, plain: Engine) -> Iterator[Callable[..., tuple[Engine, BatchWriter]]]:
    """probe(url_suffix="") → (engine, writer) on the test database with a table
    probe(id, v) holding the rows (1, 0) and (2, 0)."""
    with plain.begin() as c:
        c.execute(text("CREATE TABLE probe (id int PRIMARY KEY, v int NOT NULL)"))
        c.execute(text("INSERT INTO probe VALUES (1, 0), (2, 0)"))
    made: list[tuple[Engine, BatchWriter]] = []

    def make(suffix: str = "") -> tuple[Engine, BatchWriter]:
        eng = make_engine(pg_url + suffix)
        w = BatchWriter(eng)
        made.append((eng, w))
        return eng, w

    yield make
    for eng, w in made:
        w.close()
        eng.dispose()


@pytest.fixture
def held_lock(plain: Engine) -> Iterator[Callable[[str], Connection]]:
    """held_lock(sql) runs sql in a transaction left open (as in a forgotten psql
    session) until the test ends or calls .rollback() on the connection."""
    held: list[Connection] = []

    def hold(sql: str) -> Connection:
        conn = plain.connect()
        conn.execute(text(sql))
        held.append(conn)
        return conn

    yield hold
    for conn in held:
        conn.rollback()
        conn.close()


TCP_KEYS = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
            "tcp_user_timeout", "connect_timeout")


def tcp_state(engine: Engine) -> tuple[dict[str, str], dict[str, int]]:
    """The connection's libpq parameters (of TCP_KEYS, those set) and what the
    kernel has on its socket."""
    with engine.connect() as conn:
        pg = conn.connection.dbapi_connection
        params = pg.info.get_parameters()
        with socket.socket(fileno=os.dup(pg.pgconn.socket)) as s:
            kernel = {
                "keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout_ms": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}
    return {k: v for k, v in params.items() if k in TCP_KEYS}, kernel


def probe_values(engine: Engine) -> list[int]:
    with engine.connect() as c:
        return list(c.execute(text("SELECT v FROM probe ORDER BY id")).scalars())


class TestSessionSettings:
    def test_defaults_in_effect_when_the_url_sets_none(self, pg_url):
        """Without settings in the URL every connection gets deskgate's lock, statement
        and idle-in-transaction timeouts, also after a rolled-back transaction."""
        eng = make_engine(pg_url)
        try:
            names = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
            assert settings(eng, *names) == {"lock_timeout": "10s", "statement_timeout": "1min",
                                             "idle_in_transaction_session_timeout": "1min"}
            with eng.connect() as conn:
                conn.execute(text("SELECT 1"))
                conn.rollback()
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "10s"
        finally:
            eng.dispose()

    def test_the_writers_connection_has_them(self, probe):
        """The group-commit writer's kept connection has the lock timeout too."""
        _eng, w = probe()
        assert w.submit(lambda c: c.execute(text("SHOW lock_timeout")).scalar()
                        ).result(10) == "10s"

    def test_the_url_wins(self, pg_url):
        """Settings in the URL's options are kept; the ones it does not name get the
        defaults."""
        eng = make_engine(pg_url + "?options=-c%20lock_timeout%3D5s%20-c%20statement_timeout%3D0")
        try:
            assert settings(eng, "lock_timeout", "statement_timeout",
                            "idle_in_transaction_session_timeout") == {
                "lock_timeout": "5s", "statement_timeout": "0",
                "idle_in_transaction_session_timeout": "1min"}
        finally:
            eng.dispose()

    def test_settings_of_the_database_win(self, pg_url, plain):
        """A DBA's ALTER DATABASE ... SET is kept too."""
        name = pg_url.rsplit("/", 1)[1]
        with plain.begin() as c:
            c.execute(text(f'ALTER DATABASE "{name}" SET lock_timeout = \'3s\''))
        eng = make_engine(pg_url)
        try:
            assert settings(eng, "lock_timeout", "statement_timeout") == {
                "lock_timeout": "3s", "statement_timeout": "1min"}
        finally:
            eng.dispose()

    def test_nodes_wait_for_a_migration_longer_than_the_timeouts(self, pg_url, plain,
                                                                 monkeypatch):
        """A node waits for another node's migration (the advisory lock) however long it
        takes; afterwards its connections have the timeouts again."""
        monkeypatch.setattr(db, "PG_SESSION_DEFAULTS", {
            **db.PG_SESSION_DEFAULTS, "lock_timeout": "300ms", "statement_timeout": "300ms"})
        holding = threading.Event()

        def other_node() -> None:
            with plain.begin() as c:
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                holding.set()
                time.sleep(1.5)

        t = threading.Thread(target=other_node)
        t.start()
        eng = make_engine(pg_url)
        try:
            assert holding.wait(10)
            started = time.monotonic()
            migrate(eng)
            assert time.monotonic() - started > 1.0
            assert settings(eng, "lock_timeout") == {"lock_timeout": "300ms"}
        finally:
            t.join(10)
            eng.dispose()


class TestTcpSettings:
    def test_a_vanished_host_is_noticed_within_a_minute(self, pg_url):
        """Without settings in the URL the socket has keepalives that give up on a
        silent host within a minute and a TCP user timeout as short, not the kernel's
        two hours before the first probe."""
        eng = make_engine(pg_url)
        try:
            params, kernel = tcp_state(eng)
            assert kernel["keepalive"] == 1
            assert kernel["idle"] + kernel["interval"] * kernel["count"] <= 60, kernel
            assert 0 < kernel["user_timeout_ms"] <= 60_000, kernel
            assert params == db.PG_TCP_DEFAULTS
            assert params["keepalives_idle"] == str(kernel["idle"])
            assert params["tcp_user_timeout"] == str(kernel["user_timeout_ms"])
        finally:
            eng.dispose()

    def test_the_url_wins(self, pg_url):
        """Parameters in the URL are kept (connect_timeout too); the others get the
        defaults."""
        eng = make_engine(pg_url + "?keepalives_idle=300&tcp_user_timeout=0"
                          "&connect_timeout=20")
        try:
            params, kernel = tcp_state(eng)
            assert (kernel["idle"], kernel["user_timeout_ms"]) == (300, 0)
            assert kernel["interval"] == int(db.PG_TCP_DEFAULTS["keepalives_interval"])
            assert params == {**db.PG_TCP_DEFAULTS, "keepalives_idle": "300",
                              "tcp_user_timeout": "0", "connect_timeout": "20"}
        finally:
            eng.dispose()

    def test_pgconnect_timeout_wins(self, pg_url, monkeypatch):
        """PGCONNECT_TIMEOUT in the environment is kept as libpq would keep it."""
        monkeypatch.setenv("PGCONNECT_TIMEOUT", "17")
        eng = make_engine(pg_url)
        try:
            assert tcp_state(eng)[0]["connect_timeout"] == "17"
        finally:
            eng.dispose()


class TestHeldLock:
    def deliver_held(self, rg, held_lock) -> tuple[tuple[int, str], float]:
        """Deliver MESSAGE while another session holds a lock that keeps articles from
        being written; returns the DATA reply and how long it took."""
        held = held_lock("LOCK TABLE article IN SHARE MODE")
        client = LmtpClient(rg.socket_path, timeout=15)
        try:
            client.lhlo()
            started = time.monotonic()
            _rcpt, [reply] = client.transaction("cust@customer.test",
                                                ["support@example.org"], MESSAGE)
            took = time.monotonic() - started
        finally:
            held.rollback()
            client.close()
        return reply, took

    def redeliver(self, rg) -> tuple[int, str]:
        client = LmtpClient(rg.socket_path)
        try:
            client.lhlo()
            _rcpt, [reply] = client.transaction("cust@customer.test",
                                                ["support@example.org"], MESSAGE)
        finally:
            client.close()
        return reply

    def test_451_within_the_urls_lock_timeout(self, pg_url, gateway, held_lock):
        """A table lock held by a stuck session: 451 4.3.0 within a few seconds of the
        URL's 1 s lock timeout, nothing stored or quarantined; the retry stores it once."""
        rg = gateway(db_conf(pg_url + SHORT_LOCK))
        (code, reply), took = self.deliver_held(rg, held_lock)
        assert code == 451 and reply.startswith("4.3.0"), reply
        assert took < 8
        st = Store(rg.gateway.engine)
        assert st.articles() == [] and st.quarantine() == []
        assert self.redeliver(rg)[0] == 250
        assert len(st.articles()) == 1 and st.quarantine() == []

    def test_451_within_the_default_lock_timeout(self, pg_url, gateway, held_lock,
                                                 monkeypatch):
        """With nothing in the URL, deskgate's own lock timeout bounds the wait (made
        short here): 451, not a wait until the MTA gives up."""
        monkeypatch.setattr(db, "PG_SESSION_DEFAULTS",
                            {**db.PG_SESSION_DEFAULTS, "lock_timeout": "1s"})
        rg = gateway(db_conf(pg_url))
        (code, reply), took = self.deliver_held(rg, held_lock)
        assert code == 451 and reply.startswith("4.3.0"), reply
        assert took < 8
        st = Store(rg.gateway.engine)
        assert st.articles() == [] and st.quarantine() == []
        assert self.redeliver(rg)[0] == 250
        assert len(st.articles()) == 1


class TestConflictRetry:
    def test_a_deadlocked_transaction_is_run_again(self, probe, plain):
        """A real deadlock with another session (SQLSTATE 40P01): the writer's
        transaction is the victim and runs again, with success, instead of failing."""
        eng, w = probe()
        theirs, ours = threading.Event(), threading.Event()

        def other_session() -> None:
            with plain.connect() as c:
                # the writer's session (1 s) detects the deadlock, so it is the victim
                c.execute(text("SET deadlock_timeout = '30s'"))
                c.execute(text("UPDATE probe SET v = v + 10 WHERE id = 2"))
                theirs.set()
                assert ours.wait(10)
                c.execute(text("UPDATE probe SET v = v + 10 WHERE id = 1"))
                c.commit()

        runs: list[int] = []

        def job(conn: Connection) -> int:
            runs.append(1)
            conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 1"))
            ours.set()
            conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 2"))
            return len(runs)

        t = threading.Thread(target=other_session)
        t.start()
        try:
            assert theirs.wait(10)
            assert w.submit(job).result(30) == 2
        finally:
            ours.set()
            t.join(30)
        assert probe_values(eng) == [11, 11]

    def test_a_serialization_failure_is_run_again(self, probe, plain):
        """A repeatable-read transaction whose row another session changed meanwhile
        (SQLSTATE 40001) runs again on a new snapshot."""
        eng, w = probe()
        runs: list[int] = []

        def job(conn: Connection) -> int:
            runs.append(1)
            conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            conn.execute(text("SELECT v FROM probe WHERE id = 1")).scalar()
            if len(runs) == 1:
                with plain.begin() as other:
                    other.execute(text("UPDATE probe SET v = v + 10 WHERE id = 1"))
            conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 1"))
            return len(runs)

        assert w.submit(job).result(30) == 2
        assert probe_values(eng) == [11, 0]

    def test_a_conflict_that_persists_fails_after_a_few_runs(self, probe, plain):
        """A transaction that keeps failing with a serialization failure is run three
        times in all, then its waiter gets the error (a 451 for a message)."""
        with plain.begin() as c:
            c.execute(text("CREATE FUNCTION conflict() RETURNS int LANGUAGE plpgsql AS $$ "
                           "BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = "
                           "'serialization_failure'; END $$"))
        _eng, w = probe()
        runs: list[int] = []

        def job(conn: Connection) -> Any:
            runs.append(1)
            return conn.execute(text("SELECT conflict()")).scalar()

        with pytest.raises(OperationalError, match="conflict"):
            w.submit(job).result(30)
        assert len(runs) == 3

    def test_a_commit_that_failed_with_a_conflict_is_not_run_again(self, probe, plain):
        """A serialization failure raised by the COMMIT itself: the transaction is not
        run again (whether the server has it is not known in general)."""
        with plain.begin() as c:
            c.execute(text("CREATE FUNCTION conflict_at_commit() RETURNS trigger "
                           "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'conflict at commit' "
                           "USING ERRCODE = 'serialization_failure'; END $$"))
            c.execute(text("CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON probe "
                           "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                           "EXECUTE FUNCTION conflict_at_commit()"))
        eng, w = probe()
        runs: list[int] = []

        def job(conn: Connection) -> None:
            runs.append(1)
            conn.execute(text("INSERT INTO probe VALUES (3, 0)"))

        with pytest.raises(OperationalError, match="conflict at commit"):
            w.submit(job).result(30)
        assert len(runs) == 1
        assert probe_values(eng) == [0, 0]

    def test_a_lock_timeout_is_not_run_again(self, probe, held_lock):
        """A lock timeout is answered at once, not waited for three times over, also
        when the statement's values happen to contain the word "locked"."""
        _eng, w = probe("?options=-c%20lock_timeout%3D300ms")
        held_lock("UPDATE probe SET v = 5 WHERE id = 1")
        runs: list[int] = []

        def job(conn: Connection) -> None:
            runs.append(1)
            conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 1 AND :subject <> ''"),
                         {"subject": "Your account is locked"})

        with pytest.raises(OperationalError, match="lock timeout"):
            w.submit(job).result(30)
        assert len(runs) == 1
