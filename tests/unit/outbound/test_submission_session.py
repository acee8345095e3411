"""The submission session's envelope and AUTH on a real socket, with a recording pipeline.

TLS is left out here (auth_require_tls=False) so the AUTH exchanges can be read in
plain text; AUTH only after STARTTLS is covered by the integration tests.
"""

from __future__ import annotations

import asyncio
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.commlog import Comm
from gateway.config import SubmissionConfig, SubmissionUser
from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import QUEUED, SubmitResult
from gateway.outbound.submission import Submission, SubmissionSession
from gateway.passwords import hash_password
from gateway.testing import config, runtime


class Pipeline:
    """Records the contexts the handler submits and queues nothing; `comms` holds the
    communication log entries the listener wrote."""

    def __init__(self) -> None:
        self.ctxs: list[OutboundContext] = []
        self.comms: list[Comm] = []

    async def submit(self, ctx: OutboundContext) -> SubmitResult:
        self.ctxs.append(ctx)
        return SubmitResult(reply=QUEUED, outbound_id=len(self.ctxs))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def cmd(self, line: bytes) -> str:
        """Send one line; the last line of the reply."""
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        while True:
            got = await asyncio.wait_for(self.reader.readline(), 10)
            assert got, "connection closed"
            if got[3:4] != b"-":
                return got.decode().rstrip("\r\n")


def b64(data: bytes) -> bytes:
    return b64encode(data)


@pytest.fixture
async def session() -> AsyncIterator[Callable[..., Any]]:
    """session(networks=...) → (Client after EHLO, the recording Pipeline); user app/pw."""
    servers: list[asyncio.AbstractServer] = []
    writers: list[asyncio.StreamWriter] = []
    user = SubmissionUser(name="app", password_hash=hash_password("pw", ln=4))

    async def make(networks: tuple[str, ...] = ("10.0.0.0/8",), max_auth_failures: int = 5
                   ) -> tuple[Client, Pipeline]:
        rt = runtime(config(submission=SubmissionConfig(
            user=(user,), allow_networks=networks, max_auth_failures=max_auth_failures)))
        pipeline = Pipeline()
        sub = Submission(lambda: rt, pipeline, pipeline.comms.append)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SubmissionSession(sub, None, data_size_limit=1 << 20,
                                      enable_SMTPUTF8=True, hostname="gw.test", timeout=30,
                                      auth_require_tls=False, loop=loop), "127.0.0.1", 0)
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


class TestEnvelope:
    async def test_null_sender_is_submitted_as_empty(self, session):
        """MAIL FROM:<> reaches the pipeline as the null sender '' (it arrived as the
        string '<>', a return path DSNs were sent to)."""
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert (await c.cmd(b"MAIL FROM:<>")).startswith("250")
        assert (await c.cmd(b"RCPT TO:<cust@customer.test>")).startswith("250")
        assert (await c.cmd(b"DATA")).startswith("354")
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250")
        assert [x.mail_from for x in pipeline.ctxs] == [""]


class TestDataWithoutRecipients:
    async def test_pipelined_data_after_refused_recipients_is_554(self, session):
        """MAIL, a refused RCPT and DATA written in one go (PIPELINING): DATA is refused
        with Postfix's 554 5.5.1 Error: no valid recipients (it was 503 need RCPT, a
        sequence error) and no message is read; DATA with no MAIL at all stays 503."""
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert await c.cmd(b"DATA") == "503 5.5.1 Error: need RCPT command"
        c.writer.write(b"MAIL FROM:<app@internal.test>\r\nRCPT TO:<nobody>\r\nDATA\r\n")
        replies = [(await asyncio.wait_for(c.reader.readline(), 10)).decode().rstrip()
                   for _ in range(3)]
        assert replies == ["250 2.1.0 OK", "553 5.1.3 Malformed recipient address",
                           "554 5.5.1 Error: no valid recipients"]
        assert (await c.cmd(b"RSET")).startswith("250")
        assert pipeline.ctxs == []


