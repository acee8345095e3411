"""The submission door: never an open relay, AUTH only after STARTTLS, limits, lock-out."""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl

import pytest
from sqlalchemy import func, select

from gateway.passwords import hash_password
from gateway.store.tables import CommEntry, OutboundMessage, Ticket
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers import postfix as pfmod
from tests.peers.ca import TestCA
from tests.peers.require import missing_peer
from tests.peers.smarthost import AuthSink

MSG = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n\r\nbody\r\n")


@pytest.fixture
def tls_submission(tmp_path, outbound_config):
    """A config whose submission has STARTTLS, one user, and no allowed network."""
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("submission", hosts=("127.0.0.1", "localhost"))
    pw_hash = hash_password("s3cret", ln=10)

    def make(relay_port: int, *, extra: str = "", networks: str = '["10.0.0.0/8"]'):
        cfg = outbound_config(relay_port, extra_submission=f"""
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
allow_networks = {networks}
max_recipients = 2
max_message_size = "20KiB"
{extra}
[[submission.user]]
name = "app"
password_hash = "{pw_hash}"
default_queue = "Support"
""")
        client_ctx = ssl.create_default_context(cafile=str(ca.ca_path))
        return cfg, client_ctx

    return make


def count_queued(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(OutboundMessage)).scalar()


class TestNoOpenRelay:
    def test_unauthenticated_client_outside_allow_networks_is_refused(
            self, tls_submission, run_gateway):
        """Without AUTH, a client outside allow_networks gets 530 and nothing is queued."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                code, text = s.mail("app@internal.test")
                assert code == 530 and b"5.7.0" in text
                code, _ = s.rcpt("victim@elsewhere.test")
                assert code in (503, 530)
                code, _ = s.docmd("DATA")
                assert code in (503, 530)
            assert count_queued(rg.gateway.engine) == 0
            assert sink.received == []

    def test_auth_is_neither_offered_nor_accepted_before_starttls(
            self, tls_submission, run_gateway):
        """AUTH is not advertised before STARTTLS and is refused with 538 when tried."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.has_extn("starttls") and not s.has_extn("auth")
                code, _ = s.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ=")
                assert code == 538
                s.starttls(context=ctx)
                s.ehlo()
                assert "PLAIN" in s.esmtp_features["auth"] and \
                    "LOGIN" in s.esmtp_features["auth"]

    def test_help_lists_starttls_until_it_is_used(self, tls_submission, run_gateway):
        """HELP is answered 214 2.0.0; it names STARTTLS while STARTTLS is offered."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.docmd("HELP") == (214, b"2.0.0 Commands: AUTH DATA EHLO HELO HELP "
                                                b"MAIL NOOP QUIT RCPT RSET STARTTLS")
                s.starttls(context=ctx)
                s.ehlo()
                assert s.docmd("HELP") == (214, b"2.0.0 Commands: AUTH DATA EHLO HELO HELP "
                                                b"MAIL NOOP QUIT RCPT RSET")


class TestAuthenticatedSubmission:
    @pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
    def test_auth_after_starttls_submits_with_user_default_queue(
            self, mech, tls_submission, run_gateway, caplog):
        """After STARTTLS, AUTH PLAIN/LOGIN lets the user send; their default queue applies;
        the login logs no warning."""
        caplog.set_level(logging.WARNING, logger="mail.log")
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.ehlo()
                s.user, s.password = "app", "s3cret"
                code, _ = s.auth(mech, getattr(s, f"auth_{mech.lower()}"),
                                 initial_response_ok=mech == "PLAIN")
                assert code == 235
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            with rg.gateway.engine.connect() as conn:
                assert conn.execute(select(Ticket.queue)).scalar() == "Support"
            assert sink.received[0].mail_from == "support@example.org"
        assert [r.getMessage() for r in caplog.records if r.name == "mail.log"
                and r.levelno >= logging.WARNING] == []

    def test_mail_from_auth_parameter_is_accepted(self, tls_submission, run_gateway):
        """MAIL FROM's AUTH= parameter (RFC 4954 5), which Exim adds after it has
        authenticated (AUTH=<> when it knows no submitter) and Postfix with
        smtp_send_dummy_mail_auth, is accepted; two transactions on one connection."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.login("app", "s3cret")
                for param in ("AUTH=<>", "AUTH=<app@internal.test>"):
                    assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG,
                                      mail_options=[param]) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                     what="delivery")

    def test_x_header_queue_from_authenticated_client(self, tls_submission, run_gateway):
        """An authenticated client's X-Deskgate-Queue beats the user's default queue."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.login("app", "s3cret")
                s.sendmail("app@internal.test", ["cust@customer.test"],
                           b"X-Deskgate-Queue: Sales\r\n" + MSG)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert sink.received[0].mail_from == "sales@example.org"
            assert b"X-Deskgate-Queue" not in sink.received[0].data

    def test_failed_auth_locks_the_client_out_and_logs_warn(self, tls_submission,
                                                              run_gateway):
        """After max_auth_failures wrong passwords the client gets 454, even with the right one."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port, extra="max_auth_failures = 2")
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.ehlo()
                for _ in range(2):
                    code, _ = s.docmd("AUTH", "PLAIN AGFwcAB3cm9uZw==")    # app / wrong
                    assert code == 535
                code, text = s.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ=")
                assert code == 454 and b"4.7.0" in text
            def warns():
                with rg.gateway.engine.connect() as conn:
                    return conn.execute(select(CommEntry.value).where(
                        CommEntry.priority == "Warn", CommEntry.key == "Auth")).scalars().all()
            got = wait_for(lambda: len(warns()) >= 2 and warns(), what="Warn entries")
            assert any("locked out" in v for v in got)
            assert not any("s3cret" in v or "wrong" in v for v in got)


