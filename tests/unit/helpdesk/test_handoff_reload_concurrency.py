"""helpdesk.concurrency follows a reload: the hand-off worker hands off as many rows at
once as the reloaded configuration says, and the hand-offs under way finish."""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.helpdesk.base import Delivered, HandoffItem
from gateway.helpdesk.worker import HandoffWorker, make_connector
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.writer import BatchWriter
from tests.unit.helpdesk.fakehttp import fake_http
from tests.unit.helpdesk.test_handoff_worker import Setup, row, seed, wait


class Gated:
    """The webhook connector behind a gate; counts the hand-offs inside at once."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.type, self.account = inner.type, inner.account
        self.lock = threading.Lock()
        self.active = 0
        self.open = threading.Event()

    def deliver(self, item: HandoffItem) -> Delivered:
        with self.lock:
            self.active += 1
        try:
            self.open.wait(30)
            return self.inner.deliver(item)
        finally:
            with self.lock:
                self.active -= 1

    def check(self):
        return self.inner.check()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def setup(make_confdir: Callable[..., Path], tmp_path: Path) -> Iterator[Setup]:
    with fake_http() as server:
        server.on("POST", "/hook", (200, {}, {"ticket_id": "41", "ticket_number": "1041"}))
        conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "webhook"
            url = "{server.url}/hook"
            secret_file = "sec"
            poll_interval = "0.1s"
            concurrency = 1
            """)})
        (conf.parent / "sec").write_text("s3cret\n")
        (conf.parent / "sec").chmod(0o600)
        cfg = load_config(conf)
        engine = make_engine(f"sqlite:///{tmp_path / 'hd.db'}")
        migrate(engine)
        with engine.begin() as conn:
            repo.sync_config(conn, cfg)
        try:
            yield Setup(engine, build_runtime(cfg), server)
        finally:
            engine.dispose()


def with_concurrency(rt: Runtime, n: int) -> Runtime:
    cfg = rt.config
    return build_runtime(dataclasses.replace(
        cfg, helpdesk=dataclasses.replace(cfg.helpdesk, concurrency=n)))


async def test_a_reload_raising_the_concurrency_hands_off_more_at_once(setup: Setup) -> None:
    ids = [seed(setup.engine, f"t{i}")[0] for i in range(8)]
    three = with_concurrency(setup.rt, 3)
    current = [setup.rt]
    writer = BatchWriter(setup.engine)
    writer.start()
    gated = Gated(make_connector(setup.rt.config))
    worker = HandoffWorker(lambda: current[0], writer, setup.engine, connector=gated,
                           node="n1")
    await worker.start()
    try:
        await wait(lambda: gated.active >= 1)
        await asyncio.sleep(0.5)
        before = gated.active
        current[0] = three
        await worker.reload(three.config)
        await wait(lambda: gated.active >= 3)
        after = gated.active
        assert worker.connector is gated    # only the concurrency changed: same connector
        gated.open.set()
        await wait(lambda: all(row(setup.engine, i).status == "delivered" for i in ids))
    finally:
        gated.open.set()
        await worker.stop()
        writer.close()
    assert before == 1
    assert after >= 3
    assert [row(setup.engine, i).status for i in ids] == ["delivered"] * 8


async def test_a_reload_lowering_the_concurrency_lets_running_hand_offs_finish(
        setup: Setup) -> None:
    ids = [seed(setup.engine, f"t{i}")[0] for i in range(4)]
    three = with_concurrency(setup.rt, 3)
    current = [three]
    writer = BatchWriter(setup.engine)
    writer.start()
    gated = Gated(make_connector(three.config))
    worker = HandoffWorker(lambda: current[0], writer, setup.engine, connector=gated,
                           node="n1")
    await worker.start()
    try:
        await wait(lambda: gated.active >= 3)
        assert gated.active == 3
        current[0] = setup.rt
        await worker.reload(setup.rt.config)
        gated.open.set()
        await wait(lambda: all(row(setup.engine, i).status == "delivered" for i in ids))
    finally:
        gated.open.set()
        await worker.stop()
        writer.close()
    assert [row(setup.engine, i).status for i in ids] == ["delivered"] * 4
