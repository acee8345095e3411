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
    assert (r.status, r.fetched, r.failed) == ("Failed", 0, 1), r.error
    assert "connection lost during UID FETCH 5" in r.error, r.error
    assert "command: UID =>" not in r.error
    with h.gw.engine.connect() as conn:
        errs = conn.execute(select(CommEntry.value).where(
            CommEntry.key == "Fetch")).scalars().all()
    assert len(errs) == 1
    assert "account box: message 7:5" in errs[0] and "left on the server" in errs[0], errs
