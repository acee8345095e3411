"""The protocols the parts of a deskgate process depend on, instead of on app.Gateway.

`Host` is what a service (dashboard, poller, outbound sender and submission,
hand-off worker, commlog purge, classifier retraining) and the CLI commands that
run one use of the process they live in. app.Gateway implements it; a service
module never imports gateway.app, so the composition root depends on the
services and not the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.commlog import Comm
    from gateway.config import Config
    from gateway.limits import SessionLimit
    from gateway.model import Envelope, Outcome
    from gateway.outbound.pipeline import OutboundPipeline
    from gateway.runtime import Runtime
    from gateway.store.writer import BatchWriter

# Called after a reload swapped in a new Config (awaited when it returns an awaitable).
ReloadHook = Callable[["Config"], "Awaitable[None] | None"]


class Service(Protocol):
    """A long-running part of `deskgate serve` (listener, sender, poller, dashboard).

    A service that may fail to start without stopping the gateway (the dashboard
    when its port is taken) has a `running` attribute; reload starts it again.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Host(Protocol):
    """What a service uses of its process: the current config and runtime, the store,
    the worker pool, the session counters, the reload machinery."""

    # The running configuration and Runtime; both are swapped by a reload, so read
    # them when needed rather than keeping them.
    @property
    def config(self) -> Config: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def writer(self) -> BatchWriter:
        """The group-commit writer (every write goes through it)."""
        ...

    @property
    def executor(self) -> Executor:
        """The pipeline's worker pool."""
        ...

    @property
    def limits(self) -> dict[str, SessionLimit]:
        """Session counters of the listeners (lmtp, submission), for /healthz."""
        ...

    @property
    def servers(self) -> list[asyncio.AbstractServer]:
        """The LMTP listeners."""
        ...

    @property
    def reload_hooks(self) -> list[ReloadHook]:
        """Run after each successful reload; a service appends its own."""
        ...

    # The outbound pipeline shared by submission, the sender and `deskgate send`
    # (gateway.outbound.service creates it on first use).
    outbound: OutboundPipeline | None
    # After a reload asked for from inside (the dashboard): the other processes too.
    reload_others: Callable[[], None]
    # The LMTP workers committing in their own writer, without the commit process.
    commit_lost_by_workers: Callable[[], list[str]]

    async def reload(self) -> bool:
        """Re-read the configuration; False (and the old one kept) when it is invalid."""
        ...

    async def deliver_envelope(self, env: Envelope, comm: Comm | None = None) -> Outcome:
        """Run one message through the inbound pipeline, counted as in flight (a graceful
        stop waits for it)."""
        ...

    def services_up(self) -> list[str]: ...

    def services_down(self) -> list[str]: ...


ServiceFactory = Callable[[Host], "Service | None"]


def is_running(svc: Service) -> bool:
    return bool(getattr(svc, "running", True))

