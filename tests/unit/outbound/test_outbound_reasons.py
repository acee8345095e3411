"""Why a delivery failed, as Postfix writes it: the server that answered (its name and
address) and the command its reply came in answer to, or what happened on the way
(connect, greeting, TLS, lost connection), for each recipient and the attempt as a
whole. Against small SMTP servers on 127.0.0.1 whose replies each test chooses."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import RelayConfig
from gateway.config.values import Secret
from gateway.outbound import queue as oq
from gateway.outbound.sender import results_of
from gateway.outbound.transport import Attempt, SmtpTransport
from tests.peers.ports import free_port

HOST = "127.0.0.1[127.0.0.1]"


class _Session(socketserver.StreamRequestHandler):
    server: Peer

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        p = self.server
        if p.greeting is None:
            time.sleep(p.hang)
            return
        self._reply(p.greeting)
        if not p.greeting.startswith("220"):
            return
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == p.close_at:
                return
            if verb == "EHLO":
                self._reply(p.ehlo)
            elif verb == "RCPT":
                addr = line[line.index("<") + 1:line.rindex(">")]
                reply = p.rcpt.get(addr, "250 2.1.5 OK")
                self._reply(reply)
                if reply.startswith("421"):
                    return
            elif verb == "DATA":
                reply = p.replies.get("DATA", "354 go ahead")
                self._reply(reply)
                if not reply.startswith("354"):
                    continue
                for chunk in self.rfile:
                    if chunk == b".\r\n":
                        break
                if p.close_at == "DOT":
                    return
                self._reply(p.replies.get("DOT", "250 2.0.0 queued"))
            elif verb == "QUIT":
                self._reply("221 2.0.0 bye")
                return
            else:
                self._reply(p.replies.get(verb, "250 2.0.0 OK"))


class Peer(socketserver.ThreadingTCPServer):
    """Greets with `greeting` (None: says nothing for `hang` seconds), answers EHLO with
    `ehlo`, RCPT TO:<a> with rcpt[a] (closing the connection after a 421), any other
    command VERB with replies[VERB] (the end of the data with replies["DOT"]), and
    closes the connection instead of answering `close_at` (a verb, or "DOT")."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Session)
        self.greeting: str | None = "220 peer.test ESMTP"
        self.hang = 3.0
        self.ehlo = "250-peer.test\r\n250 8BITMIME"
        self.rcpt: dict[str, str] = {}
        self.replies: dict[str, str] = {}
        self.close_at = ""
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.stop()


def deliver(port: int, rcpts: list[str], *, security: str = "none", timeout: float = 10.0,
            ca: Path | None = None) -> tuple[Attempt, list[oq.RcptResult]]:
    transport = SmtpTransport(RelayConfig(host="127.0.0.1", port=port, security=security,
                                          timeout=timeout,
                                          tls_ca_file=str(ca) if ca else ""),
                              local_hostname="deskgate.test")
    try:
        att = transport.deliver("app@deskgate.test", rcpts, b"Subject: t\r\n\r\nbody\r\n")
    finally:
        transport.close()
    m = oq.Claimed(1, "message", "Raw", "app@deskgate.test", "app@deskgate.test", "<m@x>",
                   None, None, b"", 0, oq.utcnow(), False,
                   recipients=list(enumerate(rcpts, start=1)))
    return att, results_of(m, att)


