"""relay.concurrency follows a reload: the sender delivers as many messages at once as
the reloaded configuration says, and the deliveries under way when it changed finish."""

from __future__ import annotations

import asyncio
import threading

from gateway.outbound.sender import Sender
from gateway.outbound.transport import Attempt, Transport
from gateway.runtime import Runtime
from gateway.store.writer import BatchWriter
from tests.unit.outbound.test_outbound_queue import enqueue
from tests.unit.outbound.test_outbound_sender import fast_runtime, rows


class Gated(Transport):
    """Deliveries wait at a gate; counts how many are inside at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.calls = 0
        self.open = threading.Event()

    def deliver(self, sender, recipients, data) -> Attempt:
        with self.lock:
            self.active += 1
            self.calls += 1
        try:
            self.open.wait(30)
            return Attempt(codes=[(250, "2.0.0 queued")] * len(recipients))
        finally:
            with self.lock:
                self.active -= 1


async def until(check, within: float = 10.0) -> bool:
    for _ in range(int(within / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def test_a_reload_raising_the_concurrency_delivers_more_at_once(ob_engine, config):
    one = fast_runtime(config, concurrency=1)
    three = fast_runtime(config, concurrency=3)
    for _ in range(6):
        enqueue(ob_engine, one, rcpts=("a@customer.test",))
    t = Gated()
    current: list[Runtime] = [one]
    seen: dict[str, int] = {}

    async def main() -> None:
        writer = BatchWriter(ob_engine)
        s = Sender(lambda: current[0], writer, transport=t, node="node-a")
        await s.start()
        try:
            await until(lambda: t.active >= 1)
            await asyncio.sleep(0.5)
            seen["before"] = t.active
            current[0] = three
            await s.reload(three.config)
            await until(lambda: t.active >= 3)
            seen["after"] = t.active
            assert s.transport is t         # only the concurrency changed: same transport
            t.open.set()
            await until(lambda: all(r.status == "sent" for r in rows(ob_engine)))
        finally:
            t.open.set()
            await s.stop()
            writer.close()

    asyncio.run(main())
    assert seen["before"] == 1
    assert seen["after"] >= 3
    assert [r.status for r in rows(ob_engine)] == ["sent"] * 6
    assert t.calls == 6


def test_a_reload_lowering_the_concurrency_lets_running_deliveries_finish(ob_engine,
                                                                          config):
    three = fast_runtime(config, concurrency=3)
    one = fast_runtime(config, concurrency=1)
    for _ in range(4):
        enqueue(ob_engine, three, rcpts=("a@customer.test",))
    t = Gated()
    current: list[Runtime] = [three]
    seen: dict[str, int] = {}

    async def main() -> None:
        writer = BatchWriter(ob_engine)
        s = Sender(lambda: current[0], writer, transport=t, node="node-a")
        await s.start()
        try:
            await until(lambda: t.active >= 3)
            current[0] = one
            await s.reload(one.config)
            t.open.set()
            await until(lambda: all(r.status == "sent" for r in rows(ob_engine)))
            seen["concurrency"] = s.concurrency
        finally:
            t.open.set()
            await s.stop()
            writer.close()

    asyncio.run(main())
    assert seen["concurrency"] == 1
    assert [r.status for r in rows(ob_engine)] == ["sent"] * 4
