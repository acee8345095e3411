"""Fixtures of the ops integration tests: a running gateway with its dashboard."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import load_config
from tests.conftest import RunningGateway, free_port
from tests.peers.lmtp import LmtpClient


@dataclass
class Dash:
    rg: RunningGateway
    base: str

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], str]:
        """GET a path; (status, headers, body) also for 4xx/5xx answers."""
        req = urllib.request.Request(self.base + path, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def deliver(self, message: bytes, rcpts: list[str] | None = None,
                mail_from: str = "a@customer.test") -> list[int]:
        """One LMTP connection with one transaction; returns once the connection's
        own communication is written too."""
        before = self.rg.logged_connections()
        c = LmtpClient(self.rg.socket_path)
        c.lhlo()
        _, data = c.transaction(mail_from, rcpts or ["support@example.org"], message)
        c.close()
        assert self.rg.wait_logged_connections(before + 1) == before + 1
        return [d[0] for d in data]


@pytest.fixture
def dashboard(make_confdir: Callable[..., Any], run_gateway: Callable[..., RunningGateway]
              ) -> Callable[..., Dash]:
    """dashboard(extra_toml="") → a gateway whose dashboard listens on a free loopback port."""

    def start(extra: str = "") -> Dash:
        port = free_port()
        conf = make_confdir({"60-dashboard.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                                                  + extra})
        rg = run_gateway(load_config(conf))
        return Dash(rg, f"http://127.0.0.1:{port}")

    return start
