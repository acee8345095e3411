"""A login the server cannot check now ([UNAVAILABLE], [SYS/TEMP]) is not called refused."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from gateway.commlog import CommObj
from gateway.config import load_config
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.pop3 import Pop3Session
from gateway.inbound.poller.session import MailboxError

ACCOUNT = """
[[account]]
name = "box"
type = "{type}"
allow_plaintext = true
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "secret"
"""

IMAP = {b"CAPABILITY": b"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n",
        b"LOGIN": b"{tag} NO [UNAVAILABLE] Temporary authentication failure. [host:2026]\r\n"}
POP3 = {b"CAPA": b"+OK\r\nUSER\r\n.\r\n", b"USER": b"+OK\r\n",
        b"PASS": b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n"}


@pytest.fixture
def server() -> Iterator:
    """server(kind) → port of a loopback IMAP or POP3 server whose auth backend is down."""
    made: list[tuple[socket.socket, threading.Event, threading.Thread]] = []

    def start(kind: str) -> int:
        srv = socket.create_server(("127.0.0.1", 0))
        srv.settimeout(0.2)
        stop = threading.Event()

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
                    conn.sendall(b"* OK ready\r\n" if kind == "imap" else b"+OK ready\r\n")
                    for line in conn.makefile("rb"):
                        words = line.strip().split(b" ")
                        if kind == "imap":
                            tag, cmd = words[0], (words[1:] or [b""])[0].upper()
                            answer = IMAP.get(cmd, b"{tag} BAD no\r\n")
                            conn.sendall(answer.replace(b"{tag}", tag))
                        else:
                            conn.sendall(POP3.get(words[0].upper(), b"-ERR no\r\n"))

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        made.append((srv, stop, t))
        return int(srv.getsockname()[1])

    yield start
    for srv, stop, t in made:
        stop.set()
        t.join(10)
        srv.close()


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_temporary_auth_failure_is_temporary(kind, server, make_confdir):
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(type=kind,
                                                                  port=server(kind))}))
    cls = ImapSession if kind == "imap" else Pop3Session
    session = cls(cfg.account[0], cfg.root, CommObj("Connection"))
    try:
        session.connect()
        with pytest.raises(MailboxError) as info:
            session.authenticate()
    finally:
        session.abort()
    exc = info.value
    assert exc.step == "auth" and exc.temporary
    assert "refused" not in exc.reason
    assert "could not check" in exc.reason and "Temporary authentication failure" in exc.reason
