"""The sender when an attempt crashes (an exception, not an SMTP reply): the crash is a
temporary failure that counts, and the message ends in a DSN, never in a loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import UTC, datetime

from sqlalchemy import select

from gateway.outbound import dsn
from gateway.outbound import queue as oq
from gateway.outbound import sender as sender_module
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


class Accepting(Transport):
    """Every recipient delivered."""

    def __init__(self) -> None:
        self.calls = 0
        self.to: list[list[str]] = []

    def deliver(self, sender, recipients, data) -> Attempt:
        self.calls += 1
        self.to.append(list(recipients))
        return Attempt(codes=[(250, "2.0.0 queued")] * len(recipients))


class Deferring(Transport):
    """Every recipient deferred (451)."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, sender, recipients, data) -> Attempt:
        self.calls += 1
        return Attempt(codes=[(451, "4.3.0 try later")] * len(recipients))


class Hanging(Transport):
    """A delivery that never comes back (until the test releases it): with the lease
    keeper stopped, the sender's process is as good as dead or hung."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def deliver(self, sender, recipients, data) -> Attempt:
        self.calls += 1
        self.release.wait(60)
        return Attempt(codes=[(250, "2.0.0 late")] * len(recipients))


def fast_runtime(config, retry=(0.2, 0.2), lease=30.0, concurrency=4):
    cfg = dataclasses.replace(config, relay=dataclasses.replace(
        config.relay, host="127.0.0.1", retry=retry, poll_interval=0.1, lease=lease,
        warn_after=0.0, concurrency=concurrency))
    return build_runtime(cfg)


def run_sender(engine, rt, transport, until, limit=15.0, before_stop=None):
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
            if before_stop is not None:
                before_stop()
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

    def test_a_file_error_while_recording_is_a_crash_not_the_databases(
            self, ob_engine, config, monkeypatch):
        """An OSError building the DSN (a signing passphrase file deskgate may not read)
        is no failure of the database: the outcome is written without the DSN at once,
        instead of being tried again every 30 s for as long as the process runs."""
        def unreadable(**kw):
            raise PermissionError(13, "Permission denied", "keys/gnupg/passphrase")

        monkeypatch.setattr(dsn, "build_dsn", unreadable)
        rt = fast_runtime(config)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Refusing()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued",
                   limit=10.0)
        (m,) = rows(ob_engine)
        assert (m.status, m.attempts, t.calls) == ("failed", 1, 1)
        (err,) = entries(ob_engine, "DSN")
        assert err.priority == "Error" and "PermissionError" in err.value


def claim_and_die(engine, node="dead-node", lease=0.3):
    """A node claims the message and never records an outcome (killed mid-delivery)."""
    with engine.begin() as conn:
        (m,) = oq.claim(conn, node, limit=1, lease=lease)
    return m


INTERRUPTED = "previous attempt was interrupted"


def claim_and_die_twice(engine):
    """Two attempts in a row end without an outcome: the second one took over the first's
    lost claim (delivering again at once) and was killed too."""
    with engine.begin() as conn:
        oq.claim(conn, "dead-1", limit=1, lease=0.01)
    import time

    time.sleep(0.05)
    with engine.begin() as conn:
        (m,) = oq.claim(conn, "dead-2", limit=1, lease=0.3)
    assert m.lost_by == "dead-1"
    return m


class TestLostAttempts:
    def test_an_interrupted_attempt_does_not_count_and_is_retried_at_once(self, ob_engine,
                                                                          config):
        """A claim whose lease ran out without an outcome is no failed attempt: the next
        sender delivers at once (not after the schedule's delay), the attempt count only
        holds the finished attempt, no Failed or Deferred entry, and a Warn Interrupted
        names the node."""
        rt = fast_runtime(config, retry=(60.0,), lease=0.3)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        claim_and_die(ob_engine)
        t = Accepting()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued",
                   limit=5.0)
        (m,) = rows(ob_engine)
        assert (m.status, m.attempts, t.calls, m.last_error) == ("sent", 1, 1, "")
        (lost,) = entries(ob_engine, "Interrupted")
        assert lost.priority == "Warn" and INTERRUPTED in lost.value
        assert "dead-node" in lost.value
        assert entries(ob_engine, "Deferred") == [] and entries(ob_engine, "Failed") == []
        assert entries(ob_engine, "Lost") == []

    def test_an_attempt_interrupted_again_is_deferred_without_counting(self, ob_engine,
                                                                      config):
        """When the attempt that took over a lost claim is interrupted too, the message is
        deferred (a message that kills every process is not taken again at once for
        ever), still without counting an attempt."""
        rt = fast_runtime(config, retry=(60.0, 60.0), lease=0.3)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        claim_and_die_twice(ob_engine)
        t = Accepting()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].lease_until is None,
                   limit=5.0)
        (m,) = rows(ob_engine)
        wait = (m.next_attempt.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        assert (m.status, m.attempts, t.calls) == ("queued", 0, 0)
        assert 50 <= wait <= 67 and m.claimed_by == "" and INTERRUPTED in m.last_error
        assert [e.priority for e in entries(ob_engine, "Interrupted")] == ["Warn"]
        assert entries(ob_engine, "Failed") == []

    def test_attempts_that_never_finish_end_in_a_dsn(self, ob_engine, config):
        """A message whose every delivery kills the process is not taken again for ever:
        once its time in the queue (the sum of relay.retry) has run out, the next
        interruption fails it with a DSN to the submitter; none counts as an attempt."""
        rt = fast_runtime(config, retry=(0.1, 0.1), lease=0.3)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        claim_and_die_twice(ob_engine)          # its lease runs out 0.35 s from now
        t = Accepting()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued",
                   limit=5.0)
        first = rows(ob_engine)[0]
        assert (first.status, first.attempts) == ("failed", 0)
        assert ["a@customer.test"] not in t.to          # only the DSN may have gone
        assert INTERRUPTED in first.last_error
        assert [r.kind for r in rows(ob_engine)] == ["message", "dsn"]
        assert [e.priority for e in entries(ob_engine, "Interrupted")] == ["Warn"]
        (failed,) = entries(ob_engine, "Failed")
        assert failed.priority == "Error" and INTERRUPTED in failed.value

    def test_a_sender_does_not_take_again_what_it_is_still_delivering(self, ob_engine,
                                                                      config, monkeypatch):
        """A delivery of this process that outlives its lease (the lease not renewed: the
        database was out of reach) is not taken and sent a second time by the same
        sender while it is under way; its late 250 is recorded."""
        async def no_renewals(self) -> None:
            return None

        monkeypatch.setattr(Sender, "_keep_leases", no_renewals)
        rt = fast_runtime(config, lease=0.3, concurrency=4)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Hanging()
        calls_while_hung: list[int] = []

        def release() -> None:
            calls_while_hung.append(t.calls)
            t.release.set()

        try:
            run_sender(ob_engine, rt, t, lambda: False, limit=1.5, before_stop=release)
        finally:
            t.release.set()
        (m,) = rows(ob_engine)
        assert calls_while_hung == [1]
        assert (m.status, m.attempts, t.calls) == ("sent", 1, 1)


class TestRecordingCrashes:
    def test_recording_that_always_crashes_still_ends_the_message(self, ob_engine, config,
                                                                   monkeypatch):
        """When writing the outcome crashes, and so does the write without DSNs, the
        attempt still counts: the schedule ends the message instead of a new try every
        relay.lease for ever."""
        def broken(conn, comm):
            raise ValueError("the log refuses this")

        monkeypatch.setattr(sender_module, "write_comm", broken)
        rt = fast_runtime(config, lease=0.5)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Deferring()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued")
        (m,) = rows(ob_engine)
        assert (m.status, m.attempts, t.calls) == ("failed", 3, 3)
        assert m.lease_until is None

    def test_an_outcome_never_written_is_delivered_again_when_its_lease_runs_out(
            self, ob_engine, config, monkeypatch):
        """No write of the first attempt's outcome succeeds: the message is left to its
        lease, and when that runs out it is delivered again (at least once), the
        interrupted attempt not counted."""
        real = oq.record_attempt
        first: list[oq.Claimed] = []

        def first_fails(conn, msg, *a, **kw):
            first[:] = first or [msg]
            if msg is first[0]:                 # every write of attempt 1
                raise ValueError("cannot write this outcome")
            return real(conn, msg, *a, **kw)

        monkeypatch.setattr(oq, "record_attempt", first_fails)
        rt = fast_runtime(config, lease=0.5)
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        t = Accepting()
        run_sender(ob_engine, rt, t, lambda: rows(ob_engine)[0].status != "queued")
        (m,) = rows(ob_engine)
        assert (m.status, m.attempts, t.calls) == ("sent", 1, 2)
        (lost,) = entries(ob_engine, "Interrupted")
        assert INTERRUPTED in lost.value
