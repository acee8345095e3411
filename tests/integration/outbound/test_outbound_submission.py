"""The submission door: never an open relay, AUTH only after STARTTLS, limits, lock-out."""

from __future__ import annotations

import logging
import smtplib
import ssl

import pytest
from sqlalchemy import func, select

from gateway.passwords import hash_password
from gateway.store.tables import CommEntry, OutboundMessage, Ticket
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers.ca import TestCA
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
