"""DATA framing shared by the LMTP and submission listeners (RFC 5321 4.1.1.4, 4.5.2).

The message is kept in a buffer that starts with the CRLF that ended the DATA
line, so CRLF.CRLF ends it wherever it is, the first line included, and
dot-unstuffing is one pass over the whole message: a dot right after a CRLF is
removed (a line's first dot, as RFC 5321 4.5.2 says and Postfix and aiosmtpd do).

Only CRLF.CRLF ends a message. A bare LF is content and is kept as sent, so
"LF.LF" or "LF.CRLF" can never end a message early (no SMTP smuggling). Lines
of any length are accepted, as Postfix does. Over the size limit the rest of
the message is read and thrown away as it arrives, keeping only the 4 bytes
that may begin the terminator, and the client is refused after the final dot.
"""

from __future__ import annotations

import asyncio

TERMINATOR = b"\r\n.\r\n"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"


class DataScanner:
    """Finds the end of one message in a growing buffer and unstuffs it.

    Each search starts 4 bytes before where the last one ended, so a message is
    scanned once however it is cut into reads. `limit` counts the message after
    unstuffing (RFC 1870); 0 or None is no limit. While a message is under the
    limit on the wire nothing is counted; past it, the dots that unstuffing will
    remove are counted once, so a message is never refused for its stuffing.
    """

    __slots__ = ("counted", "dots", "scan", "too_big")

    def __init__(self) -> None:
        self.scan = 0
        self.too_big = False
        self.dots = 0          # stuffed dots seen in buf[:counted]
        self.counted = 0

    def find(self, buf: bytearray, limit: int | None) -> int:
        """Index of the terminator in buf, or -1; over the limit buf is cut to 4 bytes."""
        idx = buf.find(TERMINATOR, self.scan)
        if idx >= 0:
            return idx
        if limit and not self.too_big and len(buf) > limit + 2 + 4:
            # Over the limit on the wire; a line's first dot will be removed, so count
            # those before calling the message too big (each byte once: from here on
            # only what arrived since). "\r\n." cannot overlap itself, so an occurrence
            # ending at the end of buf leaves nothing to count twice.
            self.dots += buf.count(b"\r\n.", self.counted)
            self.counted = len(buf) - 2
            self.too_big = len(buf) - self.dots > limit + 2 + 4
        if self.too_big:
            del buf[:-4]
        self.scan = max(0, len(buf) - 4)
        return -1

    def take(self, buf: bytearray, idx: int, limit: int | None) -> bytes | None:
        """Remove the message and its terminator (found at idx) from buf; return the
        unstuffed message, or None when it was over the limit."""
        body: bytes | None = None
        if not self.too_big:
            with memoryview(buf) as view:
                body = bytes(view[2:idx + 2])
            # replace() hands back the same object when there is nothing to replace;
            # the first line's dot follows the CRLF the buffer starts with.
            body = body.replace(b"\r\n.", b"\r\n")
            if body[:1] == b".":
                body = body[1:]
            if limit and len(body) > limit:
                body = None
        del buf[:idx + 5]
        self.scan = self.dots = self.counted = 0
        self.too_big = False
        return body


async def read_data(reader: asyncio.StreamReader, buf: bytearray, limit: int | None
                    ) -> bytes | None:
    """Read one message from reader, up to its terminator and not a byte further.

    What a client pipelines behind the final dot stays in the reader for the next
    command. buf (the caller's, so that what is held can be seen) collects the
    message and is empty again on return. Returns the unstuffed message, or None
    when it was over the limit.

    The reader is asked for the rest of the terminator given what buf ends with:
    all of CRLF.CRLF after ordinary data, LF.CRLF after a CR, one byte at a time
    right after a CRLF (where ".CRLF" would end the message), so nothing past the
    terminator is ever consumed. A read past the reader's limit (LimitOverrunError)
    takes what cannot hold the terminator's start, in chunks as they arrived.
    """
    buf[:] = b"\r\n"            # stands for the CRLF that ended the DATA line
    scanner = DataScanner()
    while True:
        tail = bytes(buf[-4:])
        if tail.endswith((b"\r\n", b"\r\n.", b"\r\n.\r")):
            piece = await reader.readexactly(1)
        else:
            sep = TERMINATOR[1:] if tail.endswith(b"\r") else TERMINATOR
            try:
                piece = await reader.readuntil(sep)
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(exc.consumed)
        buf += piece
        idx = scanner.find(buf, limit)
        if idx >= 0:
            return scanner.take(buf, idx, limit)