class TestDuplicateRecipients:
    async def test_a_recipient_given_twice_is_sent_to_once(self, session):
        """The same recipient in two RCPTs (also in another case) is accepted each time
        and submitted once, as Postfix's cleanup drops duplicate recipients; it was
        queued twice, so the smarthost got RCPT TO twice for one message."""
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        for rcpt in (b"<cust@customer.test>", b"<b@customer.test>", b"<Cust@Customer.TEST>",
                     b"<cust@customer.test>"):
            assert (await c.cmd(b"RCPT TO:" + rcpt)).startswith("250 2.1.5"), rcpt
        assert (await c.cmd(b"DATA")).startswith("354")
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250")
        assert pipeline.ctxs[0].recipients == ["cust@customer.test", "b@customer.test"]

    async def test_recipients_keep_their_case_and_the_first_spelling(self, session):
        """RFC 5321 2.4: a relay keeps the local part's case, as Postfix does; the
        recipients were lower-cased. A second spelling of an address is still dropped,
        the first one given is kept."""
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        for rcpt in (b"<John.Doe@Example.ORG>", b"<b@customer.test>",
                     b"<john.doe@example.org>", b"<JOHN.DOE@EXAMPLE.ORG>"):
            assert (await c.cmd(b"RCPT TO:" + rcpt)).startswith("250 2.1.5"), rcpt
        assert (await c.cmd(b"DATA")).startswith("354")
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250")
        assert pipeline.ctxs[0].recipients == ["John.Doe@Example.ORG", "b@customer.test"]


class TestPostmaster:
    async def test_bare_postmaster_in_any_case_is_the_gateways_postmaster(self, session):
        """RCPT TO:<postmaster> without a domain, in any case and quoted, is accepted
        (RFC 5321 4.5.1 requires it) as postmaster@<gateway.hostname>; it was refused
        with 553 5.1.3. Another local part without a domain is still refused."""
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        for path in (b"<Postmaster>", b"<postmaster>", b"<POSTMASTER>", b'<"postmaster">',
                     b"postmaster"):
            assert await c.cmd(b"RCPT TO:" + path) == "250 2.1.5 OK", path
        assert (await c.cmd(b"RCPT TO:<webmaster>")).startswith("553 5.1.3")
        assert (await c.cmd(b"RSET")).startswith("250")
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        assert (await c.cmd(b"RCPT TO:<Postmaster>")).startswith("250")
        assert (await c.cmd(b"DATA")).startswith("354")
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250")
        assert pipeline.ctxs[0].recipients == ["postmaster@gw.test"]

    async def test_postmaster_needs_auth_like_any_recipient(self, session):
        """The postmaster is no way around AUTH: outside allow_networks MAIL is 530."""
        c, pipeline = await session()
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("530 5.7.0")
        assert (await c.cmd(b"RCPT TO:<Postmaster>")).startswith("503")
        assert pipeline.ctxs == []


class TestErrors:
    async def test_too_many_unknown_commands_end_with_421(self, session):
        """The fifth unknown command ends the session with 421 4.7.0 (Postfix's "too many
        errors"), which a client takes as "try again later", not aiosmtpd's 502."""
        c, _ = await session()
        for verb in (b"X1", b"X2", b"X3", b"X4"):
            assert (await c.cmd(verb)).startswith("500 ")
        assert await c.cmd(b"X5") == "421 4.7.0 gw.test Error: too many errors"
        assert await asyncio.wait_for(c.reader.read(), 10) == b""


