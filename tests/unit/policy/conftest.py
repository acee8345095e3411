"""Fixtures of the policy unit tests: a config with policies and a prepared message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.commlog import CommObj
from gateway.config import Config, load_config
from gateway.inbound import pipeline
from gateway.inbound.stages import build_stages
from gateway.model import Envelope, MessageContext
from gateway.runtime import Runtime, build_runtime

STAGES = build_stages()


@pytest.fixture
def policy_config(make_confdir: Callable[..., Path]) -> Callable[..., Config]:
    """policy_config(policy_toml, conf={...}) → a loaded Config with that policy file."""

    def make(policy: str = "", *, conf: dict[str, str] | None = None,
             name: str = "50-test.toml") -> Config:
        return load_config(make_confdir(conf or {}, policies={name: policy} if policy else {}))

    return make


def prepared(rt: Runtime, raw: bytes, *, trusted: bool = False,
             recipients: tuple[str, ...] = ("support@example.org",)) -> MessageContext:
    """Run the prepare stages (parse … ignore) the way the pipeline does."""
    env = Envelope(mail_from="carla@customer.test", recipients=recipients, raw=raw,
                   trusted=trusted)
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    pipeline.prepare(ctx, rt, STAGES.prepare)
    return ctx


@pytest.fixture
def run_policy(policy_config: Callable[..., Config]) -> Callable[..., MessageContext]:
    """run_policy(policy_toml, raw, trusted=False) → the MessageContext after prepare."""

    def run(policy: str, raw: bytes, *, trusted: bool = False,
            conf: dict[str, str] | None = None) -> MessageContext:
        return prepared(build_runtime(policy_config(policy, conf=conf)), raw, trusted=trusted)

    return run
