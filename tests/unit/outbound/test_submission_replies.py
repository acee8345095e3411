"""The submission listener's EHLO extensions, pipelined command groups (RFC 2920) and
enhanced status codes (RFC 2034), on a real socket with a recording pipeline.

Every group here is written in one write, as a pipelining client does, and the
replies are read back in order.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.config import SubmissionConfig
from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import QUEUED, SubmitResult
from gateway.outbound.submission import Submission, SubmissionSession
from gateway.testing import config, runtime

# A reply line with an RFC 2034 enhanced status code of its own class.
ENHANCED = re.compile(r"(?P<c>[245])\d\d[ -](?P=c)\.\d{1,3}\.\d{1,3}( |\Z)")
LIMIT = 10_000


class Pipeline:
    """Records the contexts the handler submits and queues nothing."""

    def __init__(self) -> None:
        self.ctxs: list[OutboundContext] = []

    async def submit(self, ctx: OutboundContext) -> SubmitResult:
        self.ctxs.append(ctx)
        return SubmitResult(reply=QUEUED, outbound_id=len(self.ctxs))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> list[str]:
        """The lines of the next reply."""
        lines: list[str] = []
        while True:
            got = await asyncio.wait_for(self.reader.readline(), 10)
            assert got, f"connection closed after {lines}"
            lines.append(got.decode().rstrip("\r\n"))
            if got[3:4] != b"-":
                return lines

    async def replies(self, n: int) -> list[str]:
        """The last lines of the next n replies."""
        return [(await self.reply())[-1] for _ in range(n)]


@pytest.fixture
async def session() -> AsyncIterator[Callable[..., Any]]:
    """session(networks=...) → (Client after the greeting, Pipeline); SIZE limit LIMIT."""
    servers: list[asyncio.AbstractServer] = []
    writers: list[asyncio.StreamWriter] = []

    async def make(networks: tuple[str, ...] = ("127.0.0.0/8",)) -> tuple[Client, Pipeline]:
        rt = runtime(config(submission=SubmissionConfig(allow_networks=networks,
                                                        max_recipients=3)))
        pipeline = Pipeline()
        sub = Submission(lambda: rt, pipeline, lambda comm: None)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SubmissionSession(sub, None, data_size_limit=LIMIT, enable_SMTPUTF8=True,
                                      hostname="gw.test", ident="deskgate submission",
                                      timeout=30, auth_require_tls=False, loop=loop),
            "127.0.0.1", 0)
        servers.append(server)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        writers.append(writer)
        client = Client(reader, writer)
        assert (await client.reply()) == ["220 gw.test deskgate submission"]
        return client, pipeline

    yield make
    for w in writers:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()


class TestEhlo:
    async def test_pipelining_and_enhanced_status_codes_are_advertised(self, session):
        """EHLO lists PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034), as
        Postfix's submission does, next to SIZE, 8BITMIME, SMTPUTF8 and AUTH."""
        c, _ = await session()
        await c.send(b"EHLO app.test\r\n")
        lines = await c.reply()
        assert lines[0] == "250-gw.test"
        keywords = [line[4:].split(" ")[0] for line in lines[1:]]
        assert {"PIPELINING", "ENHANCEDSTATUSCODES", "SIZE", "8BITMIME", "SMTPUTF8",
                "AUTH"} <= set(keywords)
        assert f"250-SIZE {LIMIT}" in lines

    async def test_ehlo_twice_and_helo_still_work(self, session):
        """A second EHLO resets the transaction and lists the same keywords; HELO after
        it is answered with the host name alone, and mail is accepted after either."""
        c, pipeline = await session()
        await c.send(b"EHLO app.test\r\n")
        first = await c.reply()
        await c.send(b"MAIL FROM:<a@internal.test>\r\nEHLO app.test\r\n")
        assert (await c.reply())[-1].startswith("250 2.1.0")
        assert await c.reply() == first
        await c.send(b"RCPT TO:<cust@customer.test>\r\nHELO app.test\r\n"
                     b"MAIL FROM:<a@internal.test>\r\nRCPT TO:<cust@customer.test>\r\n"
                     b"DATA\r\nx\r\n.\r\n")
        got = await c.replies(6)
        assert got[0].startswith("503 ") and got[1] == "250 gw.test"
        assert [r[:3] for r in got[2:]] == ["250", "250", "354", "250"]
        assert len(pipeline.ctxs) == 1


