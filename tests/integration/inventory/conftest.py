"""Fixtures of the inventory integration tests: a gateway with its dashboard."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from tests.conftest import RunningGateway, free_port


@dataclass
class InventoryDash:
    rg: RunningGateway
    base: str
    conf: Path

    def request(self, path: str, *, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        """GET (or POST a form when data is given); (status, body) also for 4xx/5xx."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body,  # noqa: S310 - loopback
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture
def inventory_dashboard(make_confdir: Callable[..., Any],
                        run_gateway: Callable[..., RunningGateway]
                        ) -> Callable[..., InventoryDash]:
    """inventory_dashboard(files={...}, policies={...}, dashboard_extra="")."""

    def start(files: dict[str, str] | None = None, *, policies: dict[str, str] | None = None,
              dashboard_extra: str = "") -> InventoryDash:
        port = free_port()
        conf = make_confdir({**(files or {}), "60-dashboard.toml":
                             f'[dashboard]\nlisten = "127.0.0.1:{port}"\n' + dashboard_extra},
                            policies=policies)
        rg = run_gateway(load_config(conf))
        return InventoryDash(rg, f"http://127.0.0.1:{port}", conf)

    return start
