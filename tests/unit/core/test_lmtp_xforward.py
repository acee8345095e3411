"""XFORWARD on the LMTP listener (Postfix's XFORWARD_README): the MTA names the
original SMTP client and its queue ID before MAIL; deskgate keeps them for the
next transaction only and hands them to the backend for the log."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from gateway import errors
from gateway.commlog import Comm
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_record import forwarded_client
from gateway.inbound.lmtp_session import LmtpSession
from gateway.inbound.lmtp_syntax import (
    XFORWARD_VALUE_LIMIT,
    parse_xforward,
    printable,
    xtext_decode,
)
from gateway.model import Outcome
from tests.unit.core.test_lmtp_session import Transport


class Backend:
    """Records what each delivery was told about the original client."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.comms: list[Comm] = []

    def rcpt_status(self, address: str) -> SmtpReply:
        return errors.RCPT_OK

    async def deliver(self, mail_from: str, rcpts: Any, raw: bytes, peer: str,
                      **kw: Any) -> Outcome:
        self.calls.append({"from": mail_from, **kw,
                           "context": dict(structlog.contextvars.get_contextvars())})
        return Outcome(replies=tuple(errors.RCPT_OK for _ in rcpts), action="new")

    def log_connection(self, comm: Comm) -> None:
        self.comms.append(comm)


def open_session(backend: Any) -> tuple[LmtpSession, Transport]:
    s = LmtpSession(backend, max_message_size=10_000, max_recipients=10, hostname="gw.test",
                    timeout=300, loop=asyncio.get_running_loop())
    t = Transport(s)
    s.connection_made(t)
    t.take()
    return s, t


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


MESSAGE = (b"MAIL FROM:<s@y.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
           b"Subject: x\r\n\r\nbody\r\n.\r\n")
POSTFIX_XFORWARD = (b"XFORWARD NAME=spike.porcupine.org ADDR=168.100.189.2 PORT=4711 "
                    b"PROTO=ESMTP HELO=spike.porcupine.org\r\n"
                    b"XFORWARD IDENT=3CF6B2AAE8 SOURCE=REMOTE\r\n")


class TestXtext:
    def test_plus_hex_is_the_byte(self):
        """'+2B' is '+', '+3D' is '=', plain characters stay (RFC 3461 xtext)."""
        assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
        assert xtext_decode("spike.porcupine.org") == "spike.porcupine.org"

    def test_utf8_bytes_join(self):
        """Encoded UTF-8 bytes become the character they spell."""
        assert xtext_decode("J+C3+BCrgen") == "Jürgen"

    def test_malformed_is_none(self):
        """A '+' without two hex digits after it is no xtext."""
        for bad in ("a+", "a+2", "a+ZZ", "+g0"):
            assert xtext_decode(bad) is None, bad


class TestPrintable:
    def test_controls_escaped(self):
        """CR, LF, TAB and other controls are written as escapes, on one line."""
        assert printable("a\r\nb\tc\x00d\x7f\u2028") == "a\\r\\nb\\tc\\x00d\\x7f\\u2028"

    def test_capped(self):
        """A value longer than the limit is cut and marked."""
        out = printable("h" * 1000)
        assert len(out) <= XFORWARD_VALUE_LIMIT + 1 and out.endswith("…")
        assert printable("short") == "short"


class TestParseXforward:
    def test_attributes_decoded(self):
        """Names in any case, values xtext-decoded."""
        assert parse_xforward("name=mx+2Eexample.org Addr=192.0.2.1 IDENT=ABC") == {
            "NAME": "mx.example.org", "ADDR": "192.0.2.1", "IDENT": "ABC"}

    def test_unavailable_is_none(self):
        """[UNAVAILABLE] and [TEMPUNAVAIL], in any case, mean unknown."""
        assert parse_xforward("NAME=[TEMPUNAVAIL] ADDR=[unavailable] HELO=[Unavailable]") == {
            "NAME": None, "ADDR": None, "HELO": None}

    def test_unknown_attribute_501(self):
        """An attribute the server does not announce is refused with 501 5.5.4."""
        reply = parse_xforward("NAME=a COLOR=blue")
        assert isinstance(reply, str) and reply.startswith("501 5.5.4") and "COLOR" in reply

    def test_malformed_501(self):
        """No attribute, no '=', or a value that is no xtext: 501 5.5.4."""
        for arg in ("", "NAME", "=x", "NAME=a+Z"):
            reply = parse_xforward(arg)
            assert isinstance(reply, str) and reply.startswith("501 5.5.4"), arg

    def test_control_characters_escaped_and_long_values_capped(self):
        """A HELO with an encoded line break cannot forge a log line; an endless one is cut."""
        got = parse_xforward("HELO=evil+0D+0AFake:+20entry NAME=" + "n" * 400)
        assert isinstance(got, dict)
        assert got["HELO"] == "evil\\r\\nFake: entry"
        name = got["NAME"]
        assert name is not None and len(name) <= XFORWARD_VALUE_LIMIT + 1