class TestLimits:
    def test_size_and_recipient_limits(self, tls_submission, run_gateway):
        """Over max_recipients gets 452 per extra RCPT; over max_message_size gets 552."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert [s.rcpt(f"r{i}@customer.test")[0] for i in range(3)] == [250, 250, 452]
                s.rset()
                big = MSG + b"x" * 30000 + b"\r\n"
                with pytest.raises(smtplib.SMTPException) as err:
                    s.sendmail("app@internal.test", ["cust@customer.test"], big)
                assert "552" in str(err.value)
            assert count_queued(rg.gateway.engine) == 0

    def test_size_refusals_carry_5_3_4(self, tls_submission, run_gateway):
        """SIZE= over max_message_size at MAIL and a message over it after DATA are both
        answered 552 5.3.4 Message size exceeds fixed limit (Postfix's), with
        ENHANCEDSTATUSCODES advertised; the MAIL refusal leaves no transaction."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.has_extn("enhancedstatuscodes") and s.has_extn("pipelining")
                assert s.mail("app@internal.test", ["SIZE=30000"]) == (
                    552, b"5.3.4 Message size exceeds fixed limit")
                assert s.rcpt("cust@customer.test")[0] == 503
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.data(MSG + b"x" * 30000 + b"\r\n") == (
                    552, b"5.3.4 Message size exceeds fixed limit")
            assert count_queued(rg.gateway.engine) == 0


class TestStartTlsPipelining:
    def test_commands_pipelined_behind_starttls_are_discarded(
            self, tls_submission, run_gateway):
        """A command written in the same packet as STARTTLS (before the handshake) is
        thrown away, not run inside TLS (RFC 3207 4.2, RFC 2920 3.1): the first reply
        after the handshake is the one to the first command sent over TLS."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            run_gateway(cfg)
            with socket.create_connection(("127.0.0.1", submission_port(cfg)), 10) as raw:
                f = raw.makefile("rb")
                assert f.readline().startswith(b"220 ")
                raw.sendall(b"EHLO app.test\r\n")
                while f.readline()[3:4] == b"-":
                    pass
                raw.sendall(b"STARTTLS\r\nMAIL FROM:<app@internal.test>\r\n")
                assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"NOOP\r\n")
                    assert tls.recv(1024) == b"250 2.0.0 OK\r\n"


class TestPostfixClient:
    def test_postfix_relays_through_submission_with_pipelining(
            self, tls_submission, run_gateway):
        """Postfix's SMTP client relaying into the submission port sees PIPELINING and
        sends MAIL, the RCPTs and DATA before reading a reply; the RCPT refused in the
        group (452, over max_recipients) is deferred alone and sent on the next try."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        with AuthSink() as sink, pfmod.postfix_dir() as base:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.start_relaying({"customer.test": submission_port(cfg)},
                              "debug_peer_list=127.0.0.1", "debug_peer_level=2",
                              "smtp_tls_security_level=none")
            try:
                with smtplib.SMTP("127.0.0.1", pf.port) as s:
                    s.sendmail("app@discard.test", [f"r{i}@customer.test" for i in range(3)],
                               MSG)
                pf.wait_log(r"to=<r2@customer\.test>.*status=deferred", timeout=30)
                pf.wait_log(r"to=<r2@customer\.test>.*status=sent", timeout=30)
                wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                         what="delivery")
                lines = [ln for ln in pf.log_lines() if "postfix/smtp[" in ln]
            finally:
                pf.stop()
        assert any("PIPELINING" in ln for ln in lines)
        # Postfix logs each command it writes ("> host: CMD") and each reply ("< host:
        # CODE"): with pipelining the whole group is written before the first reply.
        talk = [ln.split("]: ", 1)[1] for ln in lines
                if re.search(r"\]: [<>] \S+:\d+: ", ln)]
        talk = [t.split(": ", 1)[1] if t.startswith((">", "<")) else t for t in talk]
        first_mail = next(i for i, t in enumerate(talk) if t.startswith("MAIL FROM:"))
        group = talk[first_mail:first_mail + 5]
        assert [t.split(":")[0].split(" ")[0] for t in group] == [
            "MAIL", "RCPT", "RCPT", "RCPT", "DATA"], talk
        assert talk[first_mail + 5:first_mail + 10] == [
            "250 2.1.0 OK", "250 2.1.5 OK", "250 2.1.5 OK", "452 4.5.3 Too many recipients",
            "354 End data with <CR><LF>.<CR><LF>"], talk
        assert sorted(len(m.rcpts) for m in sink.received) == [1, 2]


