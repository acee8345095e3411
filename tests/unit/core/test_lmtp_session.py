"""The LMTP protocol layer fed byte by byte: framing, pipelining, limits, ordering.

The session is driven through its asyncio.Protocol methods with a transport that
records writes, so where the input is cut between two reads is chosen exactly.
The backend is a recording fake: these tests are about the protocol, the
integration tests deliver through the real pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import errors
from gateway.commlog import Comm
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_session import PAUSE_AT, LmtpSession
from gateway.model import Outcome


class Backend:
    """Accepts every recipient but ghost@; a delivery can be held until `release`."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, list[str], bytes]] = []
        self.comms: list[Comm] = []
        self.hold = False
        self.release = asyncio.Event()

    def rcpt_status(self, address: str) -> SmtpReply:
        return errors.RCPT_UNKNOWN if address.startswith("ghost@") else errors.RCPT_OK

    async def deliver(self, mail_from: str, rcpts: Any, raw: bytes, peer: str) -> Outcome:
        if self.hold:
            await self.release.wait()
        self.delivered.append((mail_from, list(rcpts), raw))
        # A distinct reply per recipient, so the order can be checked.
        return Outcome(replies=tuple(SmtpReply(250, "2.1.5", f"<{r}> delivered")
                                     for r in rcpts), action="new")

    def log_connection(self, comm: Comm) -> None:
        self.comms.append(comm)


class Transport(asyncio.Transport):
    """Records what the session writes; close() ends the connection as a socket would."""

    def __init__(self, session: LmtpSession) -> None:
        super().__init__()
        self.session = session
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.session.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> list[str]:
        """The reply lines written since the last take()."""
        lines = self.out.decode().split("\r\n")[:-1]
        self.out.clear()
        return lines


def open_session(backend: Backend, *, limit: int = 10_000, rcpts: int = 100
                 ) -> tuple[LmtpSession, Transport]:
    s = LmtpSession(backend, max_message_size=limit, max_recipients=rcpts,
                    hostname="gw.test", timeout=300, loop=asyncio.get_running_loop())
    t = Transport(s)
    s.connection_made(t)
    assert t.take() == ["220 gw.test deskgate LMTP"]
    return s, t


async def settle() -> None:
    """Let running deliveries finish."""
    for _ in range(5):
        await asyncio.sleep(0)


def codes(lines: list[str]) -> list[int]:
    return [int(x[:3]) for x in lines if x[3:4] == " "]


async def ready_for_data(backend: Backend, rcpts: tuple[str, ...] = ("a@x.test",), **kw: Any
                         ) -> tuple[LmtpSession, Transport]:
    s, t = open_session(backend, **kw)
    s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\n"
                    + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts) + b"DATA\r\n")
    assert codes(t.take())[-1] == 354
    return s, t


BODY = b"Subject: cut\r\n\r\n.leading\r\n.\r\nline\r\n..\r\nlast\r\n"
WIRE = b"Subject: cut\r\n\r\n..leading\r\n..\r\nline\r\n...\r\nlast\r\n.\r\n"


