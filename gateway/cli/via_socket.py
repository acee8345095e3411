"""`deskgate deliver --via-socket`: hand one message to the running gateway over LMTP.

A pipe transport starts one process per message. In-process delivery pays for
importing the store and the whole pipeline every time; this client imports
nothing but `socket`, speaks LMTP to the gateway's listener and exits with the
gateway's verdict, so the per-message cost is the interpreter's start and the
gateway's own work. When no gateway listens (no socket, connection refused, or
it does not greet with 220) the caller delivers in-process instead.
"""

from __future__ import annotations

import contextlib
import socket

EX_OK = 0
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75

# How long to wait for the 221 to QUIT: the gateway answers it at once; a gateway
# that does not costs the MTA's process no more than this.
QUIT_WAIT = 5.0

Target = str | tuple[str, int]


class NoGateway(Exception):
    """Nobody answers on the socket: deliver in-process instead."""


class LmtpFailed(Exception):
    """The session broke after the gateway greeted: the message's fate is unknown,
    so the MTA must retry (exit 75; a redelivery is recognised as a duplicate)."""


class Reply:
    """One LMTP reply (multi-line replies joined)."""

    __slots__ = ("code", "text")

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Result:
    """What the gateway answered: recipients refused at RCPT, the answer per
    accepted recipient after the data, or the MAIL/DATA refusal of the message.
    (Plain classes: importing dataclasses alone costs more than this whole client.)"""

    __slots__ = ("delivered", "refused", "refused_message")

    def __init__(self, refused: tuple[tuple[str, Reply], ...] = (),
                 delivered: tuple[tuple[str, Reply], ...] = (),
                 refused_message: Reply | None = None) -> None:
        self.refused = refused
        self.delivered = delivered
        self.refused_message = refused_message

    def exit_code(self) -> int:
        """0 delivered, 75 try again, 67 no such recipient, 65 refused (sysexits)."""
        if self.refused_message is not None:
            return EX_TEMPFAIL if self.refused_message.temporary else EX_DATAERR
        if not self.delivered:
            return EX_TEMPFAIL if any(r.temporary for _, r in self.refused) else EX_NOUSER
        # One exit code for every recipient: a 4xx for one of them is 75, or the MTA
        # takes it as delivered; the retry finds the others' copies stored (duplicates).
        if any(r.temporary for _, r in (*self.delivered, *self.refused)):
            return EX_TEMPFAIL
        if any(not r.ok for _, r in self.delivered):
            return EX_DATAERR
        return EX_OK


class _Session:
    def __init__(self, target: Target, timeout: float) -> None:
        family = socket.AF_UNIX if isinstance(target, str) else (
            socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(target)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise NoGateway(str(exc)) from None
        except OSError:
            self.sock.close()
            raise
        self.reader = self.sock.makefile("rb")

    def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = self.reader.readline(4096)
            if not line.endswith(b"\n"):
                raise LmtpFailed("the gateway closed the connection")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if len(text) < 3 or not text[:3].isdigit():
                raise LmtpFailed(f"unexpected reply {text[:80]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]), " ".join(lines))

    def command(self, line: str) -> Reply:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def close(self, *, quit_reply: bool) -> None:
        """QUIT and, when the session is in order (`quit_reply`), read the 221 before
        closing: closed earlier, the gateway's 221 goes into a closed socket and its
        side of the connection ends with a broken pipe. The wait is bounded."""
        with contextlib.suppress(OSError, LmtpFailed):
            self.sock.sendall(b"QUIT\r\n")
            if quit_reply:
                self.sock.settimeout(min(self.sock.gettimeout() or QUIT_WAIT, QUIT_WAIT))
                self.reply()
        self.reader.close()
        self.sock.close()


def _dot_stuffed(raw: bytes) -> bytes:
    body = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def deliver(target: Target, mail_from: str, rcpts: list[str], raw: bytes, *,
            hostname: str = "localhost", timeout: float = 300.0) -> Result:
    """One LMTP transaction; NoGateway when nobody listens, LmtpFailed when the
    session breaks after the greeting, ValueError for an address that cannot be
    sent in an LMTP command."""
    for addr in (mail_from, *rcpts):
        if any(c in addr for c in "\r\n<>"):
            raise ValueError(f"cannot send {addr!r} as an envelope address")
    if not all(rcpts):
        raise ValueError("an empty recipient")
    try:
        s = _Session(target, timeout)
    except NoGateway:
        raise
    except OSError as exc:
        raise NoGateway(str(exc)) from None
    in_order = False
    try:
        try:
            greeting = s.reply()
        except (LmtpFailed, OSError) as exc:
            raise NoGateway(f"no greeting: {exc}") from None
        if greeting.code != 220:
            raise NoGateway(f"greeting {greeting}")
        try:
            result = _transaction(s, mail_from, rcpts, raw, hostname)
        except OSError as exc:     # timeout, reset
            raise LmtpFailed(str(exc) or type(exc).__name__) from None
        in_order = True
        return result
    finally:
        s.close(quit_reply=in_order)


def _transaction(s: _Session, mail_from: str, rcpts: list[str], raw: bytes,
                 hostname: str) -> Result:
    lhlo = s.command(f"LHLO {hostname}")
    if not lhlo.ok:
        raise LmtpFailed(f"LHLO refused: {lhlo}")
    params = ""
    if not raw.isascii():
        params += " BODY=8BITMIME"
    if not all(x.isascii() for x in (mail_from, *rcpts)):
        params += " SMTPUTF8"
    mail = s.command(f"MAIL FROM:<{mail_from}>{params}")
    if not mail.ok:
        return Result(refused_message=mail)
    refused: list[tuple[str, Reply]] = []
    accepted: list[str] = []
    for r in rcpts:
        reply = s.command(f"RCPT TO:<{r}>")
        if reply.ok:
            accepted.append(r)
        else:
            refused.append((r, reply))
    if not accepted:
        return Result(tuple(refused))
    data = s.command("DATA")
    if data.code != 354:
        return Result(tuple(refused), refused_message=data)
    s.sock.sendall(_dot_stuffed(raw))
    return Result(tuple(refused), tuple((r, s.reply()) for r in accepted))
