"""A renewed submission certificate is taken by `deskgate reload` (SIGHUP) for new
connections, on listen (STARTTLS) and tls_listen (implicit TLS), as Postfix takes
new certificate files for new smtpd processes; open connections keep theirs."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import ssl
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import free_port
from tests.peers.ca import Issued, TestCA


def common_name(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    return dict(x[0] for x in cert["subject"])["commonName"]


def implicit_cn(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), 10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return common_name(tls)


def starttls_cn(port: int, ctx: ssl.SSLContext) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=ctx)
        assert isinstance(s.sock, ssl.SSLSocket)
        return common_name(s.sock)


def install(leaf: Issued, tls: Path) -> None:
    """Replace the configured files, as certbot's deploy hook or a copy does."""
    shutil.copyfile(leaf.cert, tls / "cert.pem")
    shutil.copyfile(leaf.key, tls / "key.pem")


@pytest.fixture
def renewal(tmp_path, outbound_config):
    """→ (config with listen and tls_listen on tls/cert.pem + key.pem holding
    certificate "cert-a", the client's context, the tls_listen port, certificate
    "cert-b" of the same CA, the tls directory)."""
    ca = TestCA(tmp_path / "ca")
    a = ca.issue("cert-a", hosts=("127.0.0.1",), filename="a")
    b = ca.issue("cert-b", hosts=("127.0.0.1",), filename="b")
    tls = tmp_path / "tls"
    tls.mkdir()
    install(a, tls)
    (tls / "key.pem").chmod(0o600)
    port = free_port()
    cfg = outbound_config(9, extra_submission=f"""
tls_listen = ["127.0.0.1:{port}"]
tls_cert = "{tls / 'cert.pem'}"
tls_key = "{tls / 'key.pem'}"
""")
    return cfg, ssl.create_default_context(cafile=str(ca.ca_path)), port, b, tls


def reload(rg) -> bool:
    return bool(asyncio.run_coroutine_threadsafe(rg.gateway.reload(), rg.loop).result(60))


class TestCertificateReload:
    def test_reload_presents_the_new_certificate_to_new_connections(
            self, renewal, run_gateway):
        """Before reload both listeners present cert-a; the files are replaced by
        cert-b and the configuration reloaded: new connections get cert-b on both,
        a connection open since before keeps its session and cert-a."""
        cfg, ctx, port, b, tls = renewal
        rg = run_gateway(cfg)
        listen_port = int(cfg.submission.listen[0].rpartition(":")[2])
        assert implicit_cn(port, ctx) == "cert-a"
        assert starttls_cn(listen_port, ctx) == "cert-a"
        with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30) as old:
            old.ehlo()
            install(b, tls)
            assert reload(rg)
            assert implicit_cn(port, ctx) == "cert-b"
            assert starttls_cn(listen_port, ctx) == "cert-b"
            assert old.noop()[0] == 250
            assert isinstance(old.sock, ssl.SSLSocket)
            assert common_name(old.sock) == "cert-a"

    def test_a_certificate_that_does_not_load_keeps_the_previous_one(
            self, renewal, run_gateway):
        """A half-written renewal (the certificate file not PEM) is logged as an error
        naming the file, and new connections keep getting the certificate in use."""
        cfg, ctx, port, _, tls = renewal
        rg = run_gateway(cfg)
        (tls / "cert.pem").write_text("not a certificate\n")
        with capture_logs() as logs:
            reload(rg)
        errors = [e for e in logs if e["log_level"] == "error"]
        assert any(str(tls / "cert.pem") in str(e) for e in errors), errors
        assert implicit_cn(port, ctx) == "cert-a"
        listen_port = int(cfg.submission.listen[0].rpartition(":")[2])
        assert starttls_cn(listen_port, ctx) == "cert-a"
