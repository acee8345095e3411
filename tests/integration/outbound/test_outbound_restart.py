"""`deskgate serve` stopped or killed with messages queued: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from gateway.store.tables import CommEntry, OutboundMessage
from tests.conftest import free_port
from tests.integration.outbound.conftest import outbound_toml, wait_for
from tests.peers.require import missing_peer
from tests.peers.smarthost import AuthSink, SmtpSink, wait_port

REPO = Path(__file__).resolve().parents[3]


class Serve:
    """`python -m gateway serve` as a child process, stopped by its PID."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = (self.conf.parent / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(self.conf),
                                      "serve"], cwd=self.conf.parent, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_port(port, 30)
        except TimeoutError:
            raise AssertionError((self.conf.parent / "serve.log").read_text()[-3000:]) from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def serve_setup(make_confdir):
    started: list[Serve] = []

    def make(relay_port: int, **kw) -> tuple[Serve, int, Path]:
        sub_port = free_port()
        conf = make_confdir({"40-outbound.toml": outbound_toml(
            relay_port, submission_port=sub_port, lease="2s", **kw)})
        s = Serve(conf)
        started.append(s)
        return s, sub_port, conf.parent / "var" / "deskgate.db"

    yield make
    for s in started:
        s.stop(signal.SIGKILL)


def submit_many(port: int, n: int) -> list[str]:
    ids = []
    with smtplib.SMTP("127.0.0.1", port) as s:
        for i in range(n):
            mid = f"<restart-{i}@internal.test>"
            msg = (f"From: app@internal.test\r\nTo: c{i}@customer.test\r\nSubject: m{i}\r\n"
                   f"Message-ID: {mid}\r\n\r\nbody {i}\r\n").encode()
            assert s.sendmail("app@internal.test", [f"c{i}@customer.test"], msg) == {}
            ids.append(mid)
    return ids


def db_statuses(db: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(OutboundMessage.status)).scalars())
    finally:
        engine.dispose()


def received_ids(sink: AuthSink) -> list[str]:
    out = []
    for r in sink.received:
        for line in r.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return out


class TestRestart:
    def test_queued_messages_survive_a_restart(self, serve_setup):
        """Relay down, gateway stopped with 5 queued; after restart each arrives once."""
        relay_port = free_port()
        serve, port, db = serve_setup(relay_port, retry="1s*30")
        serve.start(port)
        ids = submit_many(port, 5)
        serve.stop()
        assert db_statuses(db) == ["queued"] * 5
        with AuthSink(port=relay_port) as sink:
            serve.start(port)
            wait_for(lambda: db_statuses(db) == ["sent"] * 5, 30, "delivery after restart")
            assert sorted(received_ids(sink)) == sorted(ids)

    def test_crash_before_data_is_retried_and_each_message_sent_once(self, serve_setup):
        """Killed (SIGKILL) while the relay is answering RCPT, before any DATA: after the
        restart the interrupted send is taken up again (its lease expires) and every
        message arrives exactly once. (A kill after the relay accepted DATA but before
        the row says sent would send that message again: at least once, as any MTA.)"""
        with AuthSink() as sink:
            sink.handler.rcpt_delay = 3.0
            serve, port, db = serve_setup(sink.port, retry="1s*30")
            serve.start(port)
            ids = submit_many(port, 3)
            wait_for(lambda: sink.handler.rcpt_seen >= 1, 20, "a delivery in progress")
            serve.stop(signal.SIGKILL)
            sink.handler.rcpt_delay = 0.0
            assert "queued" in db_statuses(db)
            serve.start(port)
            wait_for(lambda: db_statuses(db) == ["sent"] * 3, 30, "delivery after the crash")
            got = received_ids(sink)
            assert sorted(got) == sorted(ids), got


def connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to 127.0.0.1:`port`."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if (int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01"
                and f"socket:[{f[9]}]" in inodes):
            return True
    return False


def queue_rows(db: Path) -> list:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()
    finally:
        engine.dispose()


def interrupted_entries(db: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(CommEntry.value)
                                     .where(CommEntry.key == "Interrupted")).scalars())
    finally:
        engine.dispose()


class TestKilledMidDelivery:
    def test_a_message_whose_delivery_kills_the_process_ends_in_a_dsn(self, serve_setup,
                                                                       tmp_path):
        """SIGKILL while Postfix's smtp-sink holds the DATA command, after every restart:
        no killed delivery counts as an attempt (a Warn Interrupted in the communication
        log); the first is delivered again at once, and once two in a row were killed
        and the message's time in the queue (the sum of relay.retry) has run out it
        fails with a DSN to the submitter instead of being taken again for ever."""
        if not SmtpSink.available():
            missing_peer("smtp-sink not installed")
        with SmtpSink(tmp_path / "sink", options=["-w", "3600"], dump=False) as sink:
            serve, port, db = serve_setup(sink.port, retry="1s, 1s")
            serve.start(port)
            submit_many(port, 1)
            for n in range(2):
                assert serve.proc is not None
                pid = serve.proc.pid

                def in_data(n: int = n, pid: int = pid) -> bool:
                    rows = queue_rows(db)
                    return (bool(rows) and rows[0].attempts == 0
                            and rows[0].lease_until is not None
                            and (n == 0 or "interrupted" in rows[0].last_error)
                            and connected_to(pid, sink.port))

                wait_for(in_data, 30, f"delivery {n + 1} waiting at DATA")
                time.sleep(0.5)                    # EHLO, MAIL, RCPT: then DATA waits
                serve.stop(signal.SIGKILL)
                serve.start(port)
            wait_for(lambda: queue_rows(db)[0].status == "failed", 30, "the message failed")
            wait_for(lambda: len(queue_rows(db)) == 2, 10, "the DSN")
            first, dsn = queue_rows(db)
            assert first.attempts == 0 and "interrupted" in first.last_error
            assert dsn.kind == "dsn"
            assert len(interrupted_entries(db)) == 2