class TestPipelining:
    async def test_group_with_a_refused_rcpt_in_the_middle(self, session):
        """MAIL, RCPT ok, RCPT refused, RCPT ok, DATA in one write: five replies in
        order, the malformed one 501 5.1.3; the message goes to the two accepted recipients."""
        c, pipeline = await session()
        await c.send(b"EHLO app.test\r\n")
        await c.reply()
        await c.send(b"MAIL FROM:<app@internal.test>\r\nRCPT TO:<one@customer.test>\r\n"
                     b"RCPT TO:<bad address>\r\nRCPT TO:<two@customer.test>\r\nDATA\r\n")
        got = await c.replies(5)
        assert [r[:9] for r in got] == ["250 2.1.0", "250 2.1.5", "501 5.1.3", "250 2.1.5",
                                        "354 End d"]
        await c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert (await c.replies(1))[0].startswith("250 2.0.0 queued as 1")
        assert pipeline.ctxs[0].recipients == ["one@customer.test", "two@customer.test"]

    async def test_refused_mail_then_rcpt_and_data_get_503(self, session):
        """A MAIL refused for its SIZE, then RCPT and DATA in the same write: 552, then
        503 for each (no transaction), and nothing is submitted; the next group works."""
        c, pipeline = await session()
        await c.send(b"EHLO app.test\r\n")
        await c.reply()
        await c.send(f"MAIL FROM:<app@internal.test> SIZE={LIMIT + 1}\r\n".encode()
                     + b"RCPT TO:<cust@customer.test>\r\nDATA\r\n"
                     b"MAIL FROM:<app@internal.test> SIZE=100\r\n"
                     b"RCPT TO:<cust@customer.test>\r\nDATA\r\n")
        got = await c.replies(6)
        assert [r[:3] for r in got] == ["552", "503", "503", "250", "250", "354"]
        assert got[1].startswith("503 5.5.1") and got[2].startswith("503 5.5.1")
        await c.send(b"x\r\n.\r\n")
        assert (await c.replies(1))[0].startswith("250 ")
        assert len(pipeline.ctxs) == 1

    async def test_unauthenticated_group_is_refused_in_order(self, session):
        """Outside allow_networks, MAIL/RCPT/DATA in one write: 530 5.7.0, then 503 for
        RCPT and DATA (no sender); nothing is submitted."""
        c, pipeline = await session(networks=("10.0.0.0/8",))
        await c.send(b"EHLO app.test\r\nMAIL FROM:<app@internal.test>\r\n"
                     b"RCPT TO:<cust@customer.test>\r\nDATA\r\nQUIT\r\n")
        got = await c.replies(5)
        assert [r[:9] for r in got] == ["250 HELP", "530 5.7.0", "503 5.5.1", "503 5.5.1",
                                        "221 2.0.0"]
        assert pipeline.ctxs == []

    async def test_whole_transaction_and_body_in_one_write(self, session):
        """EHLO through the final dot and QUIT in one segment (the body right behind DATA,
        in the same read): every reply in order and the message whole."""
        c, pipeline = await session()
        body = b"Subject: one write\r\n\r\n..dot\r\n" + b"z" * 3000 + b"\r\n"
        await c.send(b"EHLO app.test\r\nMAIL FROM:<app@internal.test>\r\n"
                     b"RCPT TO:<cust@customer.test>\r\nDATA\r\n"
                     + body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
                     b"MAIL FROM:<app@internal.test>\r\nRCPT TO:<x@customer.test>\r\n"
                     b"DATA\r\n.\r\nQUIT\r\n")
        got = await c.replies(9)
        assert [r[:3] for r in got] == ["250", "250", "250", "354", "250", "250", "250",
                                        "354", "250"]
        assert (await c.replies(1))[0].startswith("221")
        assert [x.raw for x in pipeline.ctxs] == [body, b""]


