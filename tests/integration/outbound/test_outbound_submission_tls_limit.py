"""[submission] max_sessions on tls_listen: a connection counts from its first byte,
while its TLS handshake is still going on, so a flood of half-open handshakes is
limited as sessions are."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from tests.conftest import free_port
from tests.integration.outbound.conftest import wait_for
from tests.peers.ca import TestCA


@pytest.fixture
def limited(tmp_path, outbound_config):
    """→ (config: tls_listen, max_sessions = 2; the client's context; the port)."""
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("submission", hosts=("127.0.0.1",))
    port = free_port()
    cfg = outbound_config(9, extra_submission=f"""
tls_listen = ["127.0.0.1:{port}"]
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
max_sessions = 2
""")
    return cfg, ssl.create_default_context(cafile=str(ca.ca_path)), port


def closed_without_reply(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


class TestHandshakesCount:
    def test_half_open_handshakes_fill_max_sessions(self, limited, run_gateway):
        """Two connections that never send a ClientHello hold both sessions: a third is
        closed at once and counted as refused; once they go, a TLS client is served
        and nothing stays counted."""
        cfg, ctx, port = limited
        rg = run_gateway(cfg)
        limit = rg.gateway.limits["submission"]
        idle = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(2)]
        try:
            wait_for(lambda: limit.active == 2, timeout=5, what="two handshakes counted")
            before = limit.refused_total
            with socket.create_connection(("127.0.0.1", port), 10) as third:
                assert closed_without_reply(third)
            assert limit.refused_total == before + 1
            assert limit.active == 2
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: limit.active == 0, timeout=10, what="the handshakes released")
        with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30) as s:
            assert s.ehlo()[0] == 250
            assert limit.active == 1
        wait_for(lambda: limit.active == 0, timeout=10, what="the session released")
        assert limit.per_ip == {}

    def test_failed_handshake_releases_its_place(self, limited, run_gateway):
        """A client speaking plain text on tls_listen fails its handshake; the place it
        held is free again."""
        cfg, _, port = limited
        rg = run_gateway(cfg)
        limit = rg.gateway.limits["submission"]
        for _ in range(3):      # more than max_sessions, one after the other
            with socket.create_connection(("127.0.0.1", port), 10) as raw:
                raw.sendall(b"EHLO app.test\r\n")
                assert closed_without_reply(raw)
            wait_for(lambda: limit.active == 0, timeout=10, what="the place released")
        assert limit.per_ip == {}
