"""Fixtures of the admin-page tests: a running gateway whose dashboard has an admin
and a viewer (basic auth) and a token."""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.passwords import hash_password
from tests.conftest import RunningGateway, free_port
from tests.peers.lmtp import LmtpClient

ADMIN = ("root", "admin-pw")
VIEWER = ("watcher", "viewer-pw")
USERS = f"""
[[dashboard.user]]
name = "{ADMIN[0]}"
password_hash = "{hash_password(ADMIN[1], ln=10)}"
role = "admin"

[[dashboard.user]]
name = "{VIEWER[0]}"
password_hash = "{hash_password(VIEWER[1], ln=10)}"
"""

# A file an admin wrote by hand: its comments and order must survive an edit.
EXTRA = """\
# Addresses of the spring campaign (hand-written).
[[address]]
email = "promo@example.org"   # the flyer address
queue = "Sales"
comment = "spring flyer"

# Kept for old customers.
[[address]]
email = "legacy@example.org"
queue = "Support"
"""


def basic(user: tuple[str, str]) -> dict[str, str]:
    raw = f"{user[0]}:{user[1]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@dataclass
class AdminDash:
    rg: RunningGateway
    base: str
    conf: Path
    # A browser's cookies (the login session) per (user, session name).
    openers: dict[tuple[Any, str], urllib.request.OpenerDirector] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.conf.parent

    def request(self, path: str, *, data: dict[str, str] | None = None,
                user: tuple[str, str] | None = ADMIN,
                headers: dict[str, str] | None = None, session: str = "main"
                ) -> tuple[int, str]:
        """GET (or POST a form when data is given); (status, body) also for 4xx/5xx.
        Each (user, session) keeps its cookies, as one browser does."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        h = {**(basic(user) if user else {}), **(headers or {})}
        req = urllib.request.Request(self.base + path, data=body, headers=h)  # noqa: S310
        return self.send(req, user, session)

    def send(self, req: urllib.request.Request, user: tuple[str, str] | None = ADMIN,
             session: str = "main") -> tuple[int, str]:
        """Send a request with the cookies of (user, session); (status, body)."""
        opener = self.openers.setdefault((user, session), urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())))
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def csrf(self, user: tuple[str, str] | None = ADMIN, path: str = "/admin/address",
             session: str = "main") -> str:
        """The CSRF token of the forms `user`'s login session is shown."""
        status, html = self.request(path, user=user, session=session)
        assert status == 200, html
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert m, html
        return m.group(1)

    def digest(self) -> dict[str, str]:
        """sha256 of every file under conf.d and policies (byte-identity checks)."""
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for d in ("conf.d", "policies") for p in sorted((self.root / d).glob("*"))}

    def rcpt(self, address: str) -> int:
        c = LmtpClient(self.rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<c@customer.test>")[0] == 250
        code = c.cmd(f"RCPT TO:<{address}>")[0]
        c.close()
        return code

    def deliver(self, to: str, message: bytes) -> list[int]:
        c = LmtpClient(self.rg.socket_path)
        c.lhlo()
        _, data = c.transaction("c@customer.test", [to], message)
        c.close()
        return [d[0] for d in data]


@pytest.fixture
def admin_dashboard(make_confdir: Callable[..., Any], run_gateway: Callable[..., RunningGateway]
                    ) -> Callable[..., AdminDash]:
    """admin_dashboard(users=USERS, policies=None) → a gateway with the admin pages."""

    def start(users: str = USERS, *, policies: dict[str, str] | None = None,
              extra: str = "") -> AdminDash:
        port = free_port()
        conf = make_confdir({"20-extra.toml": EXTRA, "60-dashboard.toml":
                             f'[dashboard]\nlisten = "127.0.0.1:{port}"\n{extra}{users}'},
                            policies=policies)
        rg = run_gateway(load_config(conf))
        return AdminDash(rg, f"http://127.0.0.1:{port}", conf)

    return start


def message(n: int, to: str, extra: str = "") -> bytes:
    return (f"From: c{n}@customer.test\r\nTo: {to}\r\nSubject: s{n}\r\n"
            f"Message-ID: <adm{n}@customer.test>\r\n{extra}\r\nbody {n}\r\n").encode()
