"""The submission listener's bulk DATA reader: framing, pipelining, size limit, replies.

`read_data` is fed through an asyncio.StreamReader with aiosmtpd's line limit, so
where the input is cut between two reads is chosen exactly; the session tests run
SubmissionSession on a real socket with the real handler and a recording pipeline
in place of the queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import QUEUED, SubmitResult
from gateway.outbound.submission import Submission, SubmissionSession
from gateway.outbound.submission_syntax import split_path
from gateway.runtime import Runtime
from gateway.smtpdata import read_data

LINE_LIMIT = 1001        # aiosmtpd's StreamReader limit (SMTP.line_length_limit)

BODY = b"..first\r\nSubject: cut\r\n\r\n.leading\r\n.\r\nline\r\n..\r\nlast\r\n"
WIRE = b"...first\r\nSubject: cut\r\n\r\n..leading\r\n..\r\nline\r\n...\r\nlast\r\n.\r\n"


def stuff(body: bytes) -> bytes:
    """What a client sends for body: a line's leading dot doubled, then CRLF.CRLF."""
    return (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


async def read_fed(parts: list[bytes], limit: int | None = None,
                   ) -> tuple[bytes | None, bytes, list[int]]:
    """Feed parts one read at a time; (message, what is left in the reader, sizes of the
    session's buffer seen between reads)."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    buf = bytearray()
    task = asyncio.create_task(read_data(reader, buf, limit))
    seen = []
    for part in parts:
        reader.feed_data(part)
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(len(buf))
    reader.feed_eof()
    body = await task
    assert buf == b""
    return body, await reader.read(), seen


class TestFraming:
    async def test_stuffing_and_terminator_split_at_every_offset(self):
        """Cut into two reads at every byte offset, the message is read up to its dot
        and unstuffed identically; the pipelined command behind it stays unread."""
        for cut in range(len(WIRE) + 1):
            body, rest, _ = await read_fed([WIRE[:cut], WIRE[cut:] + b"QUIT\r\n"])
            assert (body, rest) == (BODY, b"QUIT\r\n"), cut

    async def test_one_byte_per_read(self):
        """Fed one byte at a time, the message ends exactly at its final dot."""
        wire = WIRE + b"RSET\r\n"
        body, rest, _ = await read_fed([wire[i:i + 1] for i in range(len(wire))])
        assert (body, rest) == (BODY, b"RSET\r\n")

    async def test_first_line_dot_and_empty_message(self):
        """A stuffed dot on the first line is unstuffed, an unstuffed one removed (RFC
        5321 4.5.2); '.' right after 354 is an empty message, also before a command."""
        assert (await read_fed([b"..x\r\n.\r\n"]))[:2] == (b".x\r\n", b"")
        assert (await read_fed([b".x\r\n.\r\n"]))[:2] == (b"x\r\n", b"")
        assert (await read_fed([b".\r\nQUIT\r\n"]))[:2] == (b"", b"QUIT\r\n")
        assert (await read_fed([b".", b"\r", b"\n", b"NOOP\r\n"]))[:2] == (b"", b"NOOP\r\n")
        assert (await read_fed([b"\r\n.\r\nX"]))[:2] == (b"\r\n", b"X")

    async def test_bare_lf_is_content(self):
        """LF.LF, LF.CRLF and CRLF.LF do not end DATA; bare LFs are kept as sent."""
        body, rest, _ = await read_fed([b"a\n.\nb\n.\r\nc\r\n.\nd\r\n.\r\nQUIT\r\n"])
        assert (body, rest) == (b"a\n.\nb\n.\r\nc\r\n\nd\r\n", b"QUIT\r\n")

    async def test_long_lines_and_8bit_content(self):
        """Lines far over 1,000 octets and 8-bit bytes (invalid UTF-8 too) pass unchanged."""
        body = (b"Subject: \xc3\xa4\xff\r\n\r\n" + b"x" * 200_000 + b"\r\n"
                + b"\xe4" * 3000 + b"\r\n")
        wire = stuff(body)
        got, rest, _ = await read_fed([wire[i:i + 7000] for i in range(0, len(wire), 7000)]
                                      + [b"QUIT\r\n"])
        assert (got, rest) == (body, b"QUIT\r\n")

    async def test_over_limit_is_discarded_while_reading(self):
        """5 MB against a 10,000-byte limit: None after the final dot, and the buffer
        never holds more than the limit; the next command is still there."""
        wire = stuff((b"y" * 98 + b"\r\n") * 50_000)
        parts = [wire[i:i + 65536] for i in range(0, len(wire), 65536)] + [b"RSET\r\n"]
        body, rest, seen = await read_fed(parts, limit=10_000)
        assert (body, rest) == (None, b"RSET\r\n")
        assert max(seen) <= 10_000 + 6

    async def test_limit_counts_unstuffed_bytes(self):
        """A message of exactly the limit after unstuffing is read; one byte more is not."""
        body = b".\r\n" * 99 + b"z\r\n"          # 300 bytes, 399 on the wire
        assert (await read_fed([stuff(body)], limit=300))[0] == body
        assert (await read_fed([stuff(b"z" + body)], limit=300))[0] is None

    async def test_limit_counts_unstuffed_bytes_across_reads(self):
        """Read in pieces (past the reader's line limit), a message of exactly the limit
        after unstuffing is still read; one byte more is not."""
        body = b".\r\n" * 999 + b"z\r\n"         # 3,000 bytes, 3,999 on the wire
        for wire, want in ((stuff(body), body), (stuff(b"z" + body), None)):
            parts = [wire[i:i + 700] for i in range(0, len(wire), 700)]
            assert (await read_fed(parts, limit=3000))[0] == want

    @settings(max_examples=300, deadline=None)
    @given(lines=st.lists(st.text(alphabet=".\r\nab\xe4", max_size=8), max_size=12),
           cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4))
    def test_any_message_any_cuts(self, lines: list[str], cuts: list[int]):
        """Any message (dots, bare CR and LF) cut anywhere reads back as sent, and the
        command behind it stays unread."""
        body = b"".join(line.encode("latin-1") + b"\r\n" for line in lines)
        wire = stuff(body) + b"NOOP\r\n"
        points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
        parts = [wire[a:b] for a, b in itertools.pairwise(points)]
        assert asyncio.run(read_fed(parts))[:2] == (body, b"NOOP\r\n")


# (text after FROM:/TO:, what split_path gives: (address, parameters) or None)
PATHS = [("<a@b>", ("a@b", [])), ("<a@b> SIZE=10", ("a@b", ["SIZE=10"])),
         ("<a@b>  SIZE=10\tBODY=8BITMIME", ("a@b", ["SIZE=10", "BODY=8BITMIME"])),
         ("<a.b+c@x-y.example.org>", ("a.b+c@x-y.example.org", [])), ("<A@B.C>", ("A@B.C", [])),
         ("<o'brien@x.ie>", ("o'brien@x.ie", [])), ("<a..b@c>", ("a..b@c", [])),
         ("<a@[1.2.3.4]>", ("a@[1.2.3.4]", [])), ("<@r:a@b>", ("a@b", [])),
         ('<"q x"@b>', ('"q x"@b', [])), ('<"q"@b>', ("q@b", [])),
         ('"q x"@b X', ('"q x"@b', ["X"])),
         ("<>", ("", [])), ("<> X", ("", ["X"])), ("a@b", ("a@b", [])), ("a@b X", ("a@b", ["X"])),
         ("<a@b> (c) SIZE=1", ("a@b", ["(c)", "SIZE=1"])), ("<postmaster>", ("postmaster", [])),
         ("<ä@b.test> SMTPUTF8", ("ä@b.test", ["SMTPUTF8"])),
         ("<a@b>x", None), ("<a@b", None), ("a@b>", None), ("<a b@c>", None), ("<a@b.>", None),
         ("<a@-b>", None), ("<<a@b>>", None), ('<"q x">', None), ("<a@[1.2.3]>", None),
         ("<a@[IPv6:1::2::3]>", None), ("<@r:>", None), ("<\udcff@b>", None), ("", None)]


class TestAddressParsing:
    @pytest.mark.parametrize(("text", "parsed"), PATHS)
    def test_split_path(self, text, parsed):
        """split_path gives the address (no route, least quoting) and the parameters
        split on blanks, or None for what is no path."""
        assert split_path(text) == parsed


class Pipeline:
    """Records what the handler submits and queues nothing."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []

    async def submit(self, ctx: OutboundContext) -> SubmitResult:
        self.raws.append(ctx.raw)
        return SubmitResult(reply=QUEUED, outbound_id=len(self.raws))


class Listener:
    def __init__(self, server: asyncio.AbstractServer, pipeline: Pipeline,
                 sessions: list[SubmissionSession]) -> None:
        self.server = server
        self.pipeline = pipeline
        self.sessions = sessions
        self.port = server.sockets[0].getsockname()[1]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies(self, n: int = 1) -> list[int]:
        """The codes of the next n replies (multi-line replies count once)."""
        codes: list[int] = []
        while len(codes) < n:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line, f"connection closed after {codes}"
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
        return codes

    async def ready_for_data(self) -> None:
        await self.send(b"EHLO app.test\r\nMAIL FROM:<app@internal.test>\r\n"
                        b"RCPT TO:<cust@customer.test>\r\nDATA\r\n")
        assert await self.replies(4) == [250, 250, 250, 354]


@pytest.fixture
async def listen(rt: Runtime) -> AsyncIterator[Callable[..., Any]]:
    """listen(data_size_limit=..., idle=...) → a Listener on 127.0.0.1 (idle: the
    session timeout)."""
    servers: list[asyncio.AbstractServer] = []
    clients: list[asyncio.StreamWriter] = []

    async def make(data_size_limit: int = 1 << 20, idle: float = 30) -> Listener:
        loop = asyncio.get_running_loop()
        pipeline = Pipeline()
        sub = Submission(lambda: rt, pipeline, lambda comm: None)  # type: ignore[arg-type]
        sessions: list[SubmissionSession] = []

        def factory() -> SubmissionSession:
            s = SubmissionSession(sub, None, data_size_limit=data_size_limit,
                                  enable_SMTPUTF8=True, hostname="gw.test",
                                  ident="deskgate submission", timeout=idle,
                                  auth_require_tls=True, loop=loop)
            sessions.append(s)
            return s

        server = await loop.create_server(factory, "127.0.0.1", 0)
        servers.append(server)
        return Listener(server, pipeline, sessions)

    async def connect(listener: Listener) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        clients.append(writer)
        client = Client(reader, writer)
        assert await client.replies() == [220]
        return client

    make.connect = connect  # type: ignore[attr-defined]
    yield make
    for w in clients:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()


class TestSession:
    async def test_message_reaches_the_handler_unstuffed(self, listen):
        """The handler submits the unstuffed bytes, 8-bit included, and the client gets
        the pipeline's reply."""
        lst = await listen()
        c = await listen.connect(lst)
        await c.ready_for_data()
        body = BODY + b"\xc3\xa4\xff\r\n"
        await c.send(stuff(body))
        assert await c.replies() == [250]
        assert lst.pipeline.raws == [body]

    async def test_pipelined_transaction_after_the_dot(self, listen):
        """A second transaction and QUIT written behind the first dot in one write are
        answered in order, and both messages arrive whole."""
        lst = await listen()
        c = await listen.connect(lst)
        await c.ready_for_data()
        await c.send(stuff(b"one\r\n") + b"MAIL FROM:<app@internal.test>\r\n"
                     b"RCPT TO:<cust@customer.test>\r\nDATA\r\n" + stuff(b"two\r\n")
                     + b"QUIT\r\n")
        assert await c.replies(6) == [250, 250, 250, 354, 250, 221]
        assert lst.pipeline.raws == [b"one\r\n", b"two\r\n"]

    async def test_terminator_split_across_tcp_writes(self, listen):
        """The final CRLF.CRLF split between two TCP writes at each of its offsets."""
        lst = await listen()
        c = await listen.connect(lst)
        wire = stuff(b"Subject: x\r\n\r\n..dot\r\n")
        for cut in range(len(wire) - 6, len(wire) + 1):
            await c.ready_for_data()
            await c.send(wire[:cut])
            await asyncio.sleep(0.02)
            await c.send(wire[cut:] + b"RSET\r\n")
            assert await c.replies(2) == [250, 250], cut
        assert lst.pipeline.raws == [b"Subject: x\r\n\r\n..dot\r\n"] * 7

    async def test_empty_message_and_long_line(self, listen):
        """'.' right after 354 submits an empty message; a 5,000-octet line is accepted
        (aiosmtpd answered 500 after the dot), as Postfix does."""
        lst = await listen()
        c = await listen.connect(lst)
        await c.ready_for_data()
        await c.send(b".\r\n")
        assert await c.replies() == [250]
        await c.send(b"MAIL FROM:<app@internal.test>\r\nRCPT TO:<cust@customer.test>\r\n"
                     b"DATA\r\n" + stuff(b"z" * 5000 + b"\r\n"))
        assert await c.replies(4) == [250, 250, 354, 250]
        assert lst.pipeline.raws == [b"", b"z" * 5000 + b"\r\n"]

    async def test_over_limit_refused_without_holding_it(self, listen):
        """8 MB against a 64 KiB limit: 552 after the dot, the session never holds more
        than the limit, nothing is submitted, and the connection goes on."""
        limit = 64 * 1024
        lst = await listen(data_size_limit=limit)
        c = await listen.connect(lst)
        await c.ready_for_data()
        chunk = (b"x" * 1022 + b"\r\n") * 64
        seen = []
        for _ in range(128):
            await c.send(chunk)
            await asyncio.sleep(0)
            seen.append(lst.sessions[0].data_buffered)
        await c.send(b".\r\nRSET\r\n")
        assert await c.replies(2) == [552, 250]
        assert lst.pipeline.raws == []
        assert 0 < max(seen) <= limit + 6
        assert lst.sessions[0].data_buffered == 0

    async def test_aiosmtpd_replies_kept(self, listen):
        """DATA after MAIL without RCPT is 554 (Postfix's "no valid recipients"), with an
        argument 501; HELP DATA is answered 214."""
        lst = await listen()
        c = await listen.connect(lst)
        await c.send(b"EHLO app.test\r\nMAIL FROM:<app@internal.test>\r\nDATA\r\n")
        assert await c.replies(3) == [250, 250, 554]
        await c.send(b"RCPT TO:<cust@customer.test>\r\nDATA now\r\nHELP DATA\r\n")
        assert await c.replies(3) == [250, 501, 214]
        assert lst.pipeline.raws == []

    async def test_message_data_counts_as_activity(self, listen):
        """With a 1 s timeout, a message trickling in over 2.5 s is still accepted."""
        lst = await listen(idle=1)
        c = await listen.connect(lst)
        await c.ready_for_data()
        for _ in range(10):
            await c.send(b"slow line\r\n")
            await asyncio.sleep(0.25)
        await c.send(b".\r\n")
        assert await c.replies() == [250]
        assert lst.pipeline.raws == [b"slow line\r\n" * 10]


class TestSizeKeyword:
    @pytest.mark.parametrize(("limit", "keyword"), [(1 << 20, b"250-SIZE 1048576"),
                                                    (0, b"250-SIZE 0")])
    async def test_ehlo_advertises_size_also_without_a_limit(self, listen, limit, keyword):
        """EHLO lists SIZE with the limit, and SIZE 0 with max_message_size = 0 (no fixed
        limit, RFC 1870), as the LMTP listener does and Postfix lists SIZE; without a
        limit SIZE was missing, so clients never declared the size."""
        lst = await listen(data_size_limit=limit)
        c = await listen.connect(lst)
        await c.send(b"EHLO app.test\r\n")
        lines = []
        while not lines or lines[-1][3:4] != b" ":
            lines.append((await asyncio.wait_for(c.reader.readline(), 10)).rstrip())
        assert [ln for ln in lines if ln[4:8] == b"SIZE"] == [keyword]
        await c.send(b"MAIL FROM:<app@internal.test> SIZE=3000000\r\n")
        assert await c.replies() == [552 if limit else 250]
