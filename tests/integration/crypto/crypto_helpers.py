"""Helpers of the crypto interop tests (constants, openssl runner, result types)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.crypto.keystore import CryptoStores, stores_for
from gateway.model import Outcome
from tests.peers.ca import Issued, TestCA
from tests.peers.gpg import GpgPeer

SUPPORT = "support@example.org"
CUSTOMER = "cust@customer.test"
SUPPORT_PASS = "helpdesk-pass"


def openssl(*args: str, input: bytes | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60,
                       check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {r.stderr.decode()}")
    return r


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class PgpKeys:
    customer: GpgPeer          # the correspondent's own home (has the customer secret key)
    support_public: bytes
    support_secret: bytes      # protected with SUPPORT_PASS
    customer_public: bytes


@dataclass
class CryptoEnv:
    root: Path
    conf: Path
    ca: TestCA
    support: Issued
    customer: Issued
    gnupg_home: Path
    config: Config
    last_article: dict[str, Any] | None = None

    @property
    def stores(self) -> CryptoStores:
        return stores_for(self.config)

    def reload(self) -> None:
        self.config = load_config(self.conf)


@dataclass
class Delivered:
    outcome: Outcome
    ticket: dict[str, Any] | None
    params: dict[str, str]
    body_seen: str          # the body the filters saw (after decryption)
    thread: str = ""        # the thread the prepare stages ran on

    @property
    def article(self) -> dict[str, Any]:
        assert self.ticket is not None
        return self.ticket["articles"][-1]

    @property
    def crypto(self) -> dict[str, Any]:
        return self.article["crypto"]