class TestForwardedClient:
    def test_postfix_notation(self):
        """name[addr]:port, then HELO, protocol and login, as Postfix logs a client."""
        assert forwarded_client({"NAME": "mx.example.org", "ADDR": "192.0.2.1", "PORT": "25",
                                 "PROTO": "ESMTP", "HELO": "mx", "LOGIN": "alice",
                                 "IDENT": "ABC"}) == (
            "mx.example.org[192.0.2.1]:25 HELO mx, ESMTP, login alice")

    def test_unknown_name(self):
        """Without a hostname the address is shown as Postfix shows it: unknown[addr]."""
        assert forwarded_client({"ADDR": "192.0.2.1", "NAME": None}) == "unknown[192.0.2.1]"

    def test_no_address_is_local_submission(self):
        """ADDR unknown: the MTA forwards a local submission (XFORWARD_README)."""
        assert forwarded_client({"ADDR": None, "HELO": "x", "IDENT": "ABC"}) == (
            "local submission (no client address)")


class TestXforwardSession:
    async def test_lhlo_announces_xforward(self):
        """LHLO offers XFORWARD with the attributes deskgate takes."""
        s, t = open_session(Backend())
        s.data_received(b"LHLO mta\r\n")
        assert "250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE LOGIN" in t.take()

    async def test_postfix_commands_reach_the_delivery(self):
        """Two XFORWARD commands (as Postfix sends them) are both answered 250 and the
        delivery gets the client and the queue ID; the log context has queue_id."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\n" + POSTFIX_XFORWARD + MESSAGE)
        await settle()
        lines = t.take()
        assert lines.count("250 2.0.0 Ok") == 2
        [call] = backend.calls
        assert call["client"] == ("spike.porcupine.org[168.100.189.2]:4711 "
                                  "HELO spike.porcupine.org, ESMTP")
        assert call["queue_id"] == "3CF6B2AAE8"
        assert call["context"].get("queue_id") == "3CF6B2AAE8"
        assert "queue_id" not in structlog.contextvars.get_contextvars()

    async def test_reset_after_the_transaction(self):
        """The attributes apply to the next transaction only: a second message on the
        same connection without XFORWARD is delivered without them."""
        backend = Backend()
        s, _t = open_session(backend)
        s.data_received(b"LHLO mta\r\n" + POSTFIX_XFORWARD + MESSAGE)
        await settle()
        s.data_received(MESSAGE)
        await settle()
        assert [c.get("queue_id") for c in backend.calls] == ["3CF6B2AAE8", None]
        assert "client" not in backend.calls[1]
        assert "queue_id" not in backend.calls[1]["context"]

    async def test_rset_and_lhlo_reset(self):
        """RSET (the end of a transaction, XFORWARD_README) and LHLO drop the attributes."""
        for between in (b"RSET\r\n", b"LHLO mta\r\n"):
            backend = Backend()
            s, _t = open_session(backend)
            s.data_received(b"LHLO mta\r\n" + POSTFIX_XFORWARD + between + MESSAGE)
            await settle()
            [call] = backend.calls
            assert "queue_id" not in call, between

    async def test_unavailable_erases(self):
        """A later [UNAVAILABLE] erases a value an earlier command set."""
        backend = Backend()
        s, _t = open_session(backend)
        s.data_received(b"LHLO mta\r\nXFORWARD ADDR=192.0.2.1 IDENT=AAA\r\n"
                        b"XFORWARD IDENT=[UNAVAILABLE]\r\n" + MESSAGE)
        await settle()
        [call] = backend.calls
        assert (call["client"], call["queue_id"]) == ("unknown[192.0.2.1]", "")

    async def test_inside_a_transaction_503(self):
        """XFORWARD between MAIL and the final dot is refused with 503 5.5.1 and changes
        nothing; the transaction goes on."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nXFORWARD IDENT=LATE\r\n"
                        b"RCPT TO:<a@x.test>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        await settle()
        lines = t.take()
        assert any(ln.startswith("503 5.5.1") for ln in lines)
        [call] = backend.calls
        assert "queue_id" not in call

    async def test_bad_attribute_501_takes_nothing(self):
        """A command with an unknown attribute is refused as a whole (501 5.5.4)."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nXFORWARD IDENT=AAA COLOR=blue\r\n" + MESSAGE)
        await settle()
        assert any(ln.startswith("501 5.5.4") for ln in t.take())
        [call] = backend.calls
        assert "queue_id" not in call

    async def test_before_lhlo_503(self):
        """XFORWARD before LHLO gets 503 5.5.1, as MAIL does."""
        s, t = open_session(Backend())
        s.data_received(b"XFORWARD IDENT=AAA\r\n")
        assert t.take() == ["503 5.5.1 Send LHLO first"]

    async def test_without_xforward_the_backend_is_called_as_before(self):
        """A client that never sends XFORWARD: deliver gets the four arguments it always
        got (a backend without the keywords keeps working)."""
        calls: list[tuple[Any, ...]] = []

        class Plain(Backend):
            async def deliver(self, mail_from: str, rcpts: Any, raw: bytes,  # type: ignore[override]
                              peer: str) -> Outcome:
                calls.append((mail_from, peer))
                return Outcome(replies=tuple(errors.RCPT_OK for _ in rcpts), action="new")

        s, t = open_session(Plain())
        s.data_received(b"LHLO mta\r\n" + MESSAGE)
        await settle()
        assert calls == [("s@y.test", "127.0.0.1:4242")]
        assert t.take()[-1].startswith("250 2.1.5")