# Commands that get a reply of their own; each MAIL that may be accepted is followed
# by RSET, so the next one is not answered "nested MAIL".
COMMANDS = [b"NOOP", b"NOOP x", b"RSET", b"HELP", b"HELP DATA", b"HELP NOSUCH", b"VRFY",
            b"VRFY <a@b.test>", b"EXPN staff", b"XYZZY", b"", b"STARTTLS", b"AUTH",
            b"AUTH NTLM", b"AUTH PLAIN a b c", b"RCPT TO:<a@b.test>", b"DATA", b"MAIL",
            b"MAIL TO:<a@b.test>", b"MAIL FROM:<a@b.test> X=1", b"MAIL FROM:<a@b.test> BODY=9BIT",
            b"MAIL FROM:<a@b.test> SIZE=big", b"MAIL FROM:<a@b.test> SMTPUTF8=1",
            b"MAIL FROM:<a@b.test> SIZE=99999999", b"MAIL FROM:<\xff@b.test>", b"RSET",
            b"MAIL FROM:<a@b.test>", b"MAIL FROM:<c@d.test>", b"RCPT", b"RCPT FROM:<a@b.test>",
            b"RCPT TO:<a b>", b"RCPT TO:<a@b.test> NOTIFY=NEVER", b"RCPT TO:<a@b.test>",
            b"DATA now", b"RSET x", b"QUIT now", b"QUIT"]


class TestEnhancedStatusCodes:
    async def test_every_reply_after_ehlo_carries_one(self, session):
        """Once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply to a command
        carries an enhanced code of its class (RFC 2034), aiosmtpd's own replies too."""
        c, _ = await session(networks=("127.0.0.0/8",))
        await c.send(b"EHLO app.test\r\n")
        await c.reply()
        missing = []
        for cmd in COMMANDS:
            await c.send(cmd + b"\r\n")
            for line in await c.reply():
                if not ENHANCED.match(line):
                    missing.append((cmd, line))
        assert missing == []

    async def test_unknown_commands_and_lockout_replies(self, session):
        """Unknown commands get 500 5.5.2 until the fifth, which gets 421 4.7.0."""
        c, _ = await session()
        await c.send(b"EHLO app.test\r\n")
        await c.reply()
        await c.send(b"X1\r\nX2\r\nX3\r\nX4\r\nX5\r\n")
        got = await c.replies(5)
        assert all(ENHANCED.match(r) for r in got), got
        assert [r[:9] for r in got] == ["500 5.5.2"] * 4 + ["421 4.7.0"]

    async def test_size_refusals_say_5_3_4(self, session):
        """SIZE= over the limit at MAIL and a message over it after the dot are both
        refused with Postfix's 552 5.3.4 Message size exceeds fixed limit."""
        c, pipeline = await session()
        await c.send(b"EHLO app.test\r\n")
        await c.reply()
        await c.send(f"MAIL FROM:<a@internal.test> SIZE={LIMIT + 1}\r\n".encode())
        assert await c.replies(1) == ["552 5.3.4 Message size exceeds fixed limit"]
        await c.send(b"MAIL FROM:<a@internal.test>\r\nRCPT TO:<cust@customer.test>\r\n"
                     b"DATA\r\n" + b"y" * 98 + b"\r\n" + b"y" * LIMIT + b"\r\n.\r\n")
        assert await c.replies(4) == ["250 2.1.0 OK", "250 2.1.5 OK",
                                      "354 End data with <CR><LF>.<CR><LF>",
                                      "552 5.3.4 Message size exceeds fixed limit"]
        assert pipeline.ctxs == []

    async def test_greeting_and_ehlo_keep_their_form(self, session):
        """The greeting and the EHLO/HELO replies carry no enhanced code (RFC 2034
        exempts them) and 354 and 334 stay as they are."""
        c, _ = await session()
        await c.send(b"EHLO app.test\r\n")
        lines = await c.reply()
        assert lines[-1] == "250 HELP"
        await c.send(b"AUTH LOGIN\r\n*\r\nHELO app.test\r\n")
        got = await c.replies(3)
        assert got[0].startswith("334 ") and got[2] == "250 gw.test"
        assert ENHANCED.match(got[1]), got
