"""Fixtures of the inventory integration tests: a gateway with its dashboard."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from tests.conftest import RunningGateway, free_port
from tests.peers.require import missing_peer


@dataclass
class InventoryDash:
    rg: RunningGateway
    base: str
    conf: Path
    # A browser's cookies (its login session) per session name.
    openers: dict[str, urllib.request.OpenerDirector] = field(default_factory=dict)

    def request(self, path: str, *, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, session: str = "main"
                ) -> tuple[int, str]:
        """GET (or POST a form when data is given); (status, body) also for 4xx/5xx.
        Each session name keeps its cookies, as one browser does."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body,  # noqa: S310 - loopback
                                     headers=headers or {})
        opener = self.openers.setdefault(session, urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor()))
        try:
            with opener.open(req, timeout=120) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


    def csrf(self, query: str = "") -> str:
        """The CSRF token of the account check forms on /accounts (needs an account)."""
        import re

        status, html = self.request("/accounts" + query)
        assert status == 200, html
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert m, html
        return m.group(1)


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


USERS = {"helpdesk": "secret", "other": "other-secret"}


@pytest.fixture(scope="session")
def inventory_dovecot() -> Any:
    """One Dovecot (IMAP, IMAPS, POP3, POP3S) for the inventory tests, stopped at the end."""
    import shutil

    from tests.peers import dovecot as dv
    from tests.peers.ca import TestCA

    if not dv.available():
        missing_peer("Debian dovecot-imapd/dovecot-pop3d not installed")
    d = dv.make_dovecot_dir()
    server = dv.Dovecot(d, TestCA(d / "ca"), dict(USERS))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mailbox(inventory_dovecot: Any) -> Any:
    """The shared Dovecot with helpdesk's mailbox emptied for this test."""
    inventory_dovecot.clear("helpdesk")
    return inventory_dovecot


def account_toml(server: Any, type_: str, name: str = "box", **extra: Any) -> str:
    """An [[account]] for the test Dovecot, trusting its CA; `extra` overrides keys."""
    port = server.ports[type_.replace("tls", "")]
    values: dict[str, Any] = {"name": name, "type": type_, "host": "127.0.0.1", "port": port,
                              "login": "helpdesk", "password": USERS["helpdesk"],
                              "tls_ca_file": str(server.ca.ca_path), "after_fetch": "keep",
                              "valid": False, "interval": "1h"}
    values.update(extra)
    lines = ["[[account]]"]
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n"
