"""[submission] tls_listen: submission with implicit TLS (RFC 8314, port 465; Postfix's
smtps service with smtpd_tls_wrappermode = yes), with real clients."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
import textwrap

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway import metrics
from gateway.commlog_names import CLIENT
from gateway.passwords import hash_password
from gateway.store.tables import CommEntry
from tests.conftest import free_port
from tests.integration.outbound.conftest import statuses, wait_for
from tests.peers.ca import TestCA
from tests.peers.require import missing_peer
from tests.peers.smarthost import AuthSink

MSG = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n\r\nbody\r\n")
MSMTP = "/usr/bin/msmtp"


@pytest.fixture
def smtps(tmp_path, outbound_config):
    """make(relay_port) → (config with listen and tls_listen, user app / s3cret, no
    network allowed without AUTH; the client's TLS context; the tls_listen port)."""
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("submission", hosts=("127.0.0.1", "localhost"))
    pw_hash = hash_password("s3cret", ln=4)

    def make(relay_port: int):
        port = free_port()
        cfg = outbound_config(relay_port, extra_submission=f"""
tls_listen = ["127.0.0.1:{port}"]
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
allow_networks = ["10.0.0.0/8"]
[[submission.user]]
name = "app"
password_hash = "{pw_hash}"
""")
        return cfg, ssl.create_default_context(cafile=str(ca.ca_path)), port

    return make


def client_entries(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(CommEntry.value).where(
            CommEntry.key == CLIENT)).scalars())


def refused_total() -> float:
    value = metrics.SESSIONS_REFUSED.labels("submission")._value.get()
    return float(value)


class TestImplicitTls:
    def test_smtp_ssl_authenticates_and_relays(self, smtps, run_gateway):
        """smtplib.SMTP_SSL on tls_listen: EHLO offers AUTH at once and no STARTTLS,
        MAIL without AUTH is "Authentication required" (not "STARTTLS first"), STARTTLS
        is 554 TLS already active; after AUTH the message reaches the smarthost and the
        communication log records the connection as implicit TLS."""
        with AuthSink() as sink:
            cfg, ctx, port = smtps(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30) as s:
                s.ehlo()
                assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"]
                assert not s.has_extn("starttls")
                assert s.docmd("HELP")[1].split()[-1] == b"RSET"
                assert s.mail("app@internal.test") == (530, b"5.7.0 Authentication required")
                assert s.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
                assert s.noop() == (250, b"2.0.0 OK")
                s.login("app", "s3cret")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert [m.rcpts for m in sink.received] == [["cust@customer.test"]]
            [entry] = wait_for(lambda: client_entries(rg.gateway.engine), what="Client entry")
            assert ", implicit TLS, AUTH as app" in entry, entry

    def test_starttls_listener_still_records_starttls(self, smtps, run_gateway):
        """The same configuration's listen socket still offers STARTTLS and the
        communication log names it (not implicit TLS)."""
        with AuthSink() as sink:
            cfg, ctx, _ = smtps(sink.port)
            rg = run_gateway(cfg)
            port = int(cfg.submission.listen[0].rpartition(":")[2])
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.ehlo()
                assert s.has_extn("starttls") and not s.has_extn("auth")
                s.starttls(context=ctx)
                s.login("app", "s3cret")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            [entry] = wait_for(lambda: client_entries(rg.gateway.engine), what="Client entry")
            assert ", STARTTLS, AUTH as app" in entry, entry

    def test_msmtp_without_starttls_relays(self, tmp_path, smtps, run_gateway):
        """msmtp with tls on and tls_starttls off (how it speaks to port 465)
        authenticates with PLAIN and the message reaches the smarthost."""
        if not shutil.which(MSMTP):
            missing_peer("msmtp not installed: run make system-deps")
        with AuthSink() as sink:
            cfg, _, port = smtps(sink.port)
            rg = run_gateway(cfg)
            rc = tmp_path / "msmtprc"
            rc.write_text(textwrap.dedent(f"""\
                account deskgate
                host 127.0.0.1
                port {port}
                from app@internal.test
                tls on
                tls_starttls off
                tls_trust_file {tmp_path / "ca" / "ca.pem"}
                auth plain
                user app
                password s3cret
                account default : deskgate
                """))
            rc.chmod(0o600)
            done = subprocess.run([MSMTP, "-C", str(rc), "--", "cust@customer.test"],
                                  input=MSG, capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert [m.rcpts for m in sink.received] == [["cust@customer.test"]]


class TestFailedHandshake:
    def test_plain_text_client_is_dropped_and_the_listener_serves_the_next(
            self, smtps, run_gateway):
        """A client that speaks plain SMTP on tls_listen gets no greeting: the handshake
        fails, the connection is closed, the failure is logged and counted with the
        refused connections, and no internal error is reported; the next client, with
        TLS, is served."""
        with AuthSink() as sink:
            cfg, ctx, port = smtps(sink.port)
            rg = run_gateway(cfg)
            before = refused_total()
            with capture_logs() as logs, socket.create_connection(("127.0.0.1", port),
                                                                   10) as raw:
                raw.sendall(b"EHLO app.test\r\n")
                raw.settimeout(10)
                got = b""
                while chunk := raw.recv(4096):
                    got += chunk
                assert not got.startswith(b"220")
                wait_for(lambda: any(e["event"] == "submission TLS handshake failed"
                                     for e in logs), what="the handshake failure logged")
            [failed] = [e for e in logs if e["event"] == "submission TLS handshake failed"]
            assert failed["client"].startswith("127.0.0.1:")
            assert not any(e["event"].startswith("submission command failed") for e in logs)
            assert refused_total() == before + 1
            assert rg.gateway.limits["submission"].refused_total == 1
            with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30) as s:
                s.login("app", "s3cret")
                assert s.sendmail("app@internal.test", ["cust@customer.test"], MSG) == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert rg.gateway.limits["submission"].active == 0
