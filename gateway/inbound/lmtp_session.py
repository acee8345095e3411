"""One RFC 2033 LMTP connection as an asyncio.Protocol.

Bytes are parsed where they arrive (`data_received`): command lines are split
out of the buffer and answered without a coroutine per line, DATA is scanned
in bulk for CRLF.CRLF and dot-unstuffed in one pass once complete (the framing
is gateway.smtpdata's, shared with the submission listener), and replies
produced by one batch of input leave in one write. Only a delivery runs as a
task; while it runs, further input waits in the buffer (reading pauses when
that buffer grows), so pipelined commands are answered in order after the
per-recipient replies.

Line endings: a command line may end in CRLF or a bare LF (the CR is dropped).
Inside DATA only CRLF.CRLF ends the message; a bare LF is content and is
stored as sent, so "LF.LF" can never end a message early (no smuggling); a
line's first dot is removed (RFC 5321 4.5.2).
BDAT/CHUNKING is not offered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, cast

import structlog

from gateway import errors
from gateway.commlog import Comm
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_record import ConnectionRecord
from gateway.limits import IDLE_COMMANDS, SessionLimit, idle_timeout, refusal, too_many_errors
from gateway.model import Outcome
from gateway.smtpdata import DATA_GO_AHEAD, DataScanner

log = structlog.get_logger(__name__)

# RFC 5321 4.5.3.1.4: 512 octets per command line; MAIL may carry SIZE= and SMTPUTF8.
COMMAND_LIMIT = 512
MAIL_LIMIT = 512 + 26 + 10
# Bytes of input without a line end after which a command line is being discarded.
LINE_BUFFER = 2048
# Input waiting while a delivery runs beyond which reading pauses (pipelining abuse).
PAUSE_AT = 256 * 1024
# Unknown commands a client may send before it is disconnected.
BOGUS_LIMIT = 5

# Replies of the protocol layer (the gateway's own are in gateway.errors).
RSET_OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"
VRFY_CANNOT = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
EXPN_NO = "502 5.5.1 EXPN not implemented"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
LINE_TOO_LONG = "500 5.5.2 Command line too long"
BAD_UTF8 = "500 5.5.2 Error: bad UTF-8 syntax"
NEED_LHLO = "503 5.5.1 Send LHLO first"
NEED_MAIL = "503 5.5.1 Need MAIL command"
NEED_RCPT = "503 5.5.1 Need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"


def _syntax(usage: str) -> str:
    return f"501 5.5.4 Syntax: {usage}"


class LmtpBackend(Protocol):
    """What the listener asks of the rest of the gateway."""

    def rcpt_status(self, address: str) -> SmtpReply: ...

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str) -> Outcome: ...

    def log_connection(self, comm: Comm) -> None:
        """Write a closed connection's communication without blocking; never raises."""


def parse_path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """'FROM:<a@b> SIZE=10' → ('a@b', ['SIZE=10']); None when malformed."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    arg = arg[len(keyword):].lstrip()
    if '"' in arg:                                  # "john doe"@example.org
        start = _local_start(arg)
        if arg.startswith('"', start):
            return _quoted_path(arg, start)
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            return None
        addr, rest = arg[1:end], arg[end + 1:]
        if rest and not rest.startswith(" "):
            return None
    else:
        addr, _, rest = arg.partition(" ")
    if addr.startswith("@") and ":" in addr:         # source route: @a,@b:user@host
        addr = addr.split(":", 1)[1]
    if any(c in addr for c in " <>\t\r\n"):
        return None
    return addr, rest.split()


def least_quoted_path(address: str) -> str:
    """An envelope address given outside LMTP (`deliver -r/-f`) as LMTP passes the same
    path on: '"support"@example.org' is 'support@example.org'; an address LMTP would
    refuse as syntax comes back as given."""
    parsed = parse_path(f"<{address}>", "")
    return parsed[0] if parsed is not None and not parsed[1] else address


def _quoted_end(s: str, i: int) -> int:
    """Index just past the quoted string that starts at s[i], or -1 when it is not one
    (RFC 5321 4.1.2: printable characters, space, quoted pairs; UTF-8 with SMTPUTF8)."""
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            return i + 1
        if c == "\\":
            i += 1
            if i >= n or not " " <= s[i] <= "~":
                return -1
        elif c < " " or c == "\x7f":
            return -1
        i += 1
    return -1


def _local_start(arg: str) -> int:
    """Where the local part of '<@a,@b:local@host>' (or without brackets) starts."""
    start = 1 if arg.startswith("<") else 0
    if arg.startswith("@", start):                   # source route
        return arg.find(":", start) + 1
    return start


def _quoted_path(arg: str, start: int) -> tuple[str, list[str]] | None:
    """parse_path for a path whose local part is the quoted string at arg[start].

    The address comes back with the least quoting (RFC 5321 4.1.2: all quoted forms
    are equivalent), so '"support"@example.org' is 'support@example.org'. Without a
    domain only a local part that needs no quoting is a path (the postmaster)."""
    end = _quoted_end(arg, start)
    if end < 0:
        return None
    if arg.startswith("<"):
        close = arg.find(">", end)
        if close < 0:
            return None
        addr, rest = arg[start:close], arg[close + 1:]
        if rest and not rest.startswith(" "):
            return None
    else:
        domain, _, rest = arg[end:].partition(" ")
        addr = arg[start:end] + domain
    domain = addr[end - start:]
    if any(c in domain for c in ' "<>\t\r\n'):
        return None
    local = _unquote(addr[:end - start])
    if not domain:
        return (local, rest.split()) if _DOT_STRING.fullmatch(local) else None
    if not domain.startswith("@"):
        return None
    return _least_quoted(local) + domain, rest.split()


# RFC 5321 4.1.2 Dot-string; atext also takes UTF-8 beyond ASCII (RFC 6531).
_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                         r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*")


def _unquote(quoted: str) -> str:
    """The content of a quoted string: '"a\\"b"' → 'a"b'."""
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def _least_quoted(local: str) -> str:
    """A local part as a Dot-string when it is one, else quoted with only '"' and '\\'
    escaped."""
    if _DOT_STRING.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def peer_name(peer: Any) -> str:
    """'host:port' of a TCP peer, 'unix' for a unix socket."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "unix")


