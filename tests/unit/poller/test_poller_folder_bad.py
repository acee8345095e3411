"""A server that answers SELECT/EXAMINE with BAD (not NO): a Folder error, not a crash
(of `accounts check`, or of the IDLE watcher's thread)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from gateway.config import load_config
from gateway.inbound.poller.check import check_account

ACCOUNT = """
[[account]]
name = "box"
type = "imap"
allow_plaintext = true
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "secret"
folder = "Tickets"
"""


@pytest.fixture
def bad_select_server() -> Iterator[int]:
    """A loopback IMAP server that logs in anyone and answers SELECT/EXAMINE with BAD."""
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
                talk(conn)

    def talk(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"* OK IMAP4rev1 ready\r\n")
        for line in f:
            tag, cmd = ([*line.strip().split(b" ", 2), b""])[:2]
            cmd = cmd.upper()
            if cmd == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
            elif cmd == b"LOGIN":
                conn.sendall(tag + b" OK logged in\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                conn.sendall(tag + b" BAD Folder name not valid here\r\n")
            elif cmd == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            else:
                conn.sendall(tag + b" BAD unknown command\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(10)
    srv.close()


def test_bad_answer_to_select_is_a_folder_error(bad_select_server, make_confdir):
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(port=bad_select_server)}))
    res = check_account(cfg.account[0], cfg)
    assert not res.ok
    assert [s.ok for s in res.steps] == [True, True, None, True, False]
    detail = res.step("folder").detail
    assert "Tickets" in detail and "Folder name not valid here" in detail


def test_idle_watcher_survives_a_bad_answer_to_examine(bad_select_server, make_confdir):
    """The watcher logs the Folder error and tries again later; its thread lives on."""
    import time

    from gateway.inbound.poller.idle import IdleWatcher

    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(port=bad_select_server)}))
    watcher = IdleWatcher(cfg.account[0], cfg.root, lambda: None)
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while watcher.supported is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert watcher.supported is True
        assert watcher._thread.is_alive()
    finally:
        watcher.stop()
