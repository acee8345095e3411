"""Fixtures of the hand-off tests: a webhook receiver and a gateway handing off to it; one
OTOBO source tree and template database for the session, a fresh OTOBO database per test,
and a deskgate config pointing at it; Request Tracker 5 for the session (tests/peers/rt.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import Config, load_config
from tests.conftest import free_port
from tests.peers import otobo as ot
from tests.peers.require import missing_peer
from tests.peers.rt import rt5
from tests.peers.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

SECRET = "s3cret-webhook-key"
__all__ = ["rt5"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(secret=SECRET, port=free_port()).start()
    try:
        yield r
    finally:
        r.stop()


def webhook_conf(url: str, retry: str = "1s, 1s, 1s", lease: str = "30s") -> str:
    return f"""
    [helpdesk]
    type = "webhook"
    url = "{url}"
    secret_file = "secrets/webhook"
    retry = "{retry}"
    lease = "{lease}"
    poll_interval = "0.2s"
    ticket_url = "https://hd.example/ticket/{{id}}"
    [helpdesk.queues]
    Support = "Support::L1"
    """


@pytest.fixture
def webhook_gateway(receiver: WebhookReceiver, make_confdir: Callable[..., Path],
                    run_gateway: Callable[..., RunningGateway]
                    ) -> Callable[..., RunningGateway]:
    def start(retry: str = "1s, 1s, 1s", policies: dict[str, str] | None = None,
              extra: str = "") -> RunningGateway:
        conf = make_confdir({"50-helpdesk.toml": webhook_conf(receiver.url, retry) + extra},
                            policies=policies)
        secrets = conf.parent / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "webhook").write_text(SECRET + "\n")
        (secrets / "webhook").chmod(0o600)
        return run_gateway(load_config(conf))
    return start


@pytest.fixture(scope="session")
def otobo_site() -> Iterator[ot.OtoboSite]:
    why = ot.missing()
    if why:
        missing_peer(why)
    site = ot.make_site()
    try:
        yield site
    finally:
        site.destroy()


@pytest.fixture
def otobo(otobo_site: ot.OtoboSite, tmp_path: Path) -> Iterator[ot.Otobo]:
    """A fresh OTOBO (its own database) for one test; its plackup is stopped afterwards."""
    o = otobo_site.new(tmp_path / "otobo")
    try:
        yield o
    finally:
        o.drop()


@pytest.fixture
def helpdesk_config(make_confdir: Callable[..., Path]) -> Callable[..., Config]:
    """helpdesk_config('type = "otobo-rest"', 'url = "..."', ...) → a loaded Config."""

    def make(*lines: str, extra: str = "") -> Config:
        body = "[helpdesk]\n" + "\n".join(lines) + "\n" + textwrap.dedent(extra)
        return load_config(make_confdir({"60-helpdesk.toml": body}))

    return make
