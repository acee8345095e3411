"""gateway.heap: the start-up heap frozen by serve, again after a reload."""

from __future__ import annotations

import gc
import weakref

import pytest

from gateway import heap


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_settle_freezes_what_exists_and_collects_cycles_first(unfrozen):
    """Objects alive at settle() leave the collected generations; cyclic garbage made
    before it is collected, not frozen; a second settle() puts the first ones back
    first (so a reload's old cycles can go)."""
    class Node:
        pass

    kept = Node()
    kept.me = kept                      # a cycle that is still referenced
    garbage = Node()
    garbage.me = garbage                # a cycle nobody references
    ref = weakref.ref(garbage)
    del garbage
    frozen = heap.settle()
    assert ref() is None                # collected before the freeze
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())   # frozen objects are not tracked
    kept_ref = weakref.ref(kept)
    del kept
    gc.collect()
    assert kept_ref() is not None       # frozen: a plain collection leaves the cycle alone
    heap.settle()                       # unfreeze, collect, freeze again
    assert kept_ref() is None


def test_serve_settles_after_start_and_after_each_reload(monkeypatch):
    """supervise freezes once the listeners are up, and after a SIGHUP reload once
    the reload is done (even a refused one)."""
    import asyncio

    from gateway import supervise

    calls: list[str] = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append("settle") or 1)

    class FakeGateway:
        async def reload(self) -> bool:
            calls.append("reload")
            return False

    assert asyncio.run(supervise.reload_everywhere(FakeGateway(), [])) is False  # type: ignore[arg-type]
    assert calls == ["reload", "settle"]


def test_serve_freezes_the_heap_once_it_listens(monkeypatch, config):
    """serve() settles the heap after its Gateway started (listeners and services
    up), not before, and serves on until SIGTERM."""
    import asyncio
    import os
    import signal
    from types import SimpleNamespace

    from gateway import supervise

    calls: list[str] = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append("settle") or 1)

    class FakeGateway:
        def __init__(self, _config: object) -> None:
            self.pipeline = SimpleNamespace(remote=None)

        def prepare_store(self) -> None:
            calls.append("prepare")

        async def start(self, socks: object = None) -> list[object]:
            calls.append("start")
            return []

        def services_up(self) -> list[str]:
            return []

        def services_down(self) -> list[str]:
            return []

        async def stop(self, servers: object) -> None:
            calls.append("stop")

    monkeypatch.setattr(supervise, "Gateway", FakeGateway)

    def ready() -> None:
        calls.append("ready")
        os.kill(os.getpid(), signal.SIGTERM)     # handled by serve's loop: a stop

    asyncio.run(supervise.serve(config, ready=ready))
    assert calls == ["prepare", "start", "settle", "ready", "stop"]
