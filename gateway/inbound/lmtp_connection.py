"""The byte side of one RFC 2033 LMTP connection, as an asyncio.Protocol.

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

The commands, the envelope and the delivery are LmtpSession's (lmtp_session.py),
which answers the lines and messages this class splits out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import structlog

from gateway.commlog import Comm
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_record import ConnectionRecord
from gateway.inbound.lmtp_syntax import LINE_BUFFER, LINE_TOO_LONG
from gateway.limits import SessionLimit, idle_timeout, refusal
from gateway.model import Outcome
from gateway.smtpdata import DataScanner

log = structlog.get_logger(__name__)

# Input waiting while a delivery runs beyond which reading pauses (pipelining abuse).
PAUSE_AT = 256 * 1024


class LmtpBackend(Protocol):
    """What the listener asks of the rest of the gateway."""

    def rcpt_status(self, address: str) -> SmtpReply: ...

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str, *, client: str = "", queue_id: str = "") -> Outcome:
        """Deliver one message. `client` and `queue_id` are what the MTA said with
        XFORWARD (the original SMTP client, its own queue ID), for the log only; they
        are passed only when the MTA sent XFORWARD."""
        ...

    def log_connection(self, comm: Comm) -> None:
        """Write a closed connection's communication without blocking; never raises."""


def peer_name(peer: Any) -> str:
    """'host:port' of a TCP peer, 'unix' for a unix socket."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "unix")


class LmtpConnection(asyncio.Protocol):
    """One LMTP connection's transport, buffers, flow control and idle timer."""

    def __init__(self, backend: LmtpBackend, *, max_message_size: int, hostname: str,
                 timeout: float = 300, loop: asyncio.AbstractEventLoop | None = None,
                 limit: SessionLimit | None = None) -> None:
        self.backend = backend
        self.data_size_limit = max_message_size
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
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

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

    def _close(self) -> None:
        self._closing = True
        self._flush()
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ LmtpSession's

    def _command(self, line: bytes) -> None:
        """Answer one command line (without its line end)."""
        raise NotImplementedError

    def _message(self, raw: bytes | None) -> None:
        """The final dot arrived: `raw` is the message, None when over the size limit."""
        raise NotImplementedError
