"""Fixtures of the outbound tests: a config with [relay] and [submission], waiting helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from gateway.config import Config, load_config
from gateway.store.tables import OutboundMessage
from tests.conftest import free_port


def outbound_toml(relay_port: int, *, submission_port: int | None = None,
                  security: str = "none", extra_relay: str = "", extra_submission: str = "",
                  retry: str = "1s, 1s, 1s", extra: str = "", lease: str = "30s") -> str:
    sub = ""
    if submission_port is not None:
        sub = f"""
[submission]
listen = ["127.0.0.1:{submission_port}"]
{extra_submission}
"""
    return f"""
[relay]
host = "127.0.0.1"
port = {relay_port}
security = "{security}"
retry = "{retry}"
poll_interval = "200ms"
timeout = "10s"
lease = "{lease}"
{extra_relay}
{sub}
{extra}
"""


@pytest.fixture
def outbound_config(make_confdir: Callable[..., Path]) -> Callable[..., Config]:
    """outbound_config(relay_port, submission=True, ...) → Config (submission port on .port)."""

    def make(relay_port: int, *, submission: bool = True, files: dict[str, str] | None = None,
             **kw: Any) -> Config:
        port = free_port() if submission else None
        conf = make_confdir({"40-outbound.toml": outbound_toml(relay_port, submission_port=port,
                                                               **kw), **(files or {})})
        return load_config(conf)

    return make


def submission_port(cfg: Config) -> int:
    return int(cfg.submission.listen[0].rpartition(":")[2])


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboundMessage.status)
                                 .order_by(OutboundMessage.id)).scalars())