class TestDataFraming:
    async def test_terminator_and_stuffing_split_at_every_offset(self):
        """The message cut into two reads at every byte offset is stored identically."""
        for cut in range(len(WIRE) + 1):
            backend = Backend()
            s, t = await ready_for_data(backend)
            s.data_received(WIRE[:cut])
            s.data_received(WIRE[cut:])
            await settle()
            assert backend.delivered == [("s@y.test", ["a@x.test"], BODY)], cut
            assert t.take() == ["250 2.1.5 <a@x.test> delivered"], cut

    async def test_one_byte_per_read(self):
        """Fed one byte at a time, the message ends exactly at its final dot."""
        backend = Backend()
        s, _t = await ready_for_data(backend)
        for i in range(len(WIRE)):
            s.data_received(WIRE[i:i + 1])
        await settle()
        assert [d[2] for d in backend.delivered] == [BODY]

    async def test_dot_line_split_between_reads(self):
        """'CRLF..CRLF' split after each byte is a one-dot line, not the end of DATA."""
        for cut in range(1, 6):
            backend = Backend()
            s, t = await ready_for_data(backend)
            part = b"a\r\n..\r\nb\r\n.\r\n"
            s.data_received(part[:2 + cut])
            assert backend.delivered == [] and t.take() == []
            s.data_received(part[2 + cut:])
            await settle()
            assert [d[2] for d in backend.delivered] == [b"a\r\n.\r\nb\r\n"], cut

    async def test_first_line_dot_and_empty_message(self):
        """A stuffed dot on the first line is unstuffed; '.' right after 354 is empty."""
        backend = Backend()
        s, _t = await ready_for_data(backend)
        s.data_received(b"..x\r\n.\r\n")
        await settle()
        s.data_received(b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n.\r\n")
        await settle()
        assert [d[2] for d in backend.delivered] == [b".x\r\n", b""]
        assert backend.delivered[1][0] == ""

    async def test_bare_lf_is_content(self):
        """LF.LF and CRLF.LF do not end DATA; bare LFs are stored as sent, and a line's
        first dot is removed even when the client did not double it (RFC 5321 4.5.2)."""
        backend = Backend()
        s, _t = await ready_for_data(backend)
        s.data_received(b"a\n.\nb\r\n.\nc\r\n.x\r\n.\r\n")
        await settle()
        assert [d[2] for d in backend.delivered] == [b"a\n.\nb\r\n\nc\r\nx\r\n"]

    async def test_bare_lf_command_lines(self):
        """Command lines ending in a bare LF are accepted like CRLF ones."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\nMAIL FROM:<s@y.test>\nRCPT TO:<a@x.test>\nDATA\n")
        assert codes(t.take()) == [250, 250, 250, 354]


class TestReplies:
    async def test_one_reply_per_recipient_in_rcpt_order(self):
        """RFC 2033: after DATA one reply per accepted recipient, in RCPT order; the refused
        one gets none."""
        backend = Backend()
        s, t = await ready_for_data(backend, ("c@x.test", "ghost@x.test", "a@x.test",
                                              "b@x.test"))
        s.data_received(b"hi\r\n.\r\n")
        await settle()
        assert t.take() == [f"250 2.1.5 <{r}> delivered" for r in ("c@x.test", "a@x.test",
                                                                    "b@x.test")]

    async def test_lhlo_extensions(self):
        """LHLO lists PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8, XFORWARD and
        SIZE, no CHUNKING."""
        s, t = open_session(Backend(), limit=5000)
        s.data_received(b"LHLO mta\r\n")
        lines = t.take()
        assert [x[4:] for x in lines] == ["gw.test", "PIPELINING", "ENHANCEDSTATUSCODES",
                                          "8BITMIME", "SMTPUTF8",
                                          "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE LOGIN",
                                          "SIZE 5000"]
        assert [x[3] for x in lines] == ["-"] * 6 + [" "]

    async def test_simple_commands(self):
        """NOOP, RSET, VRFY, EXPN, HELP answer with enhanced status codes."""
        s, t = open_session(Backend())
        s.data_received(b"NOOP\r\nRSET\r\nVRFY a@x.test\r\nVRFY\r\nEXPN list\r\nHELP\r\n"
                        b"RSET now\r\n")
        lines = t.take()
        assert codes(lines) == [250, 250, 252, 501, 502, 214, 501]
        assert all(x[4:5].isdigit() and x[5] == "." for x in lines)
        assert "LHLO" in lines[5] and "DATA" in lines[5]

    async def test_commands_out_of_order(self):
        """MAIL before LHLO, RCPT/DATA before MAIL, nested MAIL, DATA without an accepted
        recipient: 503 each, and the transaction still works afterwards."""
        s, t = open_session(Backend())
        s.data_received(b"MAIL FROM:<s@y.test>\r\nLHLO mta\r\nRCPT TO:<a@x.test>\r\n"
                        b"DATA\r\nMAIL FROM:<s@y.test>\r\nMAIL FROM:<s@y.test>\r\n"
                        b"RCPT TO:<ghost@x.test>\r\nDATA\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
        assert codes(t.take()) == [503, 250, 503, 503, 250, 503, 550, 503, 250, 354]

    async def test_unknown_and_helo(self):
        """Unknown verbs and HELO/EHLO get 500 5.5.1; the fifth ends the connection with
        421 4.7.0, as Postfix's "too many errors" (an MTA tries again later)."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"EHLO x\r\nHELO x\r\nFROB\r\n\r\n")
        assert t.take() == ['500 5.5.1 Error: command "EHLO" not recognized',
                            '500 5.5.1 Error: command "HELO" not recognized',
                            '500 5.5.1 Error: command "FROB" not recognized',
                            "500 5.5.2 Error: bad syntax"]
        s.data_received(b"X1\r\nX2\r\nNOOP\r\n")
        assert t.take() == ['500 5.5.1 Error: command "X1" not recognized',
                            "421 4.7.0 gw.test Error: too many errors"]
        assert t.closed
        await settle()
        [comm] = backend.comms
        assert any("421 4.7.0" in e.value for e in comm.objects[0].entries)

    async def test_mail_parameters(self):
        """SIZE= over the limit is refused at MAIL; BODY=8BITMIME and SMTPUTF8 are fine,
        unknown parameters are not."""
        s, t = open_session(Backend(), limit=1000)
        s.data_received(b"LHLO mta\r\n")
        t.take()
        s.data_received(b"MAIL FROM:<s@y.test> SIZE=1001\r\nMAIL FROM:<s@y.test> SIZE=x\r\n"
                        b"MAIL FROM:<s@y.test> BODY=BINARYMIME\r\n"
                        b"MAIL FROM:<s@y.test> FOO=1\r\n"
                        b"MAIL FROM:<s@y.test> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n")
        lines = t.take()
        assert codes(lines) == [552, 501, 501, 555, 250]
        assert lines[0].startswith("552 5.3.4")

    async def test_rcpt_parameters(self):
        """RCPT parameters are checked like MAIL's: an unknown one gets 555 and the recipient
        is not accepted; the DSN ones (NOTIFY, ORCPT) are ignored like RET and ENVID."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\n"
                        b"RCPT TO:<a@x.test> FOO=1\r\n"
                        b"RCPT TO:<b@x.test> NOTIFY=NEVER ORCPT=rfc822;b@x.test\r\n"
                        b"DATA\r\nhi\r\n.\r\n")
        await settle()
        lines = t.take()
        assert codes(lines) == [250, 250, 555, 250, 354, 250]
        assert [x[:9] for x in lines if x[:3] == "555"] == ["555 5.5.4"]
        assert [d[1] for d in backend.delivered] == [["b@x.test"]]

    async def test_size_with_non_ascii_digits(self):
        """SIZE= with digits other than ASCII ones is a syntax error, not a local problem."""
        s, t = open_session(Backend())
        s.data_received("LHLO mta\r\nMAIL FROM:<s@y.test> SIZE=\u00b2\r\n".encode())
        assert codes(t.take()) == [250, 501]

    async def test_quoted_local_part(self):
        """A quoted local part may hold spaces, '>' and quoted pairs (RFC 5321 4.1.2); a
        quote left open is a syntax error."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b'LHLO mta\r\nMAIL FROM:<"john doe"@y.test> SIZE=10\r\n'
                        b'RCPT TO:<"a>b \\" c"@x.test>\r\nRCPT TO:<@r.test:"d e"@x.test>\r\n'
                        b'RCPT TO:"f g"@x.test\r\nDATA\r\nhi\r\n.\r\n'
                        b'MAIL FROM:<"open@y.test>\r\nMAIL FROM:<"a"b c@y.test>\r\n')
        await settle()
        assert codes(t.take()) == [250, 250, 250, 250, 250, 354, 250, 250, 250, 501, 501]
        assert backend.delivered == [('"john doe"@y.test', ['"a>b \\" c"@x.test',
                                                             '"d e"@x.test', '"f g"@x.test'],
                                      b"hi\r\n")]

    async def test_needless_quoting_is_dropped(self):
        """A quoted local part that needs no quoting is the same mailbox (RFC 5321 4.1.2:
        all quoted forms are equivalent): it is passed on in the form with the least
        quoting, the one system addresses are written in."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b'LHLO mta\r\nMAIL FROM:<"s.t"@y.test>\r\nRCPT TO:<"a"@x.test>\r\n'
                        b'RCPT TO:<"b\\c"@x.test>\r\nRCPT TO:<"a..b"@x.test>\r\n'
                        b'RCPT TO:<"d\\ e"@x.test>\r\nRCPT TO:<"f\\"g"@x.test>\r\n'
                        b'RCPT TO:<"\xc3\xa4"@x.test>\r\nDATA\r\nhi\r\n.\r\n')
        await settle()
        assert codes(t.take()) == [250, 250, 250, 250, 250, 250, 250, 250, 354] + [250] * 6
        assert backend.delivered == [("s.t@y.test", ["a@x.test", "bc@x.test", '"a..b"@x.test',
                                                     '"d e"@x.test', '"f\\"g"@x.test',
                                                     "\u00e4@x.test"], b"hi\r\n")]

    async def test_invalid_utf8_command_refused(self):
        """A command line that is not UTF-8 gets 500 5.5.2 (as Postfix answers), so no
        address the store cannot keep is accepted; UTF-8 addresses are fine."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<\xff@y.test>\r\n"
                        b"MAIL FROM:<\xc3\xa4@y.test> SMTPUTF8\r\nRCPT TO:<a\xe4@x.test>\r\n"
                        b"RCPT TO:<\xc3\xa4@x.test>\r\nDATA\r\nhi\r\n.\r\n")
        await settle()
        lines = t.take()
        assert codes(lines) == [250, 500, 250, 500, 250, 354, 250]
        assert [x[:9] for x in lines if x[:3] == "500"] == ["500 5.5.2"] * 2
        assert [(d[0], d[1]) for d in backend.delivered] == [("\u00e4@y.test", ["\u00e4@x.test"])]


