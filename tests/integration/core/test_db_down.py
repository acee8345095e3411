"""Database down: the gateway answers 451 4.3.0 per recipient, Postfix defers the
message, and its retry after recovery delivers it exactly once."""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL, pg_unreachable
from tests.integration.core.stored import db_conf
from tests.peers.require import missing_peer, not_applicable

pytestmark = pytest.mark.postfix

SENDER = "customer@customer.test"
RCPTS = ["support@example.org", "sales@example.org"]


def send(postfix, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(RCPTS)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@customer.test>"
    msg.set_content("The database is down, but this must not be lost.\n")
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
        assert s.send_message(msg, from_addr=SENDER, to_addrs=RCPTS) == {}


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """chattr +i: writes fail even for root (file modes do not stop root)."""
    if not shutil.which("chattr"):
        missing_peer("chattr not installed (Debian package e2fsprogs)")
    proc = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        not_applicable(f"chattr +i not possible here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


class TestDatabaseDown:
    def test_sqlite_unwritable_then_retry(self, postfix, pf_gateway, store_of):
        """SQLite file immutable → 451 4.3.0 per recipient; Postfix's retry stores one ticket."""
        rg = pf_gateway()
        db = Path(rg.gateway.engine.url.database or "")
        wal = db.with_name(db.name + "-wal")
        assert db.exists() and wal.exists()
        since = postfix.log_offset()
        with immutable(db, wal):
            send(postfix, "sqlite down")
            for r in RCPTS:
                postfix.wait_log(rf"to=<{r}>.*dsn=4\.3\.0, status=deferred .*451 4\.3\.0",
                                 since=since)
            [entry] = postfix.queue_entries()
            assert sorted(r["address"] for r in entry["recipients"]) == sorted(RCPTS)
        after = postfix.log_offset()
        postfix.flush()
        postfix.wait_queue_empty(flush=True)
        for r in RCPTS:
            postfix.wait_log(rf"to=<{r}>.*dsn=2\.1\.5, status=sent", since=after)
        st = store_of(rg)
        assert [t.title for t in st.tickets()] == ["sqlite down"]
        assert len(st.articles()) == 1

    @pytest.mark.postgres
    def test_postgres_unreachable_then_retry(self, pg_url, postfix, pf_gateway, store_of):
        """PostgreSQL refusing connections → 451 4.3.0; after recovery the retry stores once."""
        rg = pf_gateway(db_conf(pg_url))
        assert rg.gateway.engine.dialect.name == "postgresql"
        since = postfix.log_offset()
        with pg_unreachable(pg_url):
            send(postfix, "postgres down")
            for r in RCPTS:
                postfix.wait_log(rf"to=<{r}>.*dsn=4\.3\.0, status=deferred .*451 4\.3\.0",
                                 since=since)
            assert len(postfix.queue_entries()) == 1
        after = postfix.log_offset()
        postfix.flush()
        postfix.wait_queue_empty(flush=True)
        for r in RCPTS:
            postfix.wait_log(rf"to=<{r}>.*dsn=2\.1\.5, status=sent", since=after)
        st = store_of(rg)
        assert [t.title for t in st.tickets()] == ["postgres down"]
        assert len(st.articles()) == 1

    @pytest.mark.postgres
    def test_postgres_connection_killed_mid_transaction(self, pg_url, postfix, pf_gateway,
                                                         store_of, monkeypatch):
        """The server ends the gateway's connection while a message's transaction is open:
        451 4.3.0, nothing half-stored, and Postfix's retry stores it once."""
        rg = pf_gateway(db_conf(pg_url))
        name = pg_url.rsplit("/", 1)[1]
        stages = rg.gateway.pipeline.stages
        real_store = stages.fn("commit", "store")
        in_store = threading.Event()
        slow = {"on": True}

        def slow_store(ctx, rt, conn):
            real_store(ctx, rt, conn)
            if slow["on"]:
                in_store.set()
                time.sleep(1.5)

        rg.gateway.pipeline.stages = stages.with_stage("commit", "store", slow_store)
        since = postfix.log_offset()
        send(postfix, "killed mid transaction")
        assert in_store.wait(30)
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                killed = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name}).scalar()
        finally:
            admin.dispose()
        assert killed >= 1
        for r in RCPTS:
            postfix.wait_log(rf"to=<{r}>.*dsn=4\.3\.0, status=deferred .*451 4\.3\.0",
                             since=since)
        assert store_of(rg).tickets() == []
        slow["on"] = False
        after = postfix.log_offset()
        postfix.flush()
        postfix.wait_queue_empty(flush=True)
        for r in RCPTS:
            postfix.wait_log(rf"to=<{r}>.*dsn=2\.1\.5, status=sent", since=after)
        st = store_of(rg)
        assert [t.title for t in st.tickets()] == ["killed mid transaction"]
        assert len(st.articles()) == 1


REPO_ROOT = Path(__file__).resolve().parents[3]
STDIN_MSG = (b"From: customer@customer.test\nTo: support@example.org\nSubject: via deliver\n"
             b"Message-ID: <deliver-down@customer.test>\n\nhello\n")


def deliver(conf: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "deliver",
                           "-r", "support@example.org"], input=STDIN_MSG, capture_output=True,
                          cwd=REPO_ROOT, timeout=120, check=False)


class TestDeliverDatabaseDown:
    def test_sqlite_unwritable_exit_75_then_ok(self, make_confdir):
        """`deskgate deliver` exits 75 (tempfail, the MTA retries) while SQLite cannot be
        written, and 0 once it can."""
        conf = make_confdir()
        first = subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "db",
                                "upgrade"], capture_output=True, cwd=REPO_ROOT, timeout=120,
                               check=False)
        assert first.returncode == 0, first.stderr
        db = conf.parent / "var" / "deskgate.db"
        with immutable(db):
            down = deliver(conf)
        assert down.returncode == 75, down.stderr
        up = deliver(conf)
        assert up.returncode == 0, up.stderr
        assert b"new: ticket" in up.stdout

    @pytest.mark.postgres
    def test_postgres_unreachable_exit_75_then_ok(self, pg_url, make_confdir):
        """`deskgate deliver` exits 75 while PostgreSQL refuses connections, 0 afterwards."""
        conf = make_confdir(db_conf(pg_url))
        with pg_unreachable(pg_url):
            down = deliver(conf)
        assert down.returncode == 75, down.stderr
        up = deliver(conf)
        assert up.returncode == 0, up.stderr