class TestAuthPlain:
    async def test_authzid_empty_or_the_user_itself(self, session):
        """AUTH PLAIN with an empty authorization identity, or the user's own name,
        authenticates; MAIL is then accepted."""
        for authzid in (b"", b"app"):
            c, _ = await session()
            assert (await c.cmd(b"AUTH PLAIN " + b64(authzid + b"\0app\0pw"))).startswith(
                "235 ")
            assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")

    async def test_authzid_of_another_identity_is_refused(self, session):
        """Asking to act as another identity (RFC 4616 authzid) fails with 535 even with
        the right password, as Postfix's SASL does; it was accepted as the user."""
        c, _ = await session()
        assert (await c.cmd(b"AUTH PLAIN " + b64(b"root\0app\0pw"))).startswith("535 5.7.8")
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("530")


class TestAuthInTransaction:
    async def test_auth_after_mail_is_refused_with_503(self, session):
        """AUTH inside a mail transaction is refused with 503 5.5.1 (RFC 4954 4, Postfix's
        "MAIL transaction in progress"), for a right password too, and nothing is
        checked or counted; after RSET the same AUTH succeeds. It authenticated."""
        c, _ = await session(networks=("127.0.0.0/8",), max_auth_failures=1)
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        for line in (b"AUTH PLAIN " + b64(b"\0app\0pw"), b"AUTH PLAIN " + b64(b"\0app\0no"),
                     b"AUTH LOGIN"):
            assert await c.cmd(line) == "503 5.5.1 Error: MAIL transaction in progress"
        assert (await c.cmd(b"RCPT TO:<cust@customer.test>")).startswith("250")
        assert (await c.cmd(b"RSET")).startswith("250")
        assert (await c.cmd(b"AUTH PLAIN " + b64(b"\0app\0pw"))).startswith("235 ")


class TestAuthReplies:
    async def test_auth_without_mechanism_is_a_syntax_error(self, session):
        """AUTH without a mechanism is answered Postfix's 501 5.5.4 Syntax: AUTH
        mechanism (it was aiosmtpd's "Not enough value") and counts as no failure."""
        c, _ = await session(max_auth_failures=1)
        assert await c.cmd(b"AUTH") == "501 5.5.4 Syntax: AUTH mechanism"
        assert await c.cmd(b"AUTH PLAIN a b") == "501 5.5.4 Syntax: AUTH mechanism"
        assert (await c.cmd(b"AUTH PLAIN " + b64(b"\0app\0pw"))).startswith("235 ")

    async def test_mechanism_name_in_any_case(self, session):
        """The mechanism is taken in any case (AUTH plain, AUTH Login), as Postfix with
        Dovecot or Cyrus SASL takes it; it was 504 Unrecognized authentication type."""
        c, _ = await session()
        assert await c.cmd(b"AUTH Login") == "334 " + b64(b"Username:").decode()
        assert await c.cmd(b"*") == "501 5.7.0 Auth aborted"
        assert (await c.cmd(b"AUTH plain " + b64(b"\0app\0pw"))).startswith("235 ")

    async def test_login_challenges_are_username_and_password(self, session):
        """AUTH LOGIN asks "Username:" and "Password:" in base64, as Postfix (Cyrus SASL)
        and Dovecot do; aiosmtpd sent "User Name" and "Password" each with a NUL byte."""
        c, _ = await session()
        assert await c.cmd(b"AUTH LOGIN") == "334 " + b64(b"Username:").decode()
        assert await c.cmd(b64(b"app")) == "334 " + b64(b"Password:").decode()
        assert (await c.cmd(b64(b"pw"))).startswith("235 ")


