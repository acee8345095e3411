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
from gateway.store.tables import Delivery, Ticket
from tests.integration.core.stored import POSTFIX_SOCKET_CONF, db_conf

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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
            pytest.skip("smtp-source not installed")
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