class Refusing(Backend):
    """Knows no address at all, as `unknown_recipient = "reject"` with none configured."""

    def rcpt_status(self, address: str) -> SmtpReply:
        return errors.RCPT_UNKNOWN


class TestPostmaster:
    async def test_bare_postmaster_is_accepted_in_any_case(self):
        """RCPT TO:<postmaster> without a domain (any case, also after a source route) is
        accepted though the backend knows no such address (RFC 5321 4.5.1), and delivered
        as postmaster@ the gateway's hostname."""
        backend = Refusing()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<postmaster>\r\n"
                        b"RCPT TO:<PostMaster>\r\nRCPT TO:<@r.test:POSTMASTER>\r\n"
                        b"RCPT TO:<a@x.test>\r\nDATA\r\nhi\r\n.\r\n")
        await settle()
        assert codes(t.take()) == [250, 250, 250, 250, 250, 550, 354, 250, 250, 250]
        assert [d[1] for d in backend.delivered] == [["postmaster@gw.test"] * 3]

    async def test_postmaster_at_the_hostname_is_accepted(self):
        """postmaster@ the gateway's hostname is accepted too, though the backend knows no
        such address; postmaster at another domain is up to the backend."""
        backend = Refusing()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<Postmaster@GW.test>\r\n"
                        b"RCPT TO:<postmaster@x.test>\r\n")
        assert codes(t.take()) == [250, 250, 250, 550]

    async def test_configured_postmaster_address_decides(self):
        """When postmaster@ the hostname is a system address, its validity applies to the
        bare postmaster too."""

        class Disabled(Backend):
            def rcpt_status(self, address: str) -> SmtpReply:
                return errors.RCPT_INVALID if address == "postmaster@gw.test" \
                    else errors.RCPT_OK

        s, t = open_session(Disabled())
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<postmaster>\r\n")
        assert t.take()[-1] == str(errors.RCPT_INVALID)

    async def test_quoted_postmaster_is_the_postmaster(self):
        """A quoted postmaster, with or without the gateway's hostname, is the same
        mailbox (RFC 5321 4.1.2: all quoted forms are equivalent) and accepted as one."""
        backend = Refusing()
        s, t = open_session(backend)
        s.data_received(b'LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<"postmaster">\r\n'
                        b'RCPT TO:<"Post\\master">\r\nRCPT TO:<@r.test:"POSTMASTER">\r\n'
                        b'RCPT TO:<"postmaster"@gw.test>\r\nDATA\r\nhi\r\n.\r\n')
        await settle()
        assert codes(t.take()) == [250, 250, 250, 250, 250, 250, 354, 250, 250, 250, 250]
        assert [d[1] for d in backend.delivered] == [["postmaster@gw.test"] * 4]

    async def test_other_bare_local_parts_are_refused(self):
        """Any other local part without a domain is still a malformed address, quoted
        or not."""
        s, t = open_session(Backend())
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<root>\r\n"
                        b"RCPT TO:<postmasters>\r\nRCPT TO:<\"root\">\r\n"
                        b"RCPT TO:<\"post master\">\r\nRCPT TO:<\"a@b\">\r\n"
                        b"RCPT TO:<>\r\n")
        assert codes(t.take()) == [250, 250, 553, 553, 553, 501, 501, 553]