class TestEmptyResponse:
    async def test_plain_equals_is_an_empty_response(self, session):
        """AUTH PLAIN = (RFC 4954: an empty initial response) fails as a wrong password
        does, 535 5.7.8, not as bad base64; an undecodable response is still 501."""
        c, _ = await session()
        assert (await c.cmd(b"AUTH PLAIN =")).startswith("535 5.7.8")
        assert (await c.cmd(b"AUTH PLAIN ==")).startswith("501 5.5.2")
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("530")

    async def test_empty_line_after_plain_challenge(self, session):
        """An empty line answering AUTH PLAIN's challenge is an empty response too: 535."""
        c, _ = await session()
        assert await c.cmd(b"AUTH PLAIN") == "334 "
        assert (await c.cmd(b"")).startswith("535 5.7.8")

    async def test_login_equals_is_an_empty_user_name(self, session):
        """AUTH LOGIN = is an empty user name: the password is asked for, then 535."""
        c, _ = await session()
        assert (await c.cmd(b"AUTH LOGIN =")).startswith("334 ")
        assert (await c.cmd(b64(b"pw"))).startswith("535 5.7.8")

    async def test_empty_responses_count_as_failures(self, session):
        """Empty responses count toward max_auth_failures like wrong passwords: past the
        limit the client is locked out, even with the right password."""
        c, _ = await session(max_auth_failures=2)
        assert (await c.cmd(b"AUTH PLAIN =")).startswith("535")
        assert (await c.cmd(b"AUTH LOGIN =")).startswith("334 ")
        assert (await c.cmd(b64(b"pw"))).startswith("535")
        assert (await c.cmd(b"AUTH PLAIN " + b64(b"\0app\0pw"))).startswith("454 4.7.0")


class TestInternalError:
    async def test_auth_failure_is_451_and_logs_no_auth_data(self, session, monkeypatch):
        """An exception in the password check at AUTH is answered 451 4.3.0 with a generic
        text (aiosmtpd answered 500 with the exception's text); the log and the
        communication log name AUTH, the client and the cause but neither the password nor
        the AUTH line; the attempt is not counted as a failure and the next AUTH works."""
        verify = Submission.verify
        calls = []

        async def flaky(self, login, password):
            calls.append(login)
            if len(calls) == 1:
                raise OSError("password database unreadable")
            return await verify(self, login, password)

        monkeypatch.setattr(Submission, "verify", flaky)
        c, pipeline = await session(max_auth_failures=1)
        line = b"AUTH PLAIN " + b64(b"\0app\0Zq9-secret")
        with capture_logs() as logs:
            reply = await c.cmd(line)
        assert reply == "451 4.3.0 Error: internal server error, try again later"
        failed = [e for e in logs if e["event"].startswith("submission command failed")]
        assert [(e["command"], e["client"][:10]) for e in failed] == [("AUTH", "127.0.0.1:")]
        assert "password database unreadable" in repr(failed[0]["exc_info"])
        entries = [e for comm in pipeline.comms for o in comm.objects for e in o.entries]
        assert [(e.priority, e.value) for e in entries] == [
            ("Error", "AUTH: OSError: password database unreadable; answered 451 4.3.0")]
        for secret in (b"Zq9-secret", line[11:]):
            assert secret.decode() not in repr(logs) + repr(pipeline.comms)
        assert (await c.cmd(b"AUTH PLAIN " + b64(b"\0app\0pw"))).startswith("235 ")

    async def test_mail_failure_is_451_and_mail_works_again(self, session, monkeypatch):
        """An exception at MAIL is answered 451 4.3.0; no transaction is left open, so
        the next MAIL is accepted and the message is submitted once."""
        from gateway.outbound.submission_policy import SubmissionHandler

        handle_mail = SubmissionHandler.handle_MAIL
        calls = []

        async def flaky(self, *args):
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("mail_options")
            return await handle_mail(self, *args)

        monkeypatch.setattr(SubmissionHandler, "handle_MAIL", flaky)
        c, pipeline = await session(networks=("127.0.0.0/8",))
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == (
            "451 4.3.0 Error: internal server error, try again later")
        assert (await c.cmd(b"MAIL FROM:<app@internal.test>")).startswith("250")
        assert (await c.cmd(b"RCPT TO:<cust@customer.test>")).startswith("250")
        assert (await c.cmd(b"DATA")).startswith("354")
        assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250")
        assert len(pipeline.ctxs) == 1
