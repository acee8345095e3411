"""The frozen set of things one message is processed with.

A reload builds a new Runtime and swaps it in; a message keeps the Runtime it
started with until it is answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock, SystemClock
from gateway.config import Config
from gateway.tablecheck import once_each

if TYPE_CHECKING:
    from gateway.classify import Classifier
    from gateway.crypto.keystore import CryptoStores
    from gateway.inbound.filters import FilterSet
    from gateway.outbound.dkim import DkimKey


@dataclass(frozen=True)
class Runtime:
    config: Config
    # Compiled postmaster filters (gateway.inbound.filters), built on load/reload.
    filters: FilterSet | None = None
    # Key stores for S/MIME and PGP (gateway.crypto.keystore), built on load/reload.
    crypto: CryptoStores | None = None
    # The queue/priority classifier when [classifier] enabled (gateway.classify).
    classifier: Classifier | None = None
    # DKIM signing keys by domain, from [[dkim]] (gateway.outbound.dkim).
    dkim: Mapping[str, list[DkimKey]] = field(default_factory=dict)
    # What the stages take "now" from (tests give a gateway.testing.FakeClock).
    clock: Clock = field(default_factory=SystemClock)
    # System addresses removed from conf.d: the database keeps them as invalid, and the
    # doors that decide per recipient (LMTP RCPT, `deliver`) refuse them as invalid
    # ones. Read from the database once per load/reload (gateway.store.repo.
    # RetiredAddresses: by Gateway.prepare_store and reload after sync_config, else at
    # the first lookup), so a RCPT costs no query.
    retired: AbstractSet[str] = frozenset()

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.config.gateway.header_prefixes


@dataclass(frozen=True)
class Builder:
    field: str                       # the Runtime field it fills
    fn: Callable[[Config], Any]


def build_builders() -> tuple[Builder, ...]:
    """The table of what a Runtime is built from (imports each builder's module)."""
    from gateway.classify import build_classifier
    from gateway.crypto.keystore import stores_for
    from gateway.inbound.filters import compile_filters
    from gateway.outbound.dkim import load_keys
    from gateway.store.repo import RetiredAddresses

    table = (
        Builder("filters", compile_filters),
        Builder("crypto", stores_for),
        Builder("classifier", build_classifier),
        Builder("dkim", load_keys),
        Builder("clock", lambda _config: SystemClock()),
        Builder("retired", RetiredAddresses),
    )
    check_builders(table)
    return table


def check_builders(table: tuple[Builder, ...]) -> None:
    """Startup check: one builder for every Runtime field but `config`; RuntimeError if not."""
    wanted = [f.name for f in dataclasses.fields(Runtime) if f.name != "config"]
    problems = once_each(wanted, (b.field for b in table), unknown="is no Runtime field")
    if problems:
        raise RuntimeError("runtime builder table: " + "; ".join(problems))


_TABLE: list[tuple[Builder, ...]] = []


def build_runtime(config: Config) -> Runtime:
    """Build every field from the config (on load and on each reload)."""
    if not _TABLE:
        _TABLE.append(build_builders())
    return Runtime(config=config, **{b.field: b.fn(config) for b in _TABLE[0]})