class TestLimits:
    async def test_over_size_is_discarded_while_reading(self):
        """A message far over the limit never sits in the buffer: 552 5.3.4 per recipient,
        nothing delivered, the session goes on."""
        backend = Backend()
        s, t = await ready_for_data(backend, ("a@x.test", "b@x.test"), limit=10_000)
        chunk = b"x" * 1000 + b"\r\n"
        for _ in range(20_000):                   # ~20 MB
            s.data_received(chunk * 32)
            assert s.buffered < 10_000 + len(chunk) * 32 + 8
        s.data_received(b".\r\nNOOP\r\n")
        await settle()
        assert [x[:9] for x in t.take()] == ["552 5.3.4", "552 5.3.4", "250 2.0.0"]
        assert backend.delivered == []

    async def test_limit_counts_unstuffed_bytes(self):
        """A message exactly at the limit after unstuffing is delivered."""
        backend = Backend()
        s, _t = await ready_for_data(backend, limit=12)
        s.data_received(b"." * 11 + b"\r\n.\r\n")     # 13 bytes on the wire, 12 stored
        await settle()
        assert [len(d[2]) for d in backend.delivered] == [12]

    async def test_limit_counts_unstuffed_bytes_across_reads(self):
        """A message exactly at the limit after unstuffing is delivered however it is cut
        into reads, though its stuffed dots put it over the limit on the wire."""
        body = b".\r\n" * 99 + b"z\r\n"                  # 300 bytes, 399 on the wire
        wire = body.replace(b".", b"..") + b".\r\n"
        for size in (1, 7, 50, 398):
            backend = Backend()
            s, t = await ready_for_data(backend, limit=300)
            for i in range(0, len(wire), size):
                s.data_received(wire[i:i + size])
            await settle()
            assert [d[2] for d in backend.delivered] == [body], size
            s.data_received(b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
            wire2 = b"z" + wire                               # 301 bytes: too big
            for i in range(0, len(wire2), size):
                s.data_received(wire2[i:i + size])
            await settle()
            assert codes(t.take())[-1] == 552, size

    async def test_over_long_command_line(self):
        """A command line over 512 bytes gets 500 5.5.2; one with no end in sight is
        dropped as it arrives, answered once, and the session goes on."""
        s, t = open_session(Backend())
        s.data_received(b"LHLO mta\r\nRCPT TO:<" + b"a" * 600 + b"@x.test>\r\n")
        assert codes(t.take()) == [250, 500]
        for _ in range(100):
            s.data_received(b"y" * 1000)
            assert s.buffered < 4096
        s.data_received(b"\r\nNOOP\r\n")
        assert t.take() == ["500 5.5.2 Command line too long", "250 2.0.0 OK"]

    async def test_pipelining_while_delivering_pauses_reading(self):
        """Input piling up behind a running delivery pauses reading; once the delivery is
        answered every queued command is answered in order and reading resumes."""
        backend = Backend()
        backend.hold = True
        s, t = await ready_for_data(backend)
        s.data_received(b"hi\r\n.\r\n")
        noops = b"NOOP\r\n" * (PAUSE_AT // 6 + 100)
        s.data_received(noops)
        assert not t.reading and t.take() == []
        backend.release.set()
        await settle()
        lines = t.take()
        assert lines[0] == "250 2.1.5 <a@x.test> delivered"
        assert lines[1:] == ["250 2.0.0 OK"] * (PAUSE_AT // 6 + 100)
        assert t.reading and s.buffered == 0


class TestPipelining:
    async def test_two_transactions_in_one_read(self):
        """Two whole transactions and QUIT in one read: every reply in order, both
        messages delivered in order."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
                        b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<b@x.test>\r\n"
                        b"RCPT TO:<c@x.test>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n")
        await settle()
        assert codes(t.take()) == [250, 250, 250, 354, 250, 250, 250, 250, 354, 250, 250, 221]
        assert [(d[1], d[2]) for d in backend.delivered] == [
            (["a@x.test"], b"one\r\n"), (["b@x.test", "c@x.test"], b"two\r\n")]
        assert t.closed

    async def test_quit_mid_pipeline(self):
        """Commands after QUIT in the same read are ignored and the connection closes."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nQUIT\r\nMAIL FROM:<s@y.test>\r\nNOOP\r\n")
        assert codes(t.take()) == [250, 221]
        assert t.closed
        s.data_received(b"NOOP\r\n")
        assert t.take() == []

    async def test_rset_ends_the_transaction(self):
        """RSET in a pipeline drops MAIL/RCPT: a following DATA is a bad sequence."""
        s, t = open_session(Backend())
        s.data_received(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<a@x.test>\r\nRSET\r\n"
                        b"DATA\r\n")
        assert codes(t.take()) == [250, 250, 250, 250, 503]


class TestConnectionEnd:
    async def test_lost_mid_data_delivers_nothing(self):
        """A connection lost in the middle of DATA delivers nothing; the connection record
        is Failed, naming the stage."""
        backend = Backend()
        s, _t = await ready_for_data(backend)
        s.data_received(b"Subject: half\r\n\r\npart")
        s.connection_lost(ConnectionResetError("reset"))
        await settle()
        assert backend.delivered == []
        [comm] = backend.comms
        assert comm.status == "Failed"
        assert any("connection lost during DATA" in e.value for e in comm.objects[0].entries)

    async def test_quit_inside_a_transaction_is_no_failure(self):
        """QUIT after MAIL and a refused RCPT (as deliver --via-socket sends for an
        unknown recipient) is the client's choice: the connection record is a Warning
        for the refusal, not Failed with a lost connection."""
        backend = Backend()
        s, t = open_session(backend)
        s.data_received(b"LHLO mta\r\nMAIL FROM:<>\r\nRCPT TO:<ghost@x.test>\r\nQUIT\r\n")
        await settle()
        assert codes(t.take()) == [250, 250, 550, 221] and t.closed
        [comm] = backend.comms
        assert comm.status == "Warning"
        assert not [e for e in comm.objects[0].entries if e.priority == "Error"]

    async def test_eof_after_final_dot_still_answered(self):
        """A client that half-closes right after the final dot gets its replies, then
        the connection closes."""
        backend = Backend()
        backend.hold = True
        s, t = await ready_for_data(backend)
        s.data_received(b"hi\r\n.\r\n")
        assert s.eof_received() is True
        backend.release.set()
        await settle()
        assert t.take() == ["250 2.1.5 <a@x.test> delivered"] and t.closed

    async def test_lost_while_delivering(self):
        """The delivery of a complete message finishes even when the client is gone; its
        reply is dropped, not written to a closed transport."""
        backend = Backend()
        backend.hold = True
        s, t = await ready_for_data(backend)
        s.data_received(b"hi\r\n.\r\n")
        s.connection_lost(None)
        backend.release.set()
        await settle()
        assert len(backend.delivered) == 1 and t.take() == []


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4, 5, 6])
async def test_real_socket_split_terminator(cut, tmp_path):
    """Over a real unix socket, the terminator written in two parts ends DATA."""
    backend = Backend()
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "s")
    server = await loop.create_unix_server(
        lambda: LmtpSession(backend, max_message_size=10_000, max_recipients=10,
                            hostname="gw.test", loop=loop), path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        await reader.readline()
        writer.write(b"LHLO mta\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
        while not (await reader.readline()).startswith(b"354 "):
            pass
        tail = b"body\r\n.\r\n"
        writer.write(tail[:4 + cut])
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(tail[4 + cut:])
        assert (await reader.readline()).startswith(b"250 2.1.5")
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert [d[2] for d in backend.delivered] == [b"body\r\n"]
