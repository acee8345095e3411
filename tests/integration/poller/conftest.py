"""Fixtures of the poller tests: one Dovecot (and one OAuth2 server) for the whole
session, a clean mailbox per test, config and run helpers."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from tests.integration.poller.poller_helpers import USERS, PollHarness
from tests.peers import dovecot as dv
from tests.peers.ca import TestCA
from tests.peers.oauth2 import OAuth2Server
from tests.peers.require import missing_peer

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="session")
def oauth2_server() -> Iterator[OAuth2Server]:
    srv = OAuth2Server()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def dovecot(oauth2_server: OAuth2Server) -> Iterator[dv.Dovecot]:
    if not dv.available():
        missing_peer("Debian dovecot-imapd/dovecot-pop3d not installed")
    d = dv.make_dovecot_dir()
    ca = TestCA(d / "ca")
    server = dv.Dovecot(d, ca, dict(USERS),
                        oauth2_introspection_url=oauth2_server.url + "/introspect")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mailbox(dovecot: dv.Dovecot, oauth2_server: OAuth2Server) -> dv.Dovecot:
    """The shared Dovecot with helpdesk's mailbox emptied for this test."""
    dovecot.clear("helpdesk")
    oauth2_server.reset()
    return dovecot


@pytest.fixture
def poller_config(make_confdir: Callable[..., Path]) -> Callable[..., Config]:
    """poller_config(account_toml(...), ...) → a loaded Config."""

    def make(*accounts: str) -> Config:
        return load_config(make_confdir({"50-accounts.toml": textwrap.dedent(
            "\n".join(accounts))}))

    return make


@pytest.fixture
def harness() -> Iterator[Callable[[Config], PollHarness]]:
    made: list[PollHarness] = []

    def make(cfg: Config) -> PollHarness:
        h = PollHarness(cfg)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
