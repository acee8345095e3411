"""What `deskgate reload` (SIGHUP) applies to a running gateway and what it says
needs a restart, as `postfix reload` does: every changed setting takes effect for
new work, and one that cannot change without a restart is named in the log."""

from __future__ import annotations

import shutil
import smtplib
import ssl
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.config import load_config
from gateway.store.tables import CommEntry
from tests.conftest import RunningGateway, free_port
from tests.peers.ca import TestCA
from tests.peers.lmtp import LmtpClient

# Submission needs a relay; the maildir one needs no peer.
RELAY = '[relay]\nmode = "maildir"\n'


def reload(rg: RunningGateway) -> bool:
    return bool(rg.call(rg.gateway.reload(), 60))


def lmtp_rcpts(rg: RunningGateway, rcpts: list[str]) -> list[int]:
    """RCPT TO codes of one LMTP transaction (then RSET)."""
    c = LmtpClient(rg.socket_path)
    try:
        c.lhlo()
        assert c.cmd("MAIL FROM:<a@customer.test>")[0] == 250
        codes = [c.cmd(f"RCPT TO:<{r}>")[0] for r in rcpts]
        c.cmd("RSET")
        return codes
    finally:
        c.close()


def lmtp_size_reply(rg: RunningGateway, size: int) -> int:
    c = LmtpClient(rg.socket_path)
    try:
        c.lhlo()
        return c.cmd(f"MAIL FROM:<a@customer.test> SIZE={size}")[0]
    finally:
        c.close()


class TestLimits:
    def test_lmtp_limits_apply_to_new_connections(self, make_confdir, run_gateway):
        """[lmtp] max_recipients, max_message_size and max_sessions, lowered in
        conf.d, hold for the connections opened after the reload."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        rcpts = ["support@example.org", "sales@example.org", "helpdesk@example.org"]
        assert lmtp_rcpts(rg, rcpts) == [250, 250, 250]
        assert lmtp_size_reply(rg, 500_000) == 250
        (conf / "50-limits.toml").write_text(
            '[lmtp]\nmax_recipients = 2\nmax_message_size = "100KiB"\nmax_sessions = 7\n')
        assert reload(rg)
        assert lmtp_rcpts(rg, rcpts)[:2] == [250, 250]
        assert lmtp_rcpts(rg, rcpts)[2] // 100 in (4, 5)
        assert lmtp_size_reply(rg, 500_000) == 552
        assert rg.gateway.limits["lmtp"].max_sessions == 7

    def test_submission_session_limits_apply(self, make_confdir, run_gateway):
        """[submission] max_sessions and max_sessions_per_ip: a reload lowering
        max_sessions_per_ip to 1 refuses a second connection from the same client."""
        port = free_port()
        conf = make_confdir(
            {"40-sub.toml": RELAY + f'[submission]\nlisten = ["127.0.0.1:{port}"]\n'})
        rg = run_gateway(load_config(conf), tcp=False)
        first = smtplib.SMTP("127.0.0.1", port, timeout=30)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as second:
                assert second.noop()[0] == 250
            (conf / "40-sub.toml").write_text(
                RELAY + f'[submission]\nlisten = ["127.0.0.1:{port}"]\nmax_sessions = 9\n'
                'max_sessions_per_ip = 1\nmax_auth_failures = 2\n')
            assert reload(rg)
            assert rg.gateway.limits["submission"].max_sessions == 9
            # The AUTH lock-out follows the reload too: not named as needing a restart.
            assert "submission.max_auth_failures" not in (
                rg.gateway.last_reload["restart_needed"])
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", port, timeout=30)
            assert refused.value.smtp_code == 421
        finally:
            first.close()


class TestAppliedByTheRuntime:
    def test_unknown_recipient_and_allow_networks(self, make_confdir, run_gateway):
        """lmtp.unknown_recipient and submission.allow_networks are read per
        command from the running configuration: a reload changes the answer of
        the next RCPT TO on both doors."""
        port = free_port()
        sub = RELAY + f'[submission]\nlisten = ["127.0.0.1:{port}"]\n'
        conf = make_confdir({"40-sub.toml": sub})
        rg = run_gateway(load_config(conf), tcp=False)

        def submission_rcpt() -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.ehlo()
                s.mail("agent@example.org")
                return s.rcpt("customer@customer.test")[0]

        assert lmtp_rcpts(rg, ["nobody@example.org"]) == [550]
        assert submission_rcpt() == 250
        (conf / "40-sub.toml").write_text(sub + "allow_networks = []\n")
        (conf / "50-unknown.toml").write_text('[lmtp]\nunknown_recipient = "default-queue"\n')
        assert reload(rg)
        assert lmtp_rcpts(rg, ["nobody@example.org"]) == [250]
        assert submission_rcpt() // 100 == 5


class TestRestartNeeded:
    def test_a_setting_a_reload_cannot_apply_is_named(self, make_confdir, run_gateway):
        """lmtp.workers, gateway.state_dir and the dashboard address change in conf.d:
        the reload applies the rest (max_recipients) and warns naming each key that
        needs a restart."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        (conf / "50-restart.toml").write_text(
            '[gateway]\nstate_dir = "var2"\n[lmtp]\nworkers = 2\nmax_recipients = 1\n'
            f'[dashboard]\nlisten = "127.0.0.1:{free_port()}"\n')
        with capture_logs() as logs:
            assert reload(rg)
        warnings = [e for e in logs if e.get("log_level") == "warning"
                    and "restart" in e["event"]]
        assert warnings, logs
        keys = warnings[0]["keys"]
        for key in ("lmtp.workers", "gateway.state_dir", "dashboard.listen"):
            assert key in keys
        assert "lmtp.max_recipients" not in keys
        assert rg.gateway.last_reload["restart_needed"] == keys
        assert lmtp_rcpts(rg, ["support@example.org", "sales@example.org"])[1] // 100 in (4, 5)


