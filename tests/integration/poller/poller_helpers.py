"""Helpers of the poller integration tests: account TOML, test messages, an
in-process poll harness."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.app import Gateway
from gateway.config import Config
from gateway.inbound.poller.run import Poller, RunResult
from tests.peers import dovecot as dv

USERS = {"helpdesk": "secret", "other": "other-secret"}


def account_toml(server: dv.Dovecot, type_: str, name: str = "box", **extra: Any) -> str:
    port = server.ports[{"imap": "imap", "imaptls": "imap", "imaps": "imaps", "pop3": "pop3",
                         "pop3tls": "pop3", "pop3s": "pop3s"}[type_]]
    values: dict[str, Any] = {"name": name, "type": type_, "host": "127.0.0.1", "port": port,
                              "login": "helpdesk", "password": USERS["helpdesk"],
                              "tls_ca_file": str(server.ca.ca_path), "interval": "1h"}
    if type_ in ("imap", "pop3"):
        values["allow_plaintext"] = True
    values.update(extra)
    oauth2 = values.pop("oauth2", None)
    if oauth2 is not None:
        values.pop("password", None)
    lines = ["[[account]]"]
    for k, v in values.items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml(v)}")
    if oauth2 is not None:
        lines.append("[account.oauth2]")
        lines += [f"{k} = {_toml(v)}" for k, v in oauth2.items()]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class PollHarness:
    """A Gateway with its store, polling in-process with asyncio.run."""

    def __init__(self, cfg: Config) -> None:
        self.gw = Gateway(cfg)
        self.gw.prepare_store()
        self.poller = Poller(self.gw)

    def poll(self, name: str = "box") -> RunResult:
        acc = self.gw.config.account_by_name(name)
        assert acc is not None
        return asyncio.run(self.poller.poll(acc, trigger="manual"))

    def close(self) -> None:
        self.gw.close()


def message(n: int, *, to: str = "support@example.org", size: int = 0,
            subject: str | None = None, extra: str = "") -> bytes:
    body = f"Message number {n}.\r\n"
    if size:
        line = ("x" * 76) + "\r\n"
        body += line * (size // len(line) + 1)
    return (f"From: Customer {n} <customer{n}@customer.test>\r\nTo: {to}\r\n"
            f"Subject: {subject or f'Problem {n}'}\r\n"
            f"Message-ID: <m{n}.{uuid.uuid4().hex[:12]}@customer.test>\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n{extra}\r\n{body}").encode()