class TestRepliesNameTheHostAndCommand:
    def test_a_refusal_at_rcpt_to(self, peer):
        """550 to RCPT TO: 'host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <b@x.test>: no
        such user (in reply to RCPT TO command)' for that recipient; the other one is
        delivered; the server's reply stays as it was given."""
        peer.rcpt["b@x.test"] = "550 5.1.1 <b@x.test>: no such user"
        _, (a, b) = deliver(peer.port, ["a@x.test", "b@x.test"])
        assert a.ok and (b.code, b.reply) == (550, "5.1.1 <b@x.test>: no such user")
        assert b.reason == (f"host {HOST} said: 550 5.1.1 <b@x.test>: no such user "
                            "(in reply to RCPT TO command)")

    def test_a_421_at_rcpt_to_closes_the_connection(self, peer):
        """421 to the second RCPT TO, then the connection closed (a server shutting
        down): every recipient is deferred with 'host ... said: 421 4.7.0 ... (in reply
        to RCPT TO command)' (before: 'lost connection ... while sending RCPT TO' for
        all, the server's reply lost)."""
        peer.rcpt["b@x.test"] = "421 4.7.0 closing, too many errors"
        _, results = deliver(peer.port, ["a@x.test", "b@x.test", "c@x.test"])
        said = (f"host {HOST} said: 421 4.7.0 closing, too many errors "
                "(in reply to RCPT TO command)")
        assert [(r.code, r.reason, r.permanent) for r in results] == [(421, said, False)] * 3

    def test_a_refusal_at_mail_from(self, peer):
        """554 to MAIL FROM: every recipient's reason says 'in reply to MAIL FROM'."""
        peer.replies["MAIL"] = "554 5.7.1 sender rejected"
        _, results = deliver(peer.port, ["a@x.test", "b@x.test"])
        assert [r.reason for r in results] == [
            f"host {HOST} said: 554 5.7.1 sender rejected (in reply to MAIL FROM command)"
        ] * 2

    def test_a_refusal_of_the_data_command(self, peer):
        """554 to the DATA command: the attempt's error and the recipients' reasons say
        'in reply to DATA command'."""
        peer.replies["DATA"] = "554 5.7.1 no data"
        att, (r,) = deliver(peer.port, ["a@x.test"])
        said = f"host {HOST} said: 554 5.7.1 no data (in reply to DATA command)"
        assert (att.error, r.reason) == (said, said)

    def test_a_refusal_after_end_of_data(self, peer):
        """550 to the final dot (a content filter): 'in reply to end of DATA command'."""
        peer.replies["DOT"] = "550 5.7.0 spam"
        _, (r,) = deliver(peer.port, ["a@x.test"])
        assert r.permanent
        assert r.reason == (f"host {HOST} said: 550 5.7.0 spam "
                            "(in reply to end of DATA command)")

    def test_a_refused_greeting(self, peer):
        """554 greeting: 'host ... refused to talk to me: 554 5.7.1 go away', retried."""
        peer.greeting = "554 5.7.1 go away"
        att, (r,) = deliver(peer.port, ["a@x.test"])
        said = f"host {HOST} refused to talk to me: 554 5.7.1 go away"
        assert (att.error, r.reason, r.temporary) == (said, said, True)

    def test_a_refused_ehlo_and_helo(self, peer):
        """554 to EHLO and to HELO: 'host ... said: 554 ... (in reply to HELO command)',
        retried as a refusal of the connection, and no MAIL FROM is sent (before, MAIL
        FROM went out after the refused EHLO and its answer was reported)."""
        peer.ehlo = "554 5.7.1 go away"
        peer.replies["HELO"] = "554 5.7.1 go away"
        peer.replies["MAIL"] = "503 5.5.1 say hello first"
        att, (r,) = deliver(peer.port, ["a@x.test"])
        said = f"host {HOST} said: 554 5.7.1 go away (in reply to HELO command)"
        assert (att.error, r.reason, r.temporary) == (said, said, True)

    def test_a_refused_ehlo_falls_back_to_helo(self, peer):
        """EHLO refused, HELO taken (an old server): the message is delivered."""
        peer.ehlo = "502 5.5.2 no EHLO here"
        att, (r,) = deliver(peer.port, ["a@x.test"])
        assert (att.error, r.code) == ("", 250)

    def test_a_refused_authentication(self, peer):
        """535 to AUTH: 'SASL authentication failed; server ... said: 535 ...'."""
        peer.ehlo = "250-peer.test\r\n250 AUTH PLAIN"
        peer.replies["AUTH"] = "535 5.7.8 authentication failed"
        transport = SmtpTransport(RelayConfig(host="127.0.0.1", port=peer.port,
                                              security="none", timeout=10.0, user="u",
                                              password=Secret("p")),
                                  local_hostname="deskgate.test")
        try:
            att = transport.deliver("app@deskgate.test", ["a@x.test"], b"Subject: t\r\n\r\n")
        finally:
            transport.close()
        assert att.error == (f"SASL authentication failed; server {HOST} said: "
                             "535 5.7.8 authentication failed")


