"""A server that closes the connection in the middle of a message (no BYE)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from gateway.store.tables import CommEntry

ACCOUNT = """
[[account]]
name = "box"
type = "imap"
allow_plaintext = true
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "secret"
interval = "1h"
"""


@pytest.fixture
def cutting_server() -> Iterator[int]:
    """A loopback IMAP server with one message (UID 5) that drops the connection half
    way through the message's literal."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def talk(conn: socket.socket) -> None:
        conn.sendall(b"* OK IMAP4rev1 ready\r\n")
        for line in conn.makefile("rb"):
            tag, cmd, rest = [*line.strip().split(b" ", 2), b"", b""][:3]
            cmd = cmd.upper()
            if cmd == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n" + tag + b" OK done\r\n")
            elif cmd == b"LOGIN":
                conn.sendall(tag + b" OK logged in\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                conn.sendall(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n"
                             + tag + b" OK [READ-WRITE] done\r\n")
            elif cmd == b"UID" and b"RFC822.SIZE" in rest:
                conn.sendall(b"* 1 FETCH (UID 5 RFC822.SIZE 500 FLAGS ())\r\n"
                             + tag + b" OK done\r\n")
            elif cmd == b"UID":
                conn.sendall(b"* 1 FETCH (UID 5 BODY[] {500}\r\nFrom: a@customer.test\r\n"
                             b"Subject: half\r\n\r\nhalf a mess")
                return
            else:
                conn.sendall(tag + b" BAD unknown\r\n")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                talk(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(10)
    srv.close()


def test_connection_lost_mid_fetch_names_the_message_and_keeps_it(
        cutting_server, make_confdir, harness):
    from gateway.config import load_config

    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(port=cutting_server)}))
    h = harness(cfg)
    r = h.poll()
    assert (r.status, r.fetched, r.failed) == ("Failed", 0, 0), r.error
    assert "connection lost during UID FETCH 5" in r.error, r.error
    assert "command: UID =>" not in r.error
    with h.gw.engine.connect() as conn:
        errs = conn.execute(select(CommEntry.value).where(
            CommEntry.key == "Fetch")).scalars().all()
    assert len(errs) == 1
    assert "account box: " in errs[0] and "message 7:5" in errs[0], errs
    assert "stays on the server" in errs[0], errs


MESSAGE = (b"From: a@customer.test\r\nTo: support@example.org\r\nSubject: Problem %d\r\n"
           b"Message-ID: <lost%d@customer.test>\r\n\r\nMessage number %d.\r\n")


@pytest.fixture
def cutting_second() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback IMAP server with three messages (UIDs 1 to 3) that hands over UID 1
    and drops the connection half way through UID 2; also the commands it got."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()
    got: list[bytes] = []
    bodies = {n: MESSAGE % (n, n, n) for n in (1, 2, 3)}

    def talk(conn: socket.socket) -> None:
        conn.sendall(b"* OK IMAP4rev1 ready\r\n")
        for line in conn.makefile("rb"):
            got.append(line.strip())
            tag, cmd, rest = [*line.strip().split(b" ", 2), b"", b""][:3]
            cmd = cmd.upper()
            if cmd == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n" + tag + b" OK done\r\n")
            elif cmd == b"LOGIN":
                conn.sendall(tag + b" OK logged in\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                conn.sendall(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n"
                             + tag + b" OK [READ-WRITE] done\r\n")
            elif cmd == b"UID" and b"RFC822.SIZE" in rest:
                conn.sendall(b"".join(b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS ())\r\n"
                                      % (n, n, len(b)) for n, b in bodies.items())
                             + tag + b" OK done\r\n")
            elif cmd == b"UID" and rest.startswith(b"FETCH 1 "):
                conn.sendall(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(bodies[1]) + bodies[1]
                             + b")\r\n" + tag + b" OK done\r\n")
            elif cmd == b"UID" and rest.startswith(b"FETCH"):
                conn.sendall(b"* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(bodies[2])
                             + bodies[2][:30])
                return
            elif cmd == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            else:
                conn.sendall(tag + b" BAD unknown\r\n")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                talk(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], got
    stop.set()
    t.join(10)
    srv.close()


def sample(name: str) -> float:
    from gateway import metrics

    return metrics.REGISTRY.get_sample_value(name, {"account": "box"}) or 0.0


def test_connection_lost_in_a_batch_is_one_connection_failure_not_a_failed_message(
        cutting_second, make_confdir, harness, monkeypatch, capsys):
    """The connection lost after one message was stored: that one counts as fetched, the
    two not fetched stay for the next run, and the run is one connection failure (no
    failed message) in the result, fetch --status, the metrics and the log."""
    import json

    from gateway.cli import main
    from gateway.config import load_config
    from gateway.inbound.poller import deliver
    from gateway.store.tables import CommObject

    port, got = cutting_second
    monkeypatch.setattr(deliver, "BATCH_MESSAGES", 1)   # UID 1, then UID 2 and 3 apart
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(port=port)}))
    h = harness(cfg)
    errors, failures = (sample("deskgate_poller_errors_total"),
                        sample("deskgate_poller_message_failures_total"))
    r = h.poll()
    assert (r.status, r.fetched, r.new, r.failed) == ("Failed", 1, 1, 0), r.error
    assert r.error.startswith("Fetch: connection lost during UID FETCH 2"), r.error
    assert "Remove" not in r.error, r.error
    assert not [c for c in got if b"STORE" in c or b"EXPUNGE" in c]   # nothing on a dead line
    assert sample("deskgate_poller_errors_total") == errors + 1
    assert sample("deskgate_poller_message_failures_total") == failures
    with h.gw.engine.connect() as conn:
        objs = conn.execute(select(CommObject.type, CommObject.status).where(
            CommObject.communication_id == r.communication_id).order_by(CommObject.id)).all()
        errs = conn.execute(select(CommEntry.value).where(
            CommEntry.priority == "Error")).scalars().all()
    assert [tuple(o) for o in objs] == [("Connection", "Failed"), ("Message", "Successful")]
    assert len(errs) == 1, errs
    assert "connection lost during UID FETCH 2" in errs[0], errs
    assert "1 message fetched and stored before" in errs[0], errs
    assert "2 messages (7:2 to 7:3) not fetched stay on the server" in errs[0], errs
    assert "the next run fetches them" in errs[0], errs
    capsys.readouterr()
    assert main(["--config", str(cfg.conf_dir), "fetch", "--status", "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert (status["status"], status["last_fetched"]) == ("Failed", 1)
    assert status["last_error"] == r.error
