"""The hand-off worker against the webhook receiver when the helpdesk is slow or the
store fails: a row in flight keeps its lease, and an answer the helpdesk gave is
recorded, so the helpdesk gets each message once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from gateway.config import load_config
from gateway.helpdesk import outbox
from gateway.helpdesk.webhook import Webhook
from gateway.helpdesk.worker import HandoffWorker
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Handoff
from gateway.store.writer import BatchWriter
from tests.integration.helpdesk.conftest import SECRET, webhook_conf
from tests.peers.webhook import WebhookReceiver


def setup(make_confdir: Callable[..., Path], receiver: WebhookReceiver, tmp_path: Path,
          lease: str) -> tuple[Engine, Runtime]:
    conf = make_confdir({"50-helpdesk.toml": webhook_conf(receiver.url, retry="1s*5",
                                                          lease=lease)})
    secrets = conf.parent / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "webhook").write_text(SECRET + "\n")
    (secrets / "webhook").chmod(0o600)
    cfg = load_config(conf)
    engine = make_engine(f"sqlite:///{tmp_path / 'lease.db'}")
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, cfg)
    return engine, build_runtime(cfg)


def seed(engine: Engine, subject: str) -> int:
    with engine.begin() as conn:
        tid = repo.insert_ticket(conn, number=None, title=subject, queue="Raw", state="new",
                                 state_type="new", priority="3 normal", dynamic_fields={})
        aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                  sender_type="customer", subject=subject,
                                  from_addr="alice@customer.test",
                                  from_email="alice@customer.test")
        return outbox.enqueue(conn, ticket_id=tid, article_id=aid, kind="create",
                              helpdesk="webhook", decisions={})


def status(engine: Engine, hid: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Handoff.status).where(Handoff.id == hid)).scalar()


async def wait(done: Callable[[], bool], within: float = 15) -> bool:
    for _ in range(int(within / 0.05)):
        if done():
            return True
        await asyncio.sleep(0.05)
    return done()


@asynccontextmanager
async def running(engine: Engine, rt: Runtime, writer: BatchWriter | None = None
                  ) -> AsyncIterator[HandoffWorker]:
    writer = writer or BatchWriter(engine)
    writer.start()
    worker = HandoffWorker(lambda: rt, writer, engine, connector=Webhook(rt.config),
                           node="n1")
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        writer.close()
        engine.dispose()


class TestSlowHelpdesk:
    async def test_a_delivery_longer_than_the_lease_is_sent_once(
            self, receiver: WebhookReceiver, make_confdir: Callable[..., Path],
            tmp_path: Path) -> None:
        """A helpdesk that answers after longer than `lease`: the row stays leased while
        its request runs, so it is not claimed again and POSTed a second time."""
        engine, rt = setup(make_confdir, receiver, tmp_path, lease="1s")
        receiver.hang_seconds = 3.0
        hid = seed(engine, "slow")
        async with running(engine, rt):
            assert await wait(lambda: status(engine, hid) == "delivered")
            await asyncio.sleep(0.5)
        assert receiver.arrived == 1
        assert len(receiver.tickets) == 1


class FlakyWriter(BatchWriter):
    """A writer whose first job recording a finished attempt fails (the database went
    away for a moment between the helpdesk's answer and deskgate's record)."""

    failed = 0

    async def run_deferring(self, job: Any, *, isolated: bool = False) -> Any:
        if not self.failed and getattr(job, "keywords", {}).get("batch"):
            self.failed += 1
            raise OperationalError("UPDATE handoff", {}, Exception("server closed the "
                                                                  "connection"))
        return await super().run_deferring(job, isolated=isolated)


class TestStoreFailure:
    async def test_an_answer_whose_record_failed_is_recorded_not_sent_again(
            self, receiver: WebhookReceiver, make_confdir: Callable[..., Path],
            tmp_path: Path) -> None:
        """The record of a delivery fails once: the worker records it again instead of
        letting the lease run out, so the helpdesk gets the message once."""
        engine, rt = setup(make_confdir, receiver, tmp_path, lease="1s")
        hid = seed(engine, "record")
        writer = FlakyWriter(engine)
        async with running(engine, rt, writer):
            assert await wait(lambda: status(engine, hid) == "delivered")
            await asyncio.sleep(1.5)
        assert writer.failed == 1
        assert receiver.arrived == 1
        with engine.connect() as conn:
            assert conn.execute(select(Handoff.attempts).where(Handoff.id == hid)
                                ).scalar() == 1