class TestFailuresWithoutAReply:
    def test_connection_refused(self):
        """Nothing listens: 'connect to 127.0.0.1[127.0.0.1]:PORT: Connection refused',
        for the attempt and each recipient (code 0, temporary)."""
        port = free_port()
        att, (r,) = deliver(port, ["a@x.test"])
        said = f"connect to {HOST}:{port}: Connection refused"
        assert (att.error, r.code, r.reason) == (said, 0, said)

    def test_no_greeting(self, peer):
        """A server that never greets: 'conversation with ... timed out while receiving
        the initial server greeting'."""
        peer.greeting = None
        att, _ = deliver(peer.port, ["a@x.test"], timeout=1.0)
        assert att.error == (f"conversation with {HOST} timed out while receiving the "
                             "initial server greeting")

    def test_lost_connection_at_rcpt_to(self, peer):
        """The server closes the connection instead of answering RCPT TO: 'lost
        connection with ... while sending RCPT TO'."""
        peer.close_at = "RCPT"
        att, (r,) = deliver(peer.port, ["a@x.test"])
        said = f"lost connection with {HOST} while sending RCPT TO"
        assert (att.error, r.reason) == (said, said)

    def test_lost_connection_after_the_data(self, peer):
        """The connection closes after the final dot, before its answer: the message may
        have been taken, as Postfix warns."""
        peer.close_at = "DOT"
        att, _ = deliver(peer.port, ["a@x.test"])
        assert att.error == (f"lost connection with {HOST} while sending end of data -- "
                             "message may be sent more than once")

    def test_starttls_not_offered(self, peer):
        """security = "starttls" to a server without STARTTLS: 'TLS is required, but was
        not offered by host ...'."""
        att, _ = deliver(peer.port, ["a@x.test"], security="starttls")
        assert att.error == f"TLS is required, but was not offered by host {HOST}"

    def test_starttls_refused(self, peer):
        """454 to STARTTLS: 'TLS is required, but host ... refused to start TLS: 454 ...'."""
        peer.ehlo = "250-peer.test\r\n250 STARTTLS"
        peer.replies["STARTTLS"] = "454 4.7.0 TLS not available"
        att, _ = deliver(peer.port, ["a@x.test"], security="starttls")
        assert att.error == (f"TLS is required, but host {HOST} refused to start TLS: "
                             "454 4.7.0 TLS not available")

    def test_smtputf8_not_offered(self):
        """A UTF-8 address to a relay without SMTPUTF8 fails for good (553 5.6.7):
        'SMTPUTF8 is required, but was not offered by host ...', naming it as Postfix
        does (before: 'the relay does not offer SMTPUTF8', no host)."""
        from tests.peers.smarthost import AuthSink

        with AuthSink(smtputf8=False) as sink:
            _, (r,) = deliver(sink.port, ["j\u00f6rg@kunde.test"])
        assert r.permanent and r.reason == (
            f"553 5.6.7 SMTPUTF8 is required, but was not offered by host {HOST}")

    def test_a_certificate_that_is_not_trusted(self, tmp_path):
        """Implicit TLS to a server whose certificate no trusted CA issued: 'Server
        certificate not verified' with the host and the reason."""
        from tests.peers.ca import TestCA
        from tests.peers.smarthost import AuthSink

        ca = TestCA(tmp_path / "ca")
        cert = ca.issue("localhost", hosts=("localhost", "127.0.0.1"))
        other = TestCA(tmp_path / "other", name="another CA")
        with AuthSink(cert.cert, cert.key, implicit_tls=True) as sink:
            att, _ = deliver(sink.port, ["a@x.test"], security="tls", ca=other.ca_path)
        assert att.error.startswith(f"Server certificate not verified: host {HOST}: "
                                    "certificate verify failed"), att.error



class TestUnknownHost:
    def test_a_name_that_does_not_resolve(self):
        """A relay host whose name does not resolve: 'Host or domain name not found.
        Name service error for name=...', as Postfix says."""
        transport = SmtpTransport(RelayConfig(host="no-such-host.invalid", port=25,
                                              security="none", timeout=5.0),
                                  local_hostname="deskgate.test")
        try:
            att = transport.deliver("app@deskgate.test", ["a@x.test"], b"Subject: t\r\n\r\n")
        finally:
            transport.close()
        assert att.error.startswith("Host or domain name not found. Name service error "
                                    "for name=no-such-host.invalid"), att.error
