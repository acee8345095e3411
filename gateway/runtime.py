"""The frozen set of things one message is processed with.

A reload builds a new Runtime and swaps it in; a message keeps the Runtime it
started with until it is answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.clock import Clock, SystemClock
from gateway.config import Config


@dataclass(frozen=True)
class Runtime:
    config: Config
    # Compiled postmaster filters (gateway.inbound.filters), built on load/reload.
    filters: Any = None
    # Key stores for S/MIME and PGP (gateway.crypto), built on load/reload.
    crypto: Any = None
    # Reserved for a classifier; none exists yet (`check` refuses [classifier] enabled).
    classifier: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    # What the stages take "now" from (tests give a gateway.testing.FakeClock).
    clock: Clock = field(default_factory=SystemClock)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.config.gateway.header_prefixes


# Builders run by build_runtime, in order; each returns (field name, value).
# Modules that add to the Runtime register a builder here.
_BUILDERS: list[Any] = []


def register_builder(fn: Any) -> Any:
    _BUILDERS.append(fn)
    return fn


def build_runtime(config: Config) -> Runtime:
    values: dict[str, Any] = {}
    for fn in _BUILDERS:
        name, value = fn(config)
        values[name] = value
    known = {"filters", "crypto", "classifier"}
    extras = {k: v for k, v in values.items() if k not in known}
    return Runtime(config=config, extras=extras,
                   **{k: v for k, v in values.items() if k in known})
