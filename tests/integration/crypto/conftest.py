"""Fixtures for the S/MIME and PGP interop tests: a test CA with certificates for
a system address and a correspondent, GnuPG homes, a gateway with [crypto] set."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.cli.tickets import ticket_detail
from gateway.config import load_config
from gateway.model import Envelope
from tests.integration.crypto.crypto_helpers import (
    CUSTOMER,
    SUPPORT,
    SUPPORT_PASS,
    CryptoEnv,
    Delivered,
    PgpKeys,
    crlf,
)
from tests.peers.ca import TestCA
from tests.peers.gpg import GpgPeer, kill_agent, short_home


@pytest.fixture(scope="session")
def pgp_keys() -> Iterator[PgpKeys]:
    """Keys made once per session: the correspondent's and the helpdesk's (with a passphrase)."""
    cust = GpgPeer()
    admin = GpgPeer()
    try:
        cust.gen_key(f"Customer <{CUSTOMER}>")
        admin.gen_key(f"Example Support <{SUPPORT}>", passphrase=SUPPORT_PASS)
        support_pub = admin.export(SUPPORT)
        support_sec = admin.export_secret(SUPPORT, SUPPORT_PASS)
        cust.import_(support_pub)
        yield PgpKeys(cust, support_pub, support_sec, cust.export(CUSTOMER))
    finally:
        cust.close()
        admin.close()


@pytest.fixture
def crypto_env(make_confdir: Callable[..., Path], tmp_path: Path) -> Iterator[CryptoEnv]:
    """conf.d with [crypto]; the support@ S/MIME certificate and key installed."""
    home = short_home("dgg")
    conf = make_confdir({"50-crypto.toml": f"""
        [crypto]
        smime_dir = "keys/smime"
        smime_ca_file = "keys/smime/ca.pem"
        gnupg_home = "{home}"
        """}, policies={"020-server.toml": r"""
        [[filter]]
        name = "020-server-field"
        match = [{ header = "Body", value = "server:\\s+(?P<server>[a-z0-9.]+)" }]
        set = { "X-Deskgate-DynamicField-Server" = "[**\\server**]" }

        [[filter]]
        name = "030-decrypted-printer"
        match = [{ header = "X-Deskgate-BodyDecrypted", value = "PC LOAD LETTER" }]
        set = { "X-Deskgate-DynamicField-Printer" = "jammed" }
        """})
    root = conf.parent
    ca = TestCA(tmp_path / "ca")
    support = ca.issue("Example Support", emails=(SUPPORT,), filename="support")
    customer = ca.issue("Customer", emails=(CUSTOMER,), filename="customer")
    sdir = root / "keys" / "smime"
    sdir.mkdir(parents=True)
    shutil.copy(ca.ca_path, sdir / "ca.pem")
    shutil.copy(support.cert, sdir / f"{SUPPORT}.pem")
    shutil.copy(support.key, sdir / f"{SUPPORT}.key")
    (sdir / f"{SUPPORT}.key").chmod(0o600)
    env = CryptoEnv(root, conf, ca, support, customer, home, load_config(conf))
    try:
        yield env
    finally:
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pgp_env(crypto_env: CryptoEnv, pgp_keys: PgpKeys) -> CryptoEnv:
    """crypto_env plus the helpdesk's secret key (with passphrase) and the customer's key."""
    st = crypto_env.stores.pgp
    st.import_(pgp_keys.support_secret, SUPPORT_PASS)
    st.import_(pgp_keys.customer_public)
    return crypto_env


@pytest.fixture
def deliver(crypto_env: CryptoEnv) -> Iterator[Callable[..., Delivered]]:
    """Run one message through the real pipeline (parse → decrypt → ... → store)."""
    gws: list[Gateway] = []

    def run(raw: bytes, rcpts: tuple[str, ...] = (SUPPORT,)) -> Delivered:
        from gateway.inbound.stages import build_stages
        from gateway.outbound.autoresponse import build_requests

        seen: dict[str, Any] = {}

        def spy(ctx: Any, rt: Any) -> None:
            seen["params"] = dict(ctx.params)
            seen["body"] = ctx.parsed.body if ctx.parsed else ""
            seen["thread"] = threading.current_thread().name

        gw = Gateway(crypto_env.config,
                     stages=build_stages().with_stage("prepare", "zz-test-spy", spy))
        gws.append(gw)
        gw.prepare_store()
        env = Envelope(mail_from=CUSTOMER, recipients=rcpts, raw=crlf(raw))
        outcome = asyncio.run(gw.pipeline.deliver(env))
        # What the outbound sender does next: build the requested auto-responses.
        asyncio.run(build_requests(lambda: gw.runtime, gw.writer, gw.engine))
        with gw.engine.connect() as conn:
            t = ticket_detail(conn, outcome.ticket_number) if outcome.ticket_number else None
        return Delivered(outcome, t, seen.get("params", {}), seen.get("body", ""),
                         seen.get("thread", ""))

    yield run
    for gw in gws:
        gw.close()
