"""A connect that times out is a Connection failure; a TLS handshake that times out a TLS one."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from gateway.config import load_config
from gateway.inbound.poller import imap as imap_mod
from gateway.inbound.poller.check import check_account

ACCOUNT = """
[[account]]
name = "box"
type = "imaps"
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "secret"
"""


def verdicts(make_confdir, port: int):
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(port=port)}))
    return check_account(cfg.account[0], cfg)


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setattr(imap_mod, "TIMEOUT", 1.0)


def test_connect_timeout_is_a_tcp_failure(make_confdir):
    """A listener whose backlog is full drops the SYN: the connect itself times out
    (what a firewall that drops packets looks like)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = []
    for _ in range(5):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        held.append(s)
    time.sleep(0.2)
    try:
        res = verdicts(make_confdir, port)
    finally:
        for s in held:
            s.close()
        srv.close()
    assert [s.ok for s in res.steps][:3] == [True, False, None], res.steps
    assert "timed out" in res.step("tcp").detail


def test_handshake_timeout_is_a_tls_failure(make_confdir):
    """A server that accepts and never answers the TLS handshake."""
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        res = verdicts(make_confdir, srv.getsockname()[1])
    finally:
        srv.close()
    assert [s.ok for s in res.steps][:3] == [True, True, False], res.steps
    assert "TLS handshake" in res.step("tls").detail and "timed out" in res.step("tls").detail
