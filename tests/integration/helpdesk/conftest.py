"""Fixtures of the hand-off tests: a webhook receiver and a gateway handing off to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import load_config
from tests.conftest import free_port
from tests.peers.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

SECRET = "s3cret-webhook-key"


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
