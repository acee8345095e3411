"""`deliver --via-socket` waits for the 221 to its QUIT, but only so long: a gateway
that never answers QUIT does not hold the MTA's delivery process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import via_socket

REPLIES = {b"LHLO": b"250 ok\r\n", b"MAIL": b"250 2.1.0 ok\r\n",
           b"RCPT": b"250 2.1.5 ok\r\n", b"DATA": b"354 go ahead\r\n"}


def serve_one(listener: socket.socket, heard: list[bytes]) -> None:
    """An LMTP peer that answers everything but QUIT and keeps the connection open."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as rfile:
        conn.sendall(b"220 test LMTP\r\n")
        in_data = False
        for line in rfile:
            heard.append(line)
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    conn.sendall(b"250 2.1.5 delivered\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"QUIT":
                time.sleep(30)         # never answers; the client must not wait for it
                return
            in_data = verb == b"DATA"
            conn.sendall(REPLIES.get(verb, b"500 what\r\n"))


@pytest.fixture
def silent_quit(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    path = str(tmp_path / "lmtp.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    heard: list[bytes] = []
    threading.Thread(target=serve_one, args=(listener, heard), daemon=True).start()
    yield path, heard
    listener.close()


class TestQuitWait:
    def test_a_missing_221_costs_at_most_the_quit_wait(
            self, silent_quit: tuple[str, list[bytes]],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """The delivery's result stands (exit 0) and the client gives up on the 221
        after QUIT_WAIT seconds, not after the session's timeout."""
        path, heard = silent_quit
        monkeypatch.setattr(via_socket, "QUIT_WAIT", 0.5)
        started = time.monotonic()
        result = via_socket.deliver(path, "a@customer.test", ["support@example.org"],
                                    b"Subject: hi\r\n\r\nhello\r\n", timeout=20)
        took = time.monotonic() - started
        assert result.exit_code() == 0
        assert heard[-1] == b"QUIT\r\n"
        assert 0.4 < took < 5, took
