"""Several nodes on one PostgreSQL queue: FOR UPDATE SKIP LOCKED claims, leases, no duplicates."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.outbound import queue as oq
from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.rewrite import parse_submission
from gateway.outbound.sender import Sender
from gateway.runtime import build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import OutboundMessage
from gateway.store.writer import BatchWriter
from tests.integration.outbound.conftest import outbound_toml
from tests.integration.outbound.test_outbound_restart import received_ids
from tests.peers.smarthost import AuthSink

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_queue(pg_url, make_confdir):
    """A migrated PostgreSQL database and a runtime whose relay is set per test."""
    engines = []

    def make(relay_port: int, n: int, lease: str = "1s"):
        cfg = load_config(make_confdir({"40-outbound.toml": outbound_toml(
            relay_port, lease=lease, retry="1s*10")}))
        cfg = dataclasses.replace(cfg, relay=dataclasses.replace(cfg.relay, concurrency=3))
        rt = build_runtime(cfg)
        engine = make_engine(pg_url)
        engines.append(engine)
        migrate(engine)
        ids = []
        with engine.begin() as conn:
            repo.sync_config(conn, cfg)
            for i in range(n):
                mid = f"<pg-{i}@internal.test>"
                ctx = OutboundContext(
                    mail_from="app@internal.test", recipients=[f"c{i}@customer.test"],
                    raw=(f"From: app@internal.test\r\nTo: c{i}@customer.test\r\n"
                         f"Subject: {i}\r\nMessage-ID: {mid}\r\n\r\nx\r\n").encode(),
                    trusted=True)
                parse_submission(ctx, rt)
                process_in_transaction(ctx, rt, conn)
                ids.append(mid)
        return rt, engine, ids

    yield make
    for e in engines:
        e.dispose()


async def run_senders(rt, url_engine_factory, nodes, until, limit=60.0):
    senders = []
    for name in nodes:
        engine = url_engine_factory()
        s = Sender(lambda: rt, BatchWriter(engine), node=name)
        senders.append((s, engine))
        await s.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while not await loop.run_in_executor(None, until):
            assert loop.time() < deadline, "senders did not finish"
            await asyncio.sleep(0.1)
    finally:
        for s, engine in senders:
            await s.stop()
            s.writer.close()
            engine.dispose()
    return [s for s, _ in senders]


def all_sent(engine, n):
    def check():
        with engine.connect() as conn:
            st = list(conn.execute(select(OutboundMessage.status)).scalars())
        return len(st) == n and all(x == "sent" for x in st)
    return check


class TestTwoNodes:
    def test_two_claimers_never_send_one_message_twice(self, pg_queue, pg_url):
        """Two senders on one PostgreSQL queue deliver 60 messages, each exactly once."""
        with AuthSink() as sink:
            rt, engine, ids = pg_queue(sink.port, 60)
            senders = asyncio.run(run_senders(rt, lambda: make_engine(pg_url),
                                              ["node-a", "node-b"], all_sent(engine, 60)))
            got = received_ids(sink)
            assert sorted(got) == sorted(ids)
            assert sum(s.delivered for s in senders) == 60
            assert all(s.delivered > 0 for s in senders), [s.delivered for s in senders]

    def test_lease_of_a_dead_node_expires_and_another_node_sends(self, pg_queue, pg_url):
        """Messages claimed by a node that died are sent by another after the lease, once;
        the dead node's interrupted attempt does not count, so each took one."""
        with AuthSink() as sink:
            rt, engine, ids = pg_queue(sink.port, 5)
            with engine.begin() as conn:
                dead = oq.claim(conn, "dead-node", limit=5, lease=1.0)
            assert len(dead) == 5
            with engine.begin() as conn:
                assert oq.claim(conn, "other", limit=5, lease=1.0,
                                now=datetime.now(UTC)) == []
            asyncio.run(run_senders(rt, lambda: make_engine(pg_url), ["survivor"],
                                    all_sent(engine, 5)))
            assert sorted(received_ids(sink)) == sorted(ids)
            with engine.connect() as conn:
                tries = conn.execute(select(OutboundMessage.attempts)).scalars().all()
            assert tries == [1] * 5


class TestSlowTransfer:
    def test_a_send_longer_than_the_lease_is_not_taken_by_another_node(self, pg_queue, pg_url):
        """A delivery still under way when the lease would run out keeps it: sent once."""
        with AuthSink() as sink:
            sink.handler.data_delay = 3.5      # the smarthost answers the dot after 3.5 s
            rt, engine, ids = pg_queue(sink.port, 1)
            senders = asyncio.run(run_senders(rt, lambda: make_engine(pg_url),
                                              ["node-a", "node-b"], all_sent(engine, 1)))
            assert received_ids(sink) == ids
            assert sum(s.delivered for s in senders) == 1
            with engine.connect() as conn:
                assert conn.execute(select(OutboundMessage.attempts)).scalar_one() == 1


