"""The whole chain as deployed: smtp-source → Postfix (SMTP) → LMTP, several
connections at once → `deskgate serve` with two pre-forked LMTP workers, on
SQLite and on PostgreSQL. Every message is a ticket on the first attempt."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import load_config
from gateway.store.db import make_engine
from gateway.store.tables import Article, Delivery, Ticket
from tests.integration.core.stored import POSTFIX_SOCKET_CONF, db_conf
from tests.peers.require import missing_peer
from tests.peers.serve import stop_serve

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
SERVE_CONF = """
[lmtp]
workers = 2
unknown_recipient = "default-queue"
"""
MESSAGES = 150


@contextlib.contextmanager
def serve(conf: Path):
    """`deskgate serve` as a process; stopped with SIGTERM (by its PID) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf), "serve"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield proc
    finally:
        stop_serve(proc)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request) -> dict[str, str]:
    if request.param == "postgresql":
        return db_conf(request.getfixturevalue("pg_url"))
    return {}


class TestServeBehindPostfix:
    def test_smtp_source_through_postfix_into_serve(self, postfix, make_confdir, database):
        """150 messages with two recipients each, 10 SMTP sessions into Postfix, relayed over
        LMTP to two gateway workers: 150 tickets, 300 deliveries, nothing deferred."""
        if not shutil.which("smtp-source"):
            missing_peer("smtp-source not installed")
        root = postfix.base / f"serve-{os.urandom(4).hex()}"
        conf = make_confdir({"20-postfix.toml": POSTFIX_SOCKET_CONF,
                             "40-serve.toml": SERVE_CONF, **database}, root=root)
        root.chmod(0o755)
        sock = root / "var" / "run" / "lmtp.sock"
        link = postfix.base / "lmtp.sock"
        since = postfix.log_offset()
        with serve(conf) as proc:
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert sock.exists(), "deskgate serve did not create its LMTP socket"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(sock)
            src = subprocess.run(["smtp-source", "-s", "10", "-m", str(MESSAGES), "-r", "2",
                                  "-l", "3000", "-f", "customer@customer.test",
                                  "-t", "support@example.org", f"127.0.0.1:{postfix.port}"],
                                 capture_output=True, text=True, timeout=120, check=False)
            assert src.returncode == 0, src.stderr
            postfix.wait_queue_empty(timeout=120)
            engine = make_engine(load_config(conf).database_url)
            try:
                with engine.connect() as conn:
                    tickets = conn.execute(select(func.count()).select_from(Ticket)).scalar()
                    deliveries = conn.execute(
                        select(func.count()).select_from(Delivery)).scalar()
            finally:
                engine.dispose()
            assert proc.poll() is None
        assert proc.returncode == 0
        link.unlink()
        lines = [d for d in postfix.deliveries(since) if d["service"] == "deskgate/lmtp"]
        assert len(lines) == 2 * MESSAGES
        assert {d["status"] for d in lines} == {"sent"}, [
            d for d in lines if d["status"] != "sent"][:3]
        assert (tickets, deliveries) == (MESSAGES, 2 * MESSAGES)


def count(conf: Path, what) -> int:
    engine = make_engine(load_config(conf).database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(what)).scalar_one())
    finally:
        engine.dispose()


class TestStopUnderLoad:
    def test_sigterm_mid_stream_loses_and_duplicates_nothing(self, postfix, make_confdir,
                                                             database):
        """SIGTERM to `deskgate serve` while Postfix is delivering, then a restart and a
        flush: every message is stored exactly once (no loss, no duplicate article)."""
        if not shutil.which("smtp-source"):
            missing_peer("smtp-source not installed")
        total = 200
        root = postfix.base / f"stop-{os.urandom(4).hex()}"
        conf = make_confdir({"20-postfix.toml": POSTFIX_SOCKET_CONF,
                             "40-serve.toml": SERVE_CONF, **database}, root=root)
        root.chmod(0o755)
        sock = root / "var" / "run" / "lmtp.sock"
        link = postfix.base / "lmtp.sock"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(sock)
        since = postfix.log_offset()
        with serve(conf) as first:
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sock.exists(), "the first serve did not come up"
            src = subprocess.Popen(["smtp-source", "-s", "5", "-m", str(total), "-l", "2000",
                                    "-f", "customer@customer.test", "-t",
                                    "support@example.org", f"127.0.0.1:{postfix.port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 60
                while count(conf, Ticket) < 30 and time.monotonic() < deadline:
                    time.sleep(0.05)
                first.send_signal(signal.SIGTERM)
                assert first.wait(60) == 0
                stopped_at = count(conf, Ticket)
                sock.unlink(missing_ok=True)   # the next serve binds it anew
                _, err = src.communicate(timeout=120)
                assert src.returncode == 0, err
            finally:
                if src.poll() is None:
                    src.kill()
                    src.wait()
                if src.stderr:
                    src.stderr.close()
        # the stop came while Postfix was delivering: some stored, not all
        assert 30 <= stopped_at < total, stopped_at
        with serve(conf):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not sock.exists():
                time.sleep(0.1)
            postfix.flush()
            postfix.wait_queue_empty(timeout=120, flush=True)
            tickets, articles = count(conf, Ticket), count(conf, Article)
        link.unlink()
        assert (tickets, articles) == (total, total)
        sent = [d for d in postfix.deliveries(since)
                if d["service"] == "deskgate/lmtp" and d["status"] == "sent"]
        assert len(sent) == total
