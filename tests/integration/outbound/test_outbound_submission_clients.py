"""The submission listener with real clients (smtplib, msmtp), where a Postfix
administrator expects what Postfix's submission service does."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
import textwrap

import pytest

from gateway.passwords import hash_password
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers.ca import TestCA
from tests.peers.require import missing_peer
from tests.peers.smarthost import AuthSink

MSG = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n\r\nbody\r\n")
MSMTP = "/usr/bin/msmtp"
PASSWORD = "s3cret"        # user app's, in tls_submission


@pytest.fixture
def tls_submission(tmp_path, outbound_config):
    """make(relay_port) → (config with STARTTLS, user app / s3cret, loopback allowed
    only when asked; the client's TLS context)."""
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("submission", hosts=("127.0.0.1", "localhost"))
    pw_hash = hash_password("s3cret", ln=4)

    def make(relay_port: int, *, networks: str = '["10.0.0.0/8"]'):
        cfg = outbound_config(relay_port, extra_submission=f"""
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
allow_networks = {networks}
[[submission.user]]
name = "app"
password_hash = "{pw_hash}"
""")
        return cfg, ssl.create_default_context(cafile=str(ca.ca_path))

    return make


def msmtp(tmp_path, port: int, recipients: list[str], message: bytes, *,
          auth: bool = False, ca: str = "", password: str = PASSWORD
          ) -> subprocess.CompletedProcess[bytes]:
    if not shutil.which(MSMTP):
        missing_peer("msmtp not installed: run make system-deps")
    rc = tmp_path / "msmtprc"
    tls = f"tls on\ntls_starttls on\ntls_trust_file {ca}" if ca else "tls off"
    creds = f"auth plain\nuser app\npassword {password}" if auth else "auth off"
    rc.write_text(textwrap.dedent(f"""\
        account deskgate
        host 127.0.0.1
        port {port}
        from app@internal.test
        """) + tls + "\n" + creds + "\naccount default : deskgate\n")
    rc.chmod(0o600)
    return subprocess.run([MSMTP, "-C", str(rc), "--", *recipients], input=message,
                          capture_output=True, timeout=60)


class TestPostmaster:
    def test_bare_postmaster_reaches_the_gateway_hostnames_postmaster(
            self, tmp_path, tls_submission, run_gateway):
        """RCPT TO:<Postmaster> (smtplib) and a bare postmaster from msmtp are accepted
        and relayed to postmaster@<gateway.hostname> (RFC 5321 4.5.1); they were
        refused with 553 5.1.3."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                assert s.sendmail("app@internal.test", ["Postmaster"], MSG) == {}
            done = msmtp(tmp_path, submission_port(cfg), ["postmaster"], MSG)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                     what="delivery")
            assert [m.rcpts for m in sink.received] == [["postmaster@helpdesk.test"]] * 2


class TestDuplicateRecipients:
    def test_smarthost_gets_a_repeated_recipient_once(self, tls_submission, run_gateway):
        """smtplib names a recipient twice (the second time in capitals): one queue row
        recipient, one RCPT TO at the smarthost."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                assert s.sendmail("app@internal.test", ["cust@customer.test",
                                                        "CUST@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert [m.rcpts for m in sink.received] == [["cust@customer.test"]]


class TestStartTlsFirst:
    def test_mail_before_starttls_asks_for_starttls(self, tmp_path, tls_submission,
                                                    run_gateway):
        """A client outside allow_networks that sends MAIL before STARTTLS is told
        530 5.7.0 Must issue a STARTTLS command first (Postfix's reply with
        smtpd_tls_security_level = encrypt): AUTH is not even offered before TLS, so
        "Authentication required" sent it the wrong way. After STARTTLS, MAIL without
        AUTH is 530 5.7.0 Authentication required. msmtp without TLS shows the reply."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            run_gateway(cfg)
            port = submission_port(cfg)
            with smtplib.SMTP("127.0.0.1", port) as s:
                s.ehlo()
                assert s.mail("app@internal.test") == (
                    530, b"5.7.0 Must issue a STARTTLS command first")
                s.starttls(context=ctx)
                s.ehlo()
                assert s.mail("app@internal.test") == (
                    530, b"5.7.0 Authentication required")
            done = msmtp(tmp_path, port, ["cust@customer.test"], MSG)
            assert done.returncode != 0
            assert b"Must issue a STARTTLS command first" in done.stderr, done.stderr
            assert sink.received == []


class TestStartTlsTwice:
    def test_starttls_inside_tls_is_refused_and_the_session_goes_on(
            self, tls_submission, run_gateway):
        """STARTTLS on a connection that already uses TLS is answered 554 5.5.1 Error: TLS
        already active (Postfix's reply; RFC 3207 4) and the session goes on: AUTH and a
        message follow. It was answered 220 and the server started a second handshake
        inside TLS, which broke the connection."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.ehlo()
                assert s.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
                assert s.noop() == (250, b"2.0.0 OK")
                s.login("app", "s3cret")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")


class TestAsPostfix:
    """What already answers as Postfix's submission service, with real clients."""

    def test_oversized_message_without_size_is_552_and_the_connection_goes_on(
            self, tls_submission, run_gateway, outbound_config):
        """A message over max_message_size sent without SIZE= is refused after DATA with
        552 5.3.4 and the next message on the same connection is queued."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port, extra_submission='max_message_size = "20KiB"')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.has_extn("size") and s.esmtp_features["size"] == str(20 * 1024)
                assert s.mail("app@internal.test") == (250, b"2.1.0 OK")
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.data(MSG + b"x" * 30000 + b"\r\n") == (
                    552, b"5.3.4 Message size exceeds fixed limit")
                assert s.noop() == (250, b"2.0.0 OK")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")

    def test_greeting_says_esmtp(self, run_gateway, outbound_config):
        """The banner names the host and says ESMTP, as Postfix's smtpd_banner does
        ($myhostname ESMTP $mail_name): clients that look for it send EHLO."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port)
            run_gateway(cfg)
            s = smtplib.SMTP()
            try:
                code, banner = s.connect("127.0.0.1", submission_port(cfg))
            finally:
                s.close()
        assert code == 220
        assert banner.decode().split() == [cfg.gateway.hostname, "ESMTP", "deskgate"]

    def test_msmtp_with_a_wrong_password_gets_535(self, tmp_path, tls_submission,
                                                  run_gateway):
        """msmtp with STARTTLS and a wrong password fails with 535 5.7.8; nothing sent."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port)
            rg = run_gateway(cfg)
            rc_ca = str(tmp_path / "ca" / "ca.pem")
            done = msmtp(tmp_path, submission_port(cfg), ["cust@customer.test"], MSG,
                         auth=True, ca=rc_ca, password="wrong")
            assert done.returncode != 0
            assert b"535 5.7.8" in done.stderr, done.stderr
            done = msmtp(tmp_path, submission_port(cfg), ["cust@customer.test"], MSG,
                         auth=True, ca=rc_ca)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")

    def test_smtputf8_address_and_long_line(self, tls_submission, run_gateway):
        """SMTPUTF8 and 8BITMIME are offered; a UTF-8 recipient with SMTPUTF8 and a body
        line of 2000 octets are accepted and relayed (the smarthost offers SMTPUTF8)."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port, networks='["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.has_extn("smtputf8") and s.has_extn("8bitmime")
                body = MSG + b"y" * 2000 + b"\r\n"
                assert s.sendmail("app@internal.test", ["jörg@customer.test"], body,
                                  mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert sink.received[0].rcpts == ["jörg@customer.test"]