RECEIVED = re.compile(rb"Received: from (?P<helo>\S+) \((?P<literal>[^)]*)\)\r\n"
                      rb"\tby (?P<by>\S+) \(deskgate\) with (?P<proto>\S+) id (?P<id>\d+)"
                      rb"(?:\r\n\tfor <(?P<rcpt>[^>]*)>)?; (?P<date>[^\r]+)\r\n")


def received_fields(data: bytes) -> list[dict[str, bytes]]:
    return [m.groupdict() for m in RECEIVED.finditer(data.split(b"\r\n\r\n", 1)[0])]


def queue_ids(engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboundMessage.id).order_by(OutboundMessage.id))
                    .scalars())


class TestReceivedHeader:
    def test_authenticated_tls_submission_is_esmtpsa_without_the_user(
            self, tls_submission, run_gateway):
        """After STARTTLS and AUTH the relayed message has one Received: the EHLO name,
        the client's address, the gateway's host name, ESMTPSA (RFC 3848), the queue
        id, the one recipient and the date; the SASL user is not named (as Postfix's
        default). Before, deskgate added no Received header."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg),
                              local_hostname="agent-pc.internal.test") as s:
                s.starttls(context=ctx)
                s.login("app", "s3cret")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            (oid,) = queue_ids(rg.gateway.engine)
        data = sink.received[0].data
        assert data.startswith(b"Received: from ")
        (got,) = received_fields(data)
        assert got["helo"] == b"agent-pc.internal.test" and got["literal"] == b"[127.0.0.1]"
        assert got["by"] == cfg.gateway.hostname.encode() and got["proto"] == b"ESMTPSA"
        assert int(got["id"]) == oid and got["rcpt"] == b"cust@customer.test"
        header = data.split(b"\r\n\r\n", 1)[0]
        assert header.count(b"Received:") == 1 and b"app" not in header.split(b"\r\nFrom:")[0]

    def test_allowed_network_client_with_helo_and_two_recipients(
            self, tls_submission, run_gateway):
        """A client of allow_networks that greets with HELO: 'with SMTP', and with two
        recipients none of them is named."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg),
                              local_hostname="app.internal.test") as s:
                s.helo()
                assert s.sendmail("app@internal.test",
                                  ["a@customer.test", "b@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            (oid,) = queue_ids(rg.gateway.engine)
        (got,) = received_fields(sink.received[0].data)
        assert (got["helo"], got["proto"], int(got["id"]), got["rcpt"]) == (
            b"app.internal.test", b"SMTP", oid, None)
