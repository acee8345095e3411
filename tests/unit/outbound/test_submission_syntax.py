"""The submission listener's HELP, VRFY and MAIL FROM / RCPT TO syntax, on a real socket
with a recording pipeline, compared with Postfix's smtpd defaults
(strict_rfc821_envelopes = no): a path without angle brackets is accepted, anything
else that is no RFC 5321 path is refused with Postfix's replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.config import SubmissionConfig
from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import QUEUED, SubmitResult
from gateway.outbound.submission import Submission, SubmissionSession
from gateway.testing import config, runtime

BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"


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

    async def lines(self, line: bytes) -> list[str]:
        """Send one command line; the lines of its reply."""
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        out: list[str] = []
        while True:
            got = await asyncio.wait_for(self.reader.readline(), 10)
            assert got, f"connection closed after {out}"
            out.append(got.decode("utf-8", "replace").rstrip("\r\n"))
            if got[3:4] != b"-":
                return out

    async def cmd(self, line: bytes) -> str:
        """Send one command line; the last line of its reply."""
        return (await self.lines(line))[-1]


@pytest.fixture
async def session() -> AsyncIterator[Callable[..., Any]]:
    """session() → (Client after EHLO, Pipeline); 127.0.0.1 may submit without AUTH."""
    servers: list[asyncio.AbstractServer] = []
    writers: list[asyncio.StreamWriter] = []

    async def make(idle: float = 30) -> tuple[Client, Pipeline]:
        rt = runtime(config(submission=SubmissionConfig(allow_networks=("127.0.0.0/8",))))
        pipeline = Pipeline()
        sub = Submission(lambda: rt, pipeline, lambda comm: None)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SubmissionSession(sub, None, data_size_limit=10_000, enable_SMTPUTF8=True,
                                      hostname="gw.test", timeout=idle, auth_require_tls=False,
                                      loop=loop), "127.0.0.1", 0)
        servers.append(server)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        writers.append(writer)
        client = Client(reader, writer)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        assert (await client.cmd(b"EHLO app.test")).startswith("250 ")
        return client, pipeline

    yield make
    for w in writers:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()


class TestHelp:
    @pytest.mark.parametrize("line", [b"HELP", b"HELP MAIL", b"HELP NOSUCH", b"help vrfy"])
    async def test_help_is_214(self, session, line):
        """HELP, with or without a topic, is answered 214 2.0.0 (RFC 5321 4.1.1.8) with the
        commands the listener takes, not 250 or 501 with aiosmtpd's syntax lines."""
        c, _ = await session()
        assert await c.lines(line) == [
            "214 2.0.0 Commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET"]

    async def test_help_is_no_unknown_command(self, session):
        """HELP does not count toward the five unknown commands that end a session."""
        c, _ = await session()
        for _ in range(6):
            assert (await c.cmd(b"HELP")).startswith("214 ")
        assert await c.cmd(b"NOOP") == "250 2.0.0 OK"


class TestVrfy:
    @pytest.mark.parametrize("line", [b"VRFY", b"VRFY root", b"VRFY <app@internal.test>",
                                      b"VRFY <bad", b"VRFY postmaster"])
    async def test_vrfy_is_disabled(self, session, line):
        """VRFY gets Postfix's disable_vrfy_command answer whatever it asks for, so it
        neither confirms an address nor echoes the argument."""
        c, _ = await session()
        assert await c.lines(line) == ["502 5.5.1 VRFY command is disabled"]


