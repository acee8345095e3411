"""The sender when an attempt crashes (an exception, not an SMTP reply): the crash is a
temporary failure that counts, and the message ends in a DSN, never in a loop."""

from __future__ import annotations

import asyncio
import dataclasses

from sqlalchemy import select

from gateway.outbound import dsn
from gateway.outbound.sender import Sender
from gateway.outbound.transport import Attempt, Transport
from gateway.runtime import build_runtime
from gateway.store.tables import CommEntry, OutboundMessage
from gateway.store.writer import BatchWriter
from tests.unit.outbound.test_outbound_queue import enqueue


class Crashing(Transport):
    """A transport with a bug: every delivery raises."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, sender, recipients, data) -> Attempt:
        self.calls += 1
        raise RuntimeError("boom in the transport")


class Refusing(Transport):
    """Every recipient refused for good (a DSN is due)."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, sender, recipients, data) -> Attempt:
        self.calls += 1
        return Attempt(codes=[(550, "5.1.1 no such user")] * len(recipients))


def fast_runtime(config, retry=(0.2, 0.2)):
    cfg = dataclasses.replace(config, relay=dataclasses.replace(
        config.relay, host="127.0.0.1", retry=retry, poll_interval=0.1, lease=30.0,
        warn_after=0.0))
    return build_runtime(cfg)


def run_sender(engine, rt, transport, until, limit=15.0):
    async def main() -> None:
        writer = BatchWriter(engine)
        s = Sender(lambda: rt, writer, transport=transport, node="node-a")
        await s.start()
        try:
            for _ in range(int(limit * 10)):
                if until():
                    break
                await asyncio.sleep(0.1)
        finally:
            await s.stop()
            writer.close()
    asyncio.run(main())


def rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()


def entries(engine, key):
    with engine.connect() as conn:
        return conn.execute(select(CommEntry.priority, CommEntry.value)
                            .where(CommEntry.key == key)).all()


class TestCrashedAttempts:
    def test_a_transport_crash_counts_and_ends_in_a_dsn(self, ob_engine, config):
        """Each crash is a temporary failure that counts, with its reason as the error;
        after the schedule the message fails with a DSN to the submitter."""
        rt = fast_runtime(config)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Crashing()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued")
        first = rows(ob_engine)[0]
        assert (first.status, first.attempts) == ("failed", 3)
        assert "RuntimeError: boom in the transport" in first.last_error
        assert [r.kind for r in rows(ob_engine)] == ["message", "dsn"]

    def test_a_crash_while_recording_settles_the_message(self, ob_engine, config,
                                                          monkeypatch):
        """A crash building the DSN of a refused message does not keep the outcome
        unrecorded (retried for ever, the message leased for ever): the message is
        recorded failed, with an Error naming the crash, once."""
        def broken(**kw):
            raise ValueError("cannot build this DSN")

        monkeypatch.setattr(dsn, "build_dsn", broken)
        rt = fast_runtime(config)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Refusing()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued",
                   limit=10.0)
        (m,) = rows(ob_engine)
        assert (m.status, m.attempts, t.calls) == ("failed", 1, 1)
        assert m.lease_until is None
        (err,) = entries(ob_engine, "DSN")
        assert err.priority == "Error" and "ValueError: cannot build this DSN" in err.value