class LmtpSession(asyncio.Protocol):
    """One LMTP connection."""

    _COMMANDS: ClassVar[dict[str, Callable[[LmtpSession, str], None]]]

    def __init__(self, backend: LmtpBackend, *, max_message_size: int, max_recipients: int,
                 hostname: str, timeout: float = 300,
                 loop: asyncio.AbstractEventLoop | None = None,
                 limit: SessionLimit | None = None) -> None:
        self.backend = backend
        self.data_size_limit = max_message_size
        self.max_recipients = max_recipients
        self.hostname = hostname
        self.timeout = timeout
        self.on_lost: Callable[[], None] | None = None
        self._loop = loop or asyncio.get_event_loop()
        self._limit = limit
        self._transport: asyncio.Transport | None = None
        self._peer_raw: Any = None
        self._peer = "unix"
        # Replaced in connection_made once the peer is known; written once, when lost.
        self._record = ConnectionRecord("unix")
        self._logged = False
        self._refused = False
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._in_data = False      # the buffer holds message data (after a 354)
        self._data = DataScanner()
        self._skipping = False     # discarding an over-long command line
        self._busy = False         # a delivery is running
        self._closing = False      # QUIT or a fatal refusal: ignore further input
        self._read_paused = False
        self._write_paused = False
        self._eof = False
        self._bogus = 0
        self._lhlo = ""
        self._from: str | None = None
        self._rcpts: list[str] = []
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        """Bytes of input held (unanswered commands or the message being received)."""
        return len(self._buf)

    # ------------------------------------------------------------ transport

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)    # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if self._limit is not None and self._limit.admit(peer) is not None:
            # Over max_sessions: 421 and close, before any session state exists.
            self._refused = True
            transport.write(refusal(self.hostname))
            transport.close()
            return
        self._transport = transport
        self._peer_raw = peer
        self._peer = peer_name(peer)
        self._record = ConnectionRecord(self._peer)
        self._deadline = self._loop.time() + self.timeout
        self._timer = self._loop.call_at(self._deadline, self._on_timer)
        transport.write(f"220 {self.hostname} deskgate LMTP\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_lost is not None:       # an AcceptLoop counts refused sessions too
            self.on_lost()
            self.on_lost = None
        if self._refused:
            return
        if self._limit is not None:
            self._limit.release(self._peer_raw)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._buf = bytearray()            # a half-received message is dropped here
        if not self._logged:
            self._logged = True
            try:
                self.backend.log_connection(self._record.finish(exc))
            except Exception:
                log.exception("LMTP connection not logged", peer=self._peer)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        if self._in_data:
            self._deadline = self._loop.time() + self.timeout   # a long message is activity
        if self._busy or self._write_paused:
            if len(self._buf) > PAUSE_AT and not self._read_paused and self._transport:
                self._read_paused = True
                self._transport.pause_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        # Half-closed after the final dot: answer the delivery, then close.
        if self._busy:
            self._eof = True
            return True
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy:
            self._resume_reading()
            self._process()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        now = self._loop.time()
        if self._busy or now < self._deadline:
            self._deadline = max(self._deadline, now + (self.timeout if self._busy else 0))
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._record.timed_out = True
        self._closing = True
        self._transport.write(idle_timeout(self.hostname))
        self._transport.close()

    # ------------------------------------------------------------ input

    def _process(self) -> None:
        """Answer everything complete in the buffer, up to a delivery or the end."""
        try:
            while not (self._busy or self._write_paused or self._closing):
                if self._in_data:
                    if not self._scan_data():
                        break
                    continue
                buf = self._buf
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > LINE_BUFFER:
                        self._skipping = True
                        buf.clear()
                    break
                line = bytes(buf[:end])
                del buf[:end + 1]
                if self._skipping:
                    self._skipping = False
                    self._refuse("Reply", LINE_TOO_LONG)
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                self._command(line)
        finally:
            self._flush()

    def _command(self, line: bytes) -> None:
        verb_b, _, arg_b = line.partition(b" ")
        try:
            verb = verb_b.decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        if not verb:
            self._refuse("Reply", BAD_SYNTAX)
            return
        if len(line) > (MAIL_LIMIT if verb == "MAIL" else COMMAND_LIMIT):
            self._refuse("Reply", LINE_TOO_LONG)
            return
        handler = self._COMMANDS.get(verb)
        if handler is None:
            self._unknown(verb)
            return
        try:
            arg = arg_b.strip().decode("utf-8")
        except UnicodeDecodeError:
            # Postfix's answer; an address the store cannot encode would be taken at
            # MAIL/RCPT and then fail every delivery attempt with 451.
            self._refuse("Reply", BAD_UTF8)
            return
        if verb not in IDLE_COMMANDS:
            self._deadline = self._loop.time() + self.timeout
        try:
            handler(self, arg)
        except Exception:
            log.exception("LMTP command failed", command=verb, peer=self._peer)
            self._refuse("Reply", str(errors.TEMPFAIL))

    def _scan_data(self) -> bool:
        """Look for the end of the message; True once the message is complete."""
        # buf starts with the CRLF that ended the DATA line (see smtp_DATA); over the
        # limit the scanner keeps only what may start the terminator.
        idx = self._data.find(self._buf, self.data_size_limit)
        if idx < 0:
            return False
        body = self._data.take(self._buf, idx, self.data_size_limit)
        self._in_data = False
        self._message(body)
        return True

    # ------------------------------------------------------------ output

    def _reply(self, reply: SmtpReply | str) -> None:
        self._out.append(reply.wire if isinstance(reply, SmtpReply)
                         else f"{reply}\r\n".encode("utf-8", "surrogateescape"))

    def _refuse(self, key: str, reply: SmtpReply | str, subject: str = "") -> None:
        """Answer a command with a 4xx/5xx reply and log it on the connection."""
        text = str(reply)
        self._record.refused(key, subject, text)
        self._out.append(f"{text}\r\n".encode("utf-8", "surrogateescape"))

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            out = self._out
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._out = []

    # ------------------------------------------------------------ commands

    def _unknown(self, verb: str) -> None:
        self._bogus += 1
        if self._bogus >= BOGUS_LIMIT:
            self._refuse("Reply", too_many_errors(self.hostname))
            self._close()
            return
        shown = f' "{verb}"' if len(verb) <= 16 and verb.isalnum() else ""
        self._refuse("Reply", f"500 5.5.1 Error: command{shown} not recognized")

    def _close(self) -> None:
        self._closing = True
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _reset(self) -> None:
        self._from = None
        self._rcpts = []
        self._record.ended()

    def smtp_LHLO(self, arg: str) -> None:
        if not arg:
            self._refuse("LHLO", _syntax("LHLO hostname"))
            return
        self._reset()
        self._lhlo = arg
        self._record.lhlo(arg)
        self._reply(f"250-{self.hostname}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                    f"250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {self.data_size_limit}")

    def smtp_MAIL(self, arg: str) -> None:
        if not self._lhlo:
            self._refuse("MAIL", NEED_LHLO)
            return
        if self._from is not None:
            self._refuse("MAIL", NESTED_MAIL)
            return
        parsed = parse_path(arg, "FROM:")
        if parsed is None:
            self._refuse("MAIL", _syntax("MAIL FROM:<address> [parameters]"), f"MAIL {arg}")
            return
        addr, params = parsed
        for p in params:
            key, _, value = p.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not (value.isascii() and value.isdigit()):   # not '²', which int() refuses
                    self._refuse("MAIL", errors.SYNTAX, f"<{addr}> {p}")
                    return
                if int(value) > self.data_size_limit > 0:
                    self._refuse("MAIL", errors.TOO_BIG, f"<{addr}> {p}")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self._refuse("MAIL", "501 5.5.4 BODY must be 7BIT or 8BITMIME",
                                 f"<{addr}> {p}")
                    return
            elif key not in ("SMTPUTF8", "RET", "ENVID", "AUTH"):
                self._refuse("MAIL", f"555 5.5.4 MAIL parameter {key} not supported",
                             f"<{addr}> {p}")
                return
        self._from = addr
        self._rcpts = []
        self._record.mail(addr)
        self._reply(errors.SENDER_OK)

    def smtp_RCPT(self, arg: str) -> None:
        if self._from is None:
            self._refuse("RCPT", NEED_MAIL, f"RCPT {arg}")
            return
        parsed = parse_path(arg, "TO:")
        if parsed is None or "@" not in parsed[0]:
            if parsed is None or parsed[0].lower() != "postmaster":
                self._refuse("RCPT", errors.BAD_ADDRESS if parsed else errors.SYNTAX,
                             f"RCPT {arg}")
                return
            # RFC 5321 4.5.1: the bare postmaster is accepted, as the gateway's own.
            parsed = f"postmaster@{self.hostname}", parsed[1]
        addr, params = parsed
        for p in params:
            # DSN's NOTIFY and ORCPT are ignored, as RET and ENVID are at MAIL.
            key = p.partition("=")[0].upper()
            if key not in ("NOTIFY", "ORCPT"):
                self._refuse("RCPT", f"555 5.5.4 RCPT parameter {key} not supported",
                             f"<{addr}> {p}")
                return
        if len(self._rcpts) >= self.max_recipients:
            self._refuse("RCPT", errors.TOO_MANY_RCPTS, f"<{addr}>")
            return
        reply = self.backend.rcpt_status(addr)
        if not reply.ok:
            own = f"postmaster@{self.hostname}".lower()
            if reply != errors.RCPT_UNKNOWN or addr.lower() != own:
                self._refuse("RCPT", reply, f"<{addr}>")
                return
            # The gateway's postmaster is accepted even when it is no system address
            # (RFC 5321 4.5.1); the pipeline routes it like mail to an unknown address.
            reply = errors.RCPT_OK
        self._rcpts.append(addr)
        self._record.rcpt()
        self._reply(reply)

    def smtp_DATA(self, arg: str) -> None:
        if arg:
            self._refuse("DATA", _syntax("DATA"))
            return
        if self._from is None:
            self._refuse("DATA", NEED_MAIL)
            return
        if not self._rcpts:
            self._refuse("DATA", NEED_RCPT, f"from <{self._from}>")
            return
        self._record.data()
        self._reply(DATA_GO_AHEAD)
        # What follows DATA in the buffer is message data; the leading CRLF stands for
        # the one that ended the DATA line (see _scan_data).
        self._buf = bytearray(b"\r\n") + self._buf
        self._in_data = True

    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self._refuse("Reply", _syntax("RSET"))
            return
        self._reset()
        self._reply(RSET_OK)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(errors.OK)

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._refuse("Reply", _syntax("QUIT"))
            return
        self._reply(BYE)
        self._close()

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self._refuse("Reply", _syntax("VRFY <address>"))
            return
        self._reply(VRFY_CANNOT)

    def smtp_EXPN(self, arg: str) -> None:
        self._refuse("Reply", EXPN_NO)

    def smtp_HELP(self, arg: str) -> None:
        self._reply("214 2.0.0 Supported commands: " + " ".join(sorted(self._COMMANDS)))

    # ------------------------------------------------------------ delivery

    def _message(self, raw: bytes | None) -> None:
        """The final dot arrived: refuse an over-size message or start its delivery."""
        rcpts, mail_from = self._rcpts, self._from or ""
        self._from, self._rcpts = None, []
        record = self._record
        if raw is None:
            record.refused("DATA", f"message from <{mail_from}>", str(errors.TOO_BIG))
            record.too_big()
            self._reply("\r\n".join(str(errors.TOO_BIG) for _ in rcpts))
            record.ended()
            return
        record.delivering()
        self._busy = True
        self._task = self._loop.create_task(self._deliver(mail_from, rcpts, raw))

    async def _deliver(self, mail_from: str, rcpts: list[str], raw: bytes) -> None:
        outcome: Outcome | None = None
        try:
            outcome = await self.backend.deliver(mail_from, rcpts, raw, self._peer)
            replies: Sequence[SmtpReply] = outcome.replies
        except Exception:
            logging.getLogger(__name__).exception("delivery failed")
            replies = [errors.TEMPFAIL] * len(rcpts)
        # RFC 2033: one reply per accepted recipient, in RCPT order.
        self._out += [r.wire for r in replies]
        self._record.message(outcome)
        self._record.ended()
        self._busy = False
        self._task = None
        if self._transport is None:
            self._out = []
            return
        self._deadline = self._loop.time() + self.timeout
        if not self._write_paused:
            self._resume_reading()
        self._process()
        if self._eof and not self._busy:
            self._close()


LmtpSession._COMMANDS = {
    name[5:]: getattr(LmtpSession, name) for name in dir(LmtpSession)
    if name.startswith("smtp_")
}
