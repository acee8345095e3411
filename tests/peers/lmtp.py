"""A small LMTP client that reads one reply per recipient after DATA (smtplib cannot)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path


class LmtpClient:
    __test__ = False

    def __init__(self, target: Path | tuple[str, int], timeout: float = 30) -> None:
        if isinstance(target, tuple):
            self.sock = socket.create_connection(target, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(target))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data + b"\r\n")

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text with lines joined by \\n)."""
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionError("connection closed")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line)
        return self.reply()

    def lhlo(self, name: str = "client.test") -> tuple[int, str]:
        return self.cmd(f"LHLO {name}")

    def transaction(self, mail_from: str, rcpts: list[str], message: bytes
                    ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """MAIL, RCPT..., DATA; returns (RCPT replies, per-recipient DATA replies)."""
        code, text = self.cmd(f"MAIL FROM:<{mail_from}>")
        assert code == 250, (code, text)
        rcpt_replies = [self.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = sum(1 for c, _ in rcpt_replies if c == 250)
        if not accepted:
            self.cmd("RSET")
            return rcpt_replies, []
        code, text = self.cmd("DATA")
        assert code == 354, (code, text)
        body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        body = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln
                            for ln in body.split(b"\r\n"))
        self.sock.sendall(body + b".\r\n")
        return rcpt_replies, [self.reply() for _ in range(accepted)]

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.cmd("QUIT")
        self.file.close()
        self.sock.close()
