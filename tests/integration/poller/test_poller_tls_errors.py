"""TLS refusals name the check that failed and what the certificate was checked against."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.inbound.poller.check import check_account
from tests.integration.poller.poller_helpers import account_toml
from tests.peers.ca import TestCA

pytestmark = pytest.mark.dovecot


@pytest.fixture
def tls_greeter() -> Iterator:
    """tls_greeter(cert, key) → the port of a loopback IMAPS greeting with that certificate."""
    servers: list[socket.socket] = []

    def start(cert: Path, key: Path) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv = socket.create_server(("127.0.0.1", 0))
        srv.settimeout(10)
        servers.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"* OK IMAP4rev1 ready\r\n")
                        tls.recv(100)
                except (OSError, ssl.SSLError):
                    pass
                finally:
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return int(srv.getsockname()[1])

    yield start
    for srv in servers:
        srv.close()


def tls_detail(mailbox, poller_config, port: int, ca_file: str) -> str:
    cfg = poller_config(account_toml(mailbox, "imaps", port=port, tls_ca_file=ca_file))
    res = check_account(cfg.account[0], cfg)
    assert [s.ok for s in res.steps] == [True, True, False, None, None]
    return res.step("tls").detail


def test_self_signed_without_tls_ca_file_points_to_it(mailbox, poller_config, tls_greeter,
                                                      tmp_path):
    ca = TestCA(tmp_path / "own")
    key = tmp_path / "own.key"
    key.write_bytes(ca.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    detail = tls_detail(mailbox, poller_config, tls_greeter(ca.ca_path, key), "")
    assert "self-signed certificate" in detail
    assert "system CA store" in detail and "tls_ca_file" in detail, detail


def test_certificate_of_another_ca_names_the_tls_ca_file(mailbox, poller_config, tmp_path):
    other = TestCA(tmp_path / "other", name="someone else")
    detail = tls_detail(mailbox, poller_config, mailbox.ports["imaps"], str(other.ca_path))
    assert "unable to get local issuer certificate" in detail
    assert f"tls_ca_file {other.ca_path}" in detail, detail


def test_expired_certificate_says_expired(mailbox, poller_config, tls_greeter):
    old = mailbox.ca.issue("old", hosts=("127.0.0.1",), days=-1, filename="old")
    detail = tls_detail(mailbox, poller_config, tls_greeter(old.cert, old.key),
                        str(mailbox.ca.ca_path))
    assert "certificate has expired" in detail
    assert "tls_ca_file" not in detail     # the chain is trusted; the date is the problem