class TestIdle:
    async def test_help_and_vrfy_do_not_extend_the_timeout(self, session):
        """HELP and VRFY, like NOOP, do not re-arm the idle timeout: a client sending
        only them is cut with 421 4.4.2 once the timeout has passed."""
        c, _ = await session(idle=1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        last = ""
        while loop.time() - start < 4 and not last.startswith("421"):
            last = await c.cmd(b"HELP" if len(last) % 2 else b"VRFY x")
            await asyncio.sleep(0.2)
        assert last.startswith("421 4.4.2")
        assert loop.time() - start < 2


class TestMailFrom:
    @pytest.mark.parametrize(("arg", "sender"), [
        (b"<app@internal.test>", "app@internal.test"),
        (b"app@internal.test", "app@internal.test"),           # strict_rfc821_envelopes=no
        (b" <app@internal.test>", "app@internal.test"),
        (b"<app@internal.test>  SIZE=10\tbody=8bitmime", "app@internal.test"),
        (b'<"app x"@internal.test>', '"app x"@internal.test'),
        (b'<"app"@internal.test>', "app@internal.test"),
        (b"<@relay.test,@r2.test:app@internal.test>", "app@internal.test"),
        (b"<app@[127.0.0.1]>", "app@[127.0.0.1]"),
        (b"<app@[IPv6:::1]>", "app@[IPv6:::1]"),
        (b"<app.@internal.test>", "app.@internal.test"),
        (b"<app>", "app"),
        (b"<>", ""),
        (b"<j\xc3\xb6rg@b\xc3\xbcro.test>", "jörg@büro.test"),  # UTF-8, no SMTPUTF8
        (b"<j\xc3\xb6rg@internal.test> SMTPUTF8", "jörg@internal.test"),
    ])
    async def test_accepted_paths(self, session, arg, sender):
        """What Postfix's smtpd accepts by default is accepted and reaches the pipeline
        as the address alone (source route dropped, least quoting)."""
        c, pipeline = await session()
        assert await c.cmd(b"MAIL FROM:" + arg) == "250 2.1.0 OK"
        assert await c.cmd(b"RCPT TO:<cust@customer.test>") == "250 2.1.5 OK"
        assert await c.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250 ")
        assert [x.mail_from for x in pipeline.ctxs] == [sender]

    @pytest.mark.parametrize("arg", [
        b"<a @internal.test>", b"<a@internal.test >", b"<a@internal.test>junk",
        b"<a@internal.test", b"a@internal.test>", b"<<a@internal.test>>", b"<a@b@c.test>",
        b"<\xff@internal.test>", b"<a@internal..test>", b"<a@>", b"<@internal.test>",
        b"<a@b c.test>", b"<a@-b.test>", b"<a@[1.2.3.4.5]>", b'<a"b@internal.test>',
        b"<a@internal.test(comment)>", b"<@relay.test:>", b"<a\x01b@internal.test>",
        b"<a\xc2\x85b@internal.test>", b'<"a\xc2\x9b"@internal.test>',
    ])
    async def test_malformed_paths_are_501_5_1_7(self, session, arg):
        """A sender that is no RFC 5321 path (spaces inside <>, text glued to '>',
        unbalanced or doubled brackets, bytes that are no UTF-8, a bad domain) is
        refused with Postfix's 501 5.1.7; no transaction starts."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:" + arg) == BAD_SENDER
        assert await c.cmd(b"RCPT TO:<cust@customer.test>") == "503 5.5.1 Error: need MAIL command"

    @pytest.mark.parametrize(("arg", "option"), [
        (b"<a@internal.test> FOO=BAR", "FOO=BAR"), (b"<a@internal.test> junk", "junk"),
        (b"<a@internal.test> (comment)", "(comment)"), (b"<a@internal.test> RET", "RET"),
        (b"<a@internal.test> ENVID", "ENVID"), (b"<a@internal.test> SMTPUTF8=1", "SMTPUTF8=1"),
        (b"<a@internal.test> NOTIFY=NEVER", "NOTIFY=NEVER"),
        (b"<a@internal.test> BODY=9BIT", "BODY=9BIT"),
        (b"Joe <a@internal.test>", "<a@internal.test>"),
        (b"<a@internal.test> SIZE=10 junk>", "junk>"),
    ])
    async def test_unsupported_parameters_are_555(self, session, arg, option):
        """A parameter EHLO did not advertise, or text after the path that is none, is
        refused with Postfix's 555 5.5.4 Unsupported option naming it."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:" + arg) == f"555 5.5.4 Unsupported option: {option}"

    async def test_unsupported_8bit_parameter_is_not_echoed(self, session):
        """An unsupported parameter with bytes that are no UTF-8 is refused 555 5.5.4
        without being echoed (not 451 from a reply that cannot be encoded)."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:<a@internal.test> X=\xff") == (
            "555 5.5.4 Unsupported option")

    @pytest.mark.parametrize(("line", "reply"), [
        (b"MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM :<a@internal.test>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL TO:<a@internal.test>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a@internal.test> SIZE=big", "501 5.5.4 Bad message size syntax"),
        (b"MAIL FROM:<a@internal.test> SIZE=\xc2\xb2", "501 5.5.4 Bad message size syntax"),
    ])
    async def test_command_syntax(self, session, line, reply):
        """MAIL without FROM: and a SIZE that is no number get Postfix's 501 5.5.4."""
        c, _ = await session()
        assert await c.cmd(line) == reply


class TestRcptTo:
    @pytest.mark.parametrize(("arg", "rcpt"), [
        (b"<cust@customer.test>", "cust@customer.test"),
        (b"cust@customer.test", "cust@customer.test"),
        (b" <Cust@Customer.test>", "Cust@Customer.test"),   # case kept (RFC 5321 2.4)
        (b"<@relay.test:cust@customer.test>", "cust@customer.test"),
        (b'<"cust"@customer.test>', "cust@customer.test"),
        (b"<z\xc3\xb6@customer.test>", "zö@customer.test"),
    ])
    async def test_accepted_paths(self, session, arg, rcpt):
        """A recipient Postfix's smtpd accepts by default is accepted as the address."""
        c, pipeline = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == "250 2.1.0 OK"
        assert await c.cmd(b"RCPT TO:" + arg) == "250 2.1.5 OK"
        assert await c.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
        assert (await c.cmd(b"x\r\n.")).startswith("250 ")
        assert [x.recipients for x in pipeline.ctxs] == [[rcpt]]

    @pytest.mark.parametrize("arg", [
        b"<>", b"<c @customer.test>", b"<c@customer.test>junk", b"<c@customer.test",
        b"c@customer.test>", b"<<c@customer.test>>", b"<c@customer..test>", b"<@customer.test>",
        b"<\xff@customer.test>", b"", b"<c\x1b@customer.test>", b"<c\x7f@customer.test>",
        b"<c\xc2\x85@customer.test>", b"<c@customer\xc2\x80.test>",
    ])
    async def test_malformed_paths_are_501_5_1_3(self, session, arg):
        """An empty or malformed recipient is refused with Postfix's 501 5.1.3; the
        transaction goes on and the next good recipient is accepted."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == "250 2.1.0 OK"
        line = b"RCPT TO:" + arg
        expected = BAD_RECIPIENT if arg else "501 5.5.4 Syntax: RCPT TO:<address>"
        assert await c.cmd(line) == expected
        assert await c.cmd(b"RCPT TO:<cust@customer.test>") == "250 2.1.5 OK"

    @pytest.mark.parametrize(("arg", "option"), [
        (b"<c@customer.test> NOTIFY", "NOTIFY"), (b"<c@customer.test> RET=FULL", "RET=FULL"),
        (b"<c@customer.test> FOO", "FOO"), (b"<c@customer.test> junk>", "junk>"),
    ])
    async def test_unsupported_parameters_are_555(self, session, arg, option):
        """RCPT parameters other than DSN's NOTIFY=/ORCPT= get 555 5.5.4 Unsupported
        option."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == "250 2.1.0 OK"
        assert await c.cmd(b"RCPT TO:" + arg) == f"555 5.5.4 Unsupported option: {option}"

    async def test_rcpt_without_to_is_syntax(self, session):
        """RCPT without TO: gets Postfix's 501 5.5.4 Syntax: RCPT TO:<address>."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == "250 2.1.0 OK"
        assert await c.cmd(b"RCPT FROM:<c@customer.test>") == (
            "501 5.5.4 Syntax: RCPT TO:<address>")