@pytest.fixture
def tls_gateway(tmp_path: Path, make_confdir, run_gateway):
    """A gateway with submission STARTTLS on tls/cert.pem + key.pem → (rg, conf, tls dir,
    submission port, client context)."""
    ca = TestCA(tmp_path / "ca")
    a = ca.issue("cert-a", hosts=("127.0.0.1",), filename="a")
    tls = tmp_path / "tls"
    tls.mkdir()
    shutil.copyfile(a.cert, tls / "cert.pem")
    shutil.copyfile(a.key, tls / "key.pem")
    (tls / "key.pem").chmod(0o600)
    port = free_port()
    conf = make_confdir({"40-sub.toml": RELAY + f"""
[submission]
listen = ["127.0.0.1:{port}"]
tls_cert = "{tls / 'cert.pem'}"
tls_key = "{tls / 'key.pem'}"
"""})
    rg = run_gateway(load_config(conf), tcp=False)
    return rg, conf, tls, port, ssl.create_default_context(cafile=str(ca.ca_path))


def starttls_cn(port: int, ctx: ssl.SSLContext) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=ctx)
        assert isinstance(s.sock, ssl.SSLSocket)
        cert = s.sock.getpeercert()
        assert cert is not None
        return str(dict(x[0] for x in cert["subject"])["commonName"])


class TestCertificateRefused:
    def test_a_pair_that_does_not_load_refuses_the_reload(self, tls_gateway):
        """A certificate file that is not PEM: the reload is refused like a config
        error — False, the running configuration kept (a max_recipients changed in
        the same reload is not applied), the file and reason in the log and in the
        communication log's reload entry; new connections keep cert-a."""
        rg, conf, tls, port, ctx = tls_gateway
        (tls / "cert.pem").write_text("not a certificate\n")
        (conf / "50-limits.toml").write_text("[lmtp]\nmax_recipients = 1\n")
        with capture_logs() as logs:
            assert not reload(rg)
        errors = [e for e in logs if e["log_level"] == "error" and "refused" in e["event"]]
        assert errors and str(tls / "cert.pem") in str(errors[0]), logs
        assert rg.gateway.config.lmtp.max_recipients == 1000
        assert lmtp_rcpts(rg, ["support@example.org", "sales@example.org"]) == [250, 250]
        assert starttls_cn(port, ctx) == "cert-a"
        with rg.gateway.engine.connect() as c:
            texts = [t for t in c.execute(select(CommEntry.value)).scalars()
                     if str(tls / "cert.pem") in t]
        assert texts, "no communication log entry names the certificate"
        assert rg.gateway.last_reload["result"] == "refused"

    def test_a_key_of_another_certificate_refuses_the_reload(self, tls_gateway, tmp_path):
        rg, _conf, tls, port, ctx = tls_gateway
        other = TestCA(tmp_path / "ca2").issue("cert-x", hosts=("127.0.0.1",), filename="x")
        shutil.copyfile(other.key, tls / "key.pem")
        assert not reload(rg)
        assert starttls_cn(port, ctx) == "cert-a"
        assert str(tls / "key.pem") in rg.gateway.last_reload["reason"]


class TestAppliedNotNamed:
    def test_concurrency_and_the_auth_lock_out_are_applied_not_named(self, make_confdir,
                                                                     run_gateway):
        """relay.concurrency, submission.max_auth_failures and submission.auth_backoff
        changed with a sender and a submission door running: the reload applies them
        (the sender delivers that many at once from now on) and names nothing."""
        port = free_port()
        sub = RELAY + f'[submission]\nlisten = ["127.0.0.1:{port}"]\n'
        conf = make_confdir({"40-sub.toml": sub})
        rg = run_gateway(load_config(conf), tcp=False)
        sender = next(s for s in rg.gateway.services if s.name == "outbound-sender")
        (conf / "40-sub.toml").write_text(
            RELAY + 'concurrency = 7\n'
            f'[submission]\nlisten = ["127.0.0.1:{port}"]\n'
            'max_auth_failures = 2\nauth_backoff = "5m"\n')
        assert reload(rg)
        # (lmtp.listen is named: the test's gateway listens where conf.d does not say)
        named = rg.gateway.last_reload["restart_needed"]
        for key in ("relay.concurrency", "submission.max_auth_failures",
                    "submission.auth_backoff"):
            assert key not in named, named
        assert sender.concurrency == 7      # type: ignore[attr-defined]