class TestRecordingFails:
    def test_a_delivery_whose_outcome_cannot_be_written_at_once_is_not_sent_again(
            self, pg_queue, pg_url):
        """A 250 the database refuses to record for a while is recorded later, not resent."""
        import threading
        import time

        from sqlalchemy import text

        with AuthSink() as sink:
            sink.handler.data_delay = 1.0
            rt, engine, ids = pg_queue(sink.port, 1, lease="10s")
            held = threading.Event()

            def hold_the_row() -> None:
                # Once the send is under way, a session locks the queue row for longer
                # than the senders' lock_timeout (shorter than the lease): writing the
                # 250 fails with 55P03 for a while.
                while not sink.handler.rcpt_seen:
                    time.sleep(0.02)
                with engine.begin() as conn:
                    conn.execute(text("SELECT id FROM outbound_message FOR UPDATE"))
                    held.set()
                    time.sleep(3.0)

            locker = threading.Thread(target=hold_the_row)
            locker.start()
            sep = "&" if "?" in pg_url else "?"
            short = f"{pg_url}{sep}options=-c%20lock_timeout%3D500ms"
            try:
                asyncio.run(run_senders(rt, lambda: make_engine(short), ["node-a"],
                                        all_sent(engine, 1)))
            finally:
                locker.join()
            assert held.is_set()
            assert received_ids(sink) == ids


class TestQueueGauges:
    def test_a_failed_refresh_is_visible_not_the_last_value(self, pg_queue, pg_url):
        """With the database gone, /metrics does not repeat the last queue depth and
        age as if they were current: both are NaN and the failure is counted."""
        import math

        from prometheus_client.parser import text_string_to_metric_families

        from gateway import metrics
        from gateway.web.server import outbound_gauges
        from tests.conftest import pg_unreachable

        def scrape(engine) -> dict[str, float]:
            body = metrics.render(engine, (outbound_gauges,))[0].decode()
            out = {}
            for fam in text_string_to_metric_families(body):
                for s in fam.samples:
                    if s.name.startswith("deskgate_outbound_queue_") or (
                            s.name == "deskgate_gauge_refresh_errors_total"
                            and s.labels.get("gauges") == "outbound_queue"):
                        out[s.name] = s.value
            return out

        _, engine, _ = pg_queue(1, 2)
        before = scrape(engine)
        with pg_unreachable(pg_url):
            during = scrape(engine)
        after = scrape(engine)
        assert before["deskgate_outbound_queue_depth"] == 2
        assert math.isnan(during["deskgate_outbound_queue_depth"])
        assert math.isnan(during["deskgate_outbound_queue_oldest_seconds"])
        assert during.get("deskgate_gauge_refresh_errors_total", 0) == \
            before.get("deskgate_gauge_refresh_errors_total", 0) + 1
        assert after["deskgate_outbound_queue_depth"] == 2


class TestRefusalWithNul:
    def test_a_refusal_whose_text_holds_a_nul_still_bounces(self, pg_queue, pg_url):
        """A smarthost refusing a recipient for good with a NUL byte in its reply text
        (PostgreSQL takes no NUL in text): the message fails and the DSN goes back to
        the submitter, the text stored without the NUL."""
        from gateway.store.tables import CommEntry

        with AuthSink() as sink:
            sink.set_script(lambda stage, _: "550 5.1.1 no such\x00user" if stage == "RCPT"
                            else None)
            rt, engine, _ids = pg_queue(sink.port, 1)

            def settled() -> bool:
                with engine.connect() as conn:
                    return conn.execute(select(OutboundMessage.status)
                                        .order_by(OutboundMessage.id)).scalars().first() \
                        != "queued"

            asyncio.run(run_senders(rt, lambda: make_engine(pg_url), ["node-a"], settled))
            with engine.connect() as conn:
                rows = conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()
                dsn_errors = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "DSN", CommEntry.priority == "Error")).scalars().all()
        first = rows[0]
        assert (first.status, first.attempts) == ("failed", 1)
        assert "5.1.1 no such" in first.last_error and "\x00" not in first.last_error
        assert dsn_errors == []
        assert [r.kind for r in rows] == ["message", "dsn"]
