"""A delivery that lost its claim (another node took the message) sends nothing more and
records nothing: a slow smarthost on 127.0.0.1 and a short relay.lease."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from gateway.outbound.sender import Sender
from gateway.outbound.transport import make_transport
from gateway.runtime import build_runtime
from gateway.store.tables import OutboundMessage
from gateway.store.writer import BatchWriter
from tests.peers.smarthost import AuthSink
from tests.unit.outbound.test_outbound_queue import enqueue


def runtime(config, port, *, lease, concurrency=1):
    cfg = dataclasses.replace(config, relay=dataclasses.replace(
        config.relay, host="127.0.0.1", port=port, security="none", retry=(60.0,),
        poll_interval=0.1, lease=lease, timeout=10.0, warn_after=0.0,
        concurrency=concurrency))
    return build_runtime(cfg)


def rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()


def run_senders(engine, rt, nodes, until, limit=20.0, meanwhile=None):
    async def main() -> None:
        writer = BatchWriter(engine)
        senders = [Sender(lambda: rt, writer, transport=make_transport(rt.config), node=n)
                   for n in nodes]
        for s in senders:
            await s.start()
        try:
            for _ in range(int(limit * 10)):
                if meanwhile is not None:
                    meanwhile()
                if until():
                    break
                await asyncio.sleep(0.1)
        finally:
            for s in senders:
                await s.stop()
            writer.close()
    asyncio.run(main())


class TestClaimGuard:
    def test_a_slow_delivery_keeps_its_claim(self, ob_engine, config):
        """A DATA answer slower than three leases: the lease is renewed, so the other node
        never takes the message and the smarthost gets it once."""
        with AuthSink() as sink:
            sink.handler.data_delay = 3.0
            rt = runtime(config, sink.port, lease=0.6)
            enqueue(ob_engine, rt, rcpts=("a@customer.test",))
            run_senders(ob_engine, rt, ["node-a", "node-b"],
                        lambda: rows(ob_engine)[0].status != "queued")
            (m,) = rows(ob_engine)
            assert (m.status, m.attempts) == ("sent", 1)
            assert len(sink.received) == 1

    def test_a_message_taken_by_another_node_while_waiting_is_not_sent(self, ob_engine,
                                                                       config):
        """The second message waits for the only worker while the first is held at DATA;
        another node takes it meanwhile (this node's lease had run out): when the worker
        is free the claim is checked before MAIL FROM and the message is not sent
        again; the other node's claim is left as it is."""
        gate = threading.Event()
        with AuthSink() as sink:
            sink.handler.data_gate = gate
            rt = runtime(config, sink.port, lease=30.0, concurrency=1)
            first = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
            second = enqueue(ob_engine, rt, rcpts=("b@customer.test",))
            taken: list[bool] = []

            def take_second() -> None:
                if taken:
                    return
                r = {m.id: m for m in rows(ob_engine)}
                if r[second].claimed_by.startswith("node-a") and sink.handler.rcpt_seen:
                    with ob_engine.begin() as conn:
                        conn.execute(update(OutboundMessage).where(
                            OutboundMessage.id == second).values(
                            claimed_by="node-b", lease_until=datetime.now(UTC)
                            + timedelta(minutes=10)))
                    taken.append(True)
                    gate.set()

            run_senders(ob_engine, rt, ["node-a"],
                        lambda: bool(taken) and rows(ob_engine)[0].status == "sent"
                        and len(sink.received) >= 1, meanwhile=take_second)
            # stop() waited for the second message's turn at the worker
            got = [r.rcpts for r in sink.received]
            m1, m2 = rows(ob_engine)
            assert (m1.id, m2.id) == (first, second)
            assert got == [["a@customer.test"]]
            assert (m2.status, m2.attempts, m2.claimed_by) == ("queued", 0, "node-b")
