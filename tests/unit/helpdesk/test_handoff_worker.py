"""The hand-off worker on SQLite with the webhook connector at a scripted local server:
what it records when a row cannot be handed to the connector at all."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, text, update

from gateway import metrics
from gateway.config import load_config
from gateway.helpdesk import outbox
from gateway.helpdesk.base import Delivered, HandoffError
from gateway.helpdesk.recording import record
from gateway.helpdesk.worker import HandoffWorker, make_connector
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import (
    Article,
    CommEntry,
    CommObject,
    Communication,
    Handoff,
    Ticket,
)
from gateway.store.writer import BatchWriter
from tests.unit.helpdesk.fakehttp import FakeHttp, fake_http


@dataclass
class Setup:
    engine: Engine
    rt: Runtime
    server: FakeHttp


@pytest.fixture
def setup(make_confdir: Callable[..., Path], tmp_path: Path) -> Iterator[Setup]:
    """A migrated store, and a config handing off to a webhook at the fake server that
    retries after an hour (so a deferred row stays deferred during a test)."""
    with fake_http() as server:
        server.on("POST", "/hook", (200, {}, {"ticket_id": "41", "ticket_number": "1041"}))
        conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "webhook"
            url = "{server.url}/hook"
            secret_file = "sec"
            retry = "1h, 1h"
            poll_interval = "0.1s"
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


def seed(engine: Engine, subject: str, **ticket: Any) -> tuple[int, int]:
    """A new ticket with one article and its hand-off row: (row id, article id)."""
    with engine.begin() as conn:
        tid = repo.insert_ticket(conn, **{
            "number": None, "title": subject, "queue": "Raw", "state": "new",
            "state_type": "new", "priority": "3 normal", "dynamic_fields": {}, **ticket})
        aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                  sender_type="customer", subject=subject,
                                  from_addr="alice@customer.test",
                                  from_email="alice@customer.test")
        hid = outbox.enqueue(conn, ticket_id=tid, article_id=aid, kind="create",
                             helpdesk="webhook", decisions={})
    return hid, aid


def row(engine: Engine, hid: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Handoff).where(Handoff.id == hid)).one()


def entries(engine: Engine, article_id: int) -> list[tuple[str, str, str]]:
    """(priority, key, value) of the Handoff communications about an article."""
    with engine.connect() as conn:
        comms = select(CommObject.communication_id).join(
            Communication, Communication.id == CommObject.communication_id).where(
            Communication.account_type == "Handoff", CommObject.article_id == article_id)
        return [(e.priority, e.key, e.value) for e in conn.execute(
            select(CommEntry).where(CommEntry.communication_id.in_(comms))
            .order_by(CommEntry.id)).all()]


def handoffs_total(result: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "deskgate_handoffs_total", {"result": result}) or 0.0


async def wait(done: Callable[[], bool], within: float = 10) -> None:
    """Poll `done()` (it reads the database) until it holds or `within` seconds pass."""
    for _ in range(int(within / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(s: Setup) -> AsyncIterator[HandoffWorker]:
    """The hand-off worker of `s` with its own writer, stopped on exit."""
    writer = BatchWriter(s.engine)
    writer.start()
    worker = HandoffWorker(lambda: s.rt, writer, s.engine, connector=make_connector(s.rt.config),
                           node="n1")
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        writer.close()


async def run_worker(s: Setup, done: Callable[[], bool]) -> None:
    """Run the worker until `done()` holds (10 s at most), then stop it."""
    async with running(s):
        await wait(done)


class TestRowThatCannotBeBuilt:
    """A row whose stored data makes building its hand-off raise (here a ticket whose
    dynamic fields are a list) is one failed attempt, not a stall of the whole claim."""

    async def test_the_other_rows_of_the_claim_are_delivered(self, setup: Setup) -> None:
        """The rows claimed with it reach the helpdesk; it is not sent, and not claimed
        again and again: one attempt, the error kept, the next one on the schedule."""
        bad, _ = seed(setup.engine, "bad", dynamic_fields=["legacy"])
        good, _ = seed(setup.engine, "good")
        await run_worker(setup, lambda: row(setup.engine, good).status == "delivered")
        assert row(setup.engine, good).status == "delivered"
        assert len([r for r in setup.server.requests if r.method == "POST"]) == 1
        r = row(setup.engine, bad)
        assert (r.status, r.attempts, r.lease_until) == ("pending", 1, None)
        assert "AttributeError" in r.last_error
        assert r.next_attempt.replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(minutes=50)

    async def test_it_is_logged_as_an_error_and_counted(self, setup: Setup) -> None:
        """The communication log has an Error entry on the article saying why, and
        deskgate_handoffs_total counts the attempt as deferred."""
        bad, article = seed(setup.engine, "bad", dynamic_fields=["legacy"])
        before = handoffs_total("deferred")
        await run_worker(setup, lambda: row(setup.engine, bad).attempts == 1
                         and row(setup.engine, bad).lease_until is None)
        logged = entries(setup.engine, article)
        assert any(p == "Error" and "AttributeError" in v for p, _, v in logged), logged
        assert any(k == "Deferred" for _, k, _ in logged), logged
        assert handoffs_total("deferred") == before + 1

    async def test_a_row_that_cannot_be_read_does_not_hold_back_the_others(
            self, setup: Setup) -> None:
        """A ticket whose stored JSON does not decode fails the read of the whole claim:
        the rows are read again one by one, the others are delivered and it is deferred."""
        bad, _ = seed(setup.engine, "bad")
        good, _ = seed(setup.engine, "good")
        with setup.engine.begin() as conn:
            conn.execute(text("UPDATE ticket SET dynamic_fields = '{not json' WHERE id = "
                              "(SELECT ticket_id FROM handoff WHERE id = :h)"), {"h": bad})
        await run_worker(setup, lambda: row(setup.engine, good).status == "delivered"
                         and row(setup.engine, bad).lease_until is None)
        assert row(setup.engine, good).status == "delivered"
        r = row(setup.engine, bad)
        assert (r.status, r.attempts) == ("pending", 1)
        assert "reading the stored ticket or article failed" in r.last_error

    async def test_it_does_not_make_the_helpdesk_look_down(self, setup: Setup) -> None:
        """Rows that never reached the helpdesk say nothing about it: after several of
        them a new row is delivered at once, not after a probe back-off."""
        bad = [seed(setup.engine, f"bad {n}", dynamic_fields=["legacy"])[0] for n in range(4)]
        async with running(setup) as worker:
            await wait(lambda: all(row(setup.engine, h).attempts == 1
                                   and row(setup.engine, h).lease_until is None for h in bad))
            good, _ = seed(setup.engine, "good")
            worker.poke()
            await wait(lambda: row(setup.engine, good).status == "delivered", 5)
        assert row(setup.engine, good).status == "delivered"


class TestRowWhoseArticleIsGone:
    async def test_it_fails_with_a_log_entry_and_a_count(self, setup: Setup) -> None:
        """An article deleted before its hand-off: the row fails at once, with an Error in
        the communication log and deskgate_handoffs_total{result="failed"} counted."""
        hid, article = seed(setup.engine, "gone")
        with setup.engine.begin() as conn:
            conn.execute(delete(Article).where(Article.id == article))
        before = handoffs_total("failed")
        await run_worker(setup, lambda: row(setup.engine, hid).status == "failed")
        assert row(setup.engine, hid).status == "failed"
        assert "no longer exists" in row(setup.engine, hid).last_error
        logged = entries(setup.engine, article)
        assert any(p == "Error" and "no longer exists" in v for p, _, v in logged), logged
        assert handoffs_total("failed") == before + 1
        assert setup.server.requests == []


class TestDeletedWhileHandedOff:
    """`deskgate handoff delete` on a row whose attempt is under way: the delete wins and
    the attempt's result is logged, not written back."""

    @staticmethod
    async def delete_during_attempt(s: Setup, answer: tuple[int, dict[str, str], Any]
                                    ) -> tuple[int, int]:
        arrived, release = threading.Event(), threading.Event()

        def slow(_r: Any) -> tuple[int, dict[str, str], Any]:
            arrived.set()
            release.wait(10)
            return answer

        s.server.on("POST", "/hook", slow)
        hid, article = seed(s.engine, "deleted")
        async with running(s):
            await wait(arrived.is_set)
            with s.engine.begin() as conn:
                gone = outbox.remove(conn, hid)
            assert gone is not None and gone.in_delivery
            release.set()
            await wait(lambda: any(k == "Deleted" for _, k, _ in entries(s.engine, article)))
        return hid, article

    async def test_a_delivery_is_not_written_back(self, setup: Setup) -> None:
        """The helpdesk's ticket is not recorded on deskgate's ticket, the row stays gone,
        and the log says what the helpdesk answered and that it was not recorded."""
        before = handoffs_total("deleted")
        hid, article = await self.delete_during_attempt(
            setup, (200, {}, {"ticket_id": "41", "ticket_number": "1041"}))
        with setup.engine.connect() as conn:
            assert outbox.show(conn, hid) is None
            t = conn.execute(select(Ticket).join(Article, Article.ticket_id == Ticket.id)
                             .where(Article.id == article)).one()
        assert t.number is None and not t.helpdesk_ticket_id
        logged = entries(setup.engine, article)
        assert not any(k == "Delivered" for _, k, _ in logged), logged
        assert any(k == "Deleted" and "1041" in v and "not recorded" in v
                   for _, k, v in logged), logged
        assert handoffs_total("deleted") == before + 1

    async def test_a_failure_is_not_called_superseded(self, setup: Setup) -> None:
        """A failed attempt of the deleted row is logged as such, not as an attempt
        another node took over."""
        _, article = await self.delete_during_attempt(setup, (500, {}, "down"))
        logged = entries(setup.engine, article)
        assert not any(k in ("Superseded", "Deferred") for _, k, _ in logged), logged
        assert any(k == "Deleted" and "HTTP 500" in v for _, k, v in logged), logged


class TestRetriedByHand:
    async def test_the_helpdesk_is_told_it_is_a_retry(self, setup: Setup) -> None:
        """After `handoff retry` of a failed row the webhook document counts every
        attempt so far (the fresh cycle does not make it look like a first try)."""
        hid, _ = seed(setup.engine, "failed before")
        with setup.engine.begin() as conn:
            for _ in range(2):
                [c] = outbox.claim(conn, "n0", limit=5, lease=300,
                                   now=datetime.now(UTC) + timedelta(hours=3))
                outbox.record_failure(conn, c, "HTTP 500", temporary=True, schedule=(1.0,))
            assert outbox.retry_now(conn, hid).retried == [hid]
        await run_worker(setup, lambda: row(setup.engine, hid).status == "delivered")
        [req] = [r for r in setup.server.requests if r.method == "POST"]
        assert req.json["attempt"] == 3
        assert (row(setup.engine, hid).status, row(setup.engine, hid).attempts) == \
            ("delivered", 1)


def died(engine: Engine, hid: int, *, failures: int = 0, ago: float = 2.0,
         queued: float = 60.0) -> None:
    """`failures` attempts of row `hid` failed with HTTP 500, then one was claimed by a
    node that died (SIGKILL, the OOM killer) and recorded nothing: its 1 s lease ran out
    `ago` - 1 seconds ago. The row was queued `queued` seconds (plus an hour per
    failure) before that claim."""
    dead_at = datetime.now(UTC) - timedelta(seconds=ago)
    with engine.begin() as conn:
        at_first = dead_at - timedelta(hours=failures, seconds=queued)
        conn.execute(update(Handoff).where(Handoff.id == hid)
                     .values(created=at_first, cycle_started=at_first,
                             next_attempt=at_first))
        for n in range(failures, 0, -1):
            at = dead_at - timedelta(hours=n)
            [c] = outbox.claim(conn, "n0#1", limit=5, lease=300, now=at)
            outbox.record_failure(conn, c, "HTTP 500", temporary=True, schedule=(1.0,) * 9,
                                  now=at)
        [c] = outbox.claim(conn, "dead#1", limit=5, lease=1, now=dead_at)
    assert c.id == hid


def died_twice(engine: Engine, hid: int, *, queued: float = 60.0) -> None:
    """Two attempts in a row ended without an outcome: the first node died, another
    took its lapsed claim over (handing it off again at once) and died too; the
    second one's 1 s lease ran out a second ago."""
    now = datetime.now(UTC)
    died(engine, hid, ago=10.0, queued=queued)
    with engine.begin() as conn:
        [lost] = outbox.expire(conn, schedule=(3600.0,), now=now - timedelta(seconds=5))
        assert not lost.again
        [c] = outbox.claim(conn, "dead-2#1", limit=5, lease=1,
                           now=now - timedelta(seconds=2))
    assert c.id == hid


def interrupted_total() -> float:
    return handoffs_total("interrupted")


class TestAttemptThatDidNotFinish:
    """An attempt whose process died (SIGKILL, the OOM killer, a crash in a library) or
    hung past its lease records no outcome of its own. As with the outbound queue it
    is no failed attempt: the next worker logs it and hands the row off again at once;
    only when that attempt is interrupted too is the row deferred, by its time in the
    outbox, and it fails once that time exceeds the sum of [helpdesk] retry."""

    async def test_it_is_retried_at_once_without_counting(self, setup: Setup) -> None:
        """The row is handed off again at once (not after the schedule's hour): its
        attempts hold only the finished attempt, the communication log has a Warn
        Interrupted naming the dead node and no Deferred or Failed entry, and
        deskgate_handoffs_total counts it as interrupted."""
        hid, article = seed(setup.engine, "lost")
        died(setup.engine, hid)
        before, deferred = interrupted_total(), handoffs_total("deferred")
        await run_worker(setup, lambda: row(setup.engine, hid).status == "delivered")
        r = row(setup.engine, hid)
        assert (r.status, r.attempts, r.last_error) == ("delivered", 1, "")
        assert len([q for q in setup.server.requests if q.method == "POST"]) == 1
        logged = entries(setup.engine, article)
        [warn] = [(p, v) for p, k, v in logged if k == "Interrupted"]
        assert warn[0] == "Warn" and "dead#1" in warn[1]
        assert "previous attempt was interrupted" in warn[1]
        assert not any(k in ("Deferred", "Failed") for _, k, _ in logged), logged
        assert interrupted_total() == before + 1
        assert handoffs_total("deferred") == deferred

    async def test_it_keeps_the_attempts_of_earlier_failures(self, setup: Setup) -> None:
        """retry = "1h, 1h" allows three attempts: after two failures the attempt that
        died is not the third, so the row is handed off once more and delivered."""
        hid, _ = seed(setup.engine, "lost after two failures")
        died(setup.engine, hid, failures=2)
        await run_worker(setup, lambda: row(setup.engine, hid).status == "delivered")
        r = row(setup.engine, hid)
        assert (r.status, r.attempts) == ("delivered", 3)
        [req] = [q for q in setup.server.requests if q.method == "POST"]
        assert req.json["attempt"] == 4          # the interrupted one may have got through

    async def test_a_second_interruption_is_deferred_without_counting(
            self, setup: Setup) -> None:
        """When the attempt that took over is interrupted too, the row is not handed off
        again at once: it waits for the retry delay its time in the outbox has reached
        (1h), no attempt counted, with a second Warn Interrupted."""
        hid, article = seed(setup.engine, "lost twice")
        died_twice(setup.engine, hid)
        before = interrupted_total()
        await run_worker(setup, lambda: row(setup.engine, hid).claimed_by == "")
        r = row(setup.engine, hid)
        assert (r.status, r.attempts, r.lease_until) == ("pending", 0, None)
        assert "previous attempt was interrupted" in r.last_error and "dead-2" in r.last_error
        wait_s = (r.next_attempt.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        assert 3000 < wait_s < 4000
        assert setup.server.requests == []
        logged = entries(setup.engine, article)
        assert [p for p, k, _ in logged if k == "Interrupted"] == ["Warn"]
        assert not any(k in ("Deferred", "Failed") for _, k, _ in logged), logged
        assert interrupted_total() == before + 1

    async def test_interruptions_past_the_schedule_fail_the_row(self, setup: Setup) -> None:
        """A row whose attempts kill every process is not tried for ever: once its time
        in the outbox exceeds the sum of retry (2h), a second interruption in a row
        fails it, with an Error in the communication log, none counted."""
        hid, article = seed(setup.engine, "lost twice, long queued")
        died_twice(setup.engine, hid, queued=3 * 3600)
        before = handoffs_total("failed")
        await run_worker(setup, lambda: row(setup.engine, hid).status == "failed")
        r = row(setup.engine, hid)
        assert (r.status, r.attempts, r.claimed_by) == ("failed", 0, "")
        assert "previous attempt was interrupted" in r.last_error
        assert setup.server.requests == []
        logged = entries(setup.engine, article)
        assert any(p == "Error" and k == "Failed" and "interrupted" in v
                   for p, k, v in logged), logged
        assert handoffs_total("failed") == before + 1

    async def test_the_next_attempt_is_a_retry(self, setup: Setup) -> None:
        """The row is tried again, and the helpdesk is told it is the second attempt
        (the interrupted one may have got through); only the finished one counts."""
        hid, _ = seed(setup.engine, "lost long ago")
        died(setup.engine, hid, ago=3 * 3600)
        await run_worker(setup, lambda: row(setup.engine, hid).status == "delivered")
        [req] = [r for r in setup.server.requests if r.method == "POST"]
        assert req.json["attempt"] == 2
        assert (row(setup.engine, hid).status, row(setup.engine, hid).attempts) == \
            ("delivered", 1)

    async def test_otobo_rest_finds_the_ticket_the_lost_attempt_created(
            self, setup: Setup, make_confdir: Callable[..., Path], tmp_path: Path) -> None:
        """The attempt that died may have created the ticket: the next one looks for it
        (TicketSearch, the history's marker) and does not create a second one."""
        conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "otobo-rest"
            url = "{setup.server.url}/ws"
            user = "deskgate"
            password_file = "sec"
            retry = "1h, 1h"
            poll_interval = "0.1s"
            """)}, root=tmp_path / "otobo")
        (conf.parent / "sec").write_text("s3cret\n")
        (conf.parent / "sec").chmod(0o600)
        rt = build_runtime(load_config(conf))
        hid, _ = seed(setup.engine, "lost after TicketCreate")
        key = row(setup.engine, hid).key
        s = setup.server
        s.on("POST", "/ws/Session", (200, {}, {"SessionID": "sid"}))
        s.on("GET", "/ws/Ticket", (200, {}, {"TicketID": ["7"]}))
        s.on("GET", "/ws/TicketHistory/7", (200, {}, {"TicketHistory": [
            {"TicketID": "7", "History": [{"Name": f"created by deskgate {key}"}]}]}))
        s.on("GET", "/ws/Ticket/7", (200, {}, {"Ticket": [
            {"TicketID": "7", "TicketNumber": "2026120310000071"}]}))
        s.on("POST", "/ws/Ticket", (200, {}, {"TicketID": "8", "TicketNumber": "2"}))
        died(setup.engine, hid, ago=3 * 3600)
        await run_worker(Setup(setup.engine, rt, s),
                         lambda: row(setup.engine, hid).status == "delivered")
        assert row(setup.engine, hid).status == "delivered"
        assert ("GET", "/ws/TicketHistory/7") in [(r.method, r.path) for r in s.requests]
        assert ("POST", "/ws/Ticket") not in [(r.method, r.path) for r in s.requests]
        with setup.engine.connect() as conn:
            t = conn.execute(select(Ticket).join(Handoff, Handoff.ticket_id == Ticket.id)
                             .where(Handoff.id == hid)).one()
        assert (t.helpdesk_ticket_id, t.helpdesk_ticket_number) == ("7", "2026120310000071")


class TestClaimTakenOver:
    """Each claim has a name of its own (node and number): an attempt whose claim
    another node took over neither hands the row off nor records its result."""

    async def test_a_row_taken_while_waiting_for_a_thread_is_not_sent(
            self, setup: Setup) -> None:
        """Two rows, one connector thread: the first is held at the helpdesk while
        another node takes the second over (this node's lease had run out); when the
        thread is free the claim is checked first and the second is not sent, and the
        other node's claim is left as it is."""
        arrived, release = threading.Event(), threading.Event()

        def slow(_r: Any) -> tuple[int, dict[str, str], Any]:
            arrived.set()
            release.wait(10)
            return (200, {}, {"ticket_id": "41", "ticket_number": "1041"})

        setup.server.on("POST", "/hook", slow)
        async with running(setup) as worker:
            worker.pool.shutdown(wait=False)
            worker.pool = ThreadPoolExecutor(max_workers=1)
            first, _ = seed(setup.engine, "first")
            second, article = seed(setup.engine, "second")
            worker.poke()
            await wait(lambda: arrived.is_set()
                       and row(setup.engine, second).claimed_by.startswith("n1#"))
            assert arrived.is_set()
            until = datetime.now(UTC) + timedelta(minutes=10)
            with setup.engine.begin() as conn:
                conn.execute(update(Handoff).where(Handoff.id == second)
                             .values(claimed_by="n2#1", lease_until=until))
            release.set()
            await wait(lambda: row(setup.engine, first).status == "delivered")
            await asyncio.sleep(0.5)
        assert row(setup.engine, first).status == "delivered"
        assert len([q for q in setup.server.requests if q.method == "POST"]) == 1
        r = row(setup.engine, second)
        assert (r.status, r.claimed_by) == ("pending", "n2#1")
        assert r.lease_until.replace(tzinfo=UTC) == until
        assert entries(setup.engine, article) == []

    def test_a_late_delivery_is_not_recorded_over_the_new_claim(self, setup: Setup
                                                                ) -> None:
        """The hung attempt whose claim was taken over gets the helpdesk's answer after
        all: it is logged as Superseded and not recorded; the new claim's own answer
        is."""
        hid, article = seed(setup.engine, "late")
        connector = make_connector(setup.rt.config)
        now = datetime.now(UTC)
        with setup.engine.begin() as conn:
            [old] = outbox.claim(conn, "n1#1", limit=5, lease=1, now=now)
            outbox.expire(conn, schedule=(3600.0,), now=now + timedelta(seconds=5))
            [new] = outbox.claim(conn, "n2#1", limit=5, lease=300,
                                 now=now + timedelta(seconds=5))
            late = record(conn, setup.rt, connector, old,
                          Delivered(ticket_id="41", ticket_number="1041"), None, 9.0)
        r = row(setup.engine, hid)
        assert late.status == "superseded"
        assert (r.status, r.claimed_by, r.attempts) == ("pending", "n2#1", 1)
        with setup.engine.connect() as conn:
            t = conn.execute(select(Ticket).where(Ticket.id == r.ticket_id)).one()
        assert not t.helpdesk_ticket_id and t.number is None
        logged = entries(setup.engine, article)
        assert any(p == "Warn" and k == "Superseded" and "1041" in v
                   for p, k, v in logged), logged
        assert not any(k == "Delivered" for _, k, _ in logged), logged
        with setup.engine.begin() as conn:
            mine = record(conn, setup.rt, connector, new,
                          Delivered(ticket_id="42", ticket_number="1042"), None, 0.1)
        assert mine.status == "delivered"
        assert (row(setup.engine, hid).status, row(setup.engine, hid).attempts) == \
            ("delivered", 1)

    def test_a_late_delivery_after_the_new_claim_delivered_changes_nothing(
            self, setup: Setup) -> None:
        """The new claim delivered first: the old one's late answer does not overwrite
        the helpdesk ticket or the attempts it recorded."""
        hid, _ = seed(setup.engine, "late after delivery")
        connector = make_connector(setup.rt.config)
        now = datetime.now(UTC)
        with setup.engine.begin() as conn:
            [old] = outbox.claim(conn, "n1#1", limit=5, lease=1, now=now)
            outbox.expire(conn, schedule=(3600.0,), now=now + timedelta(seconds=5))
            [new] = outbox.claim(conn, "n2#1", limit=5, lease=300,
                                 now=now + timedelta(seconds=5))
            record(conn, setup.rt, connector, new,
                   Delivered(ticket_id="42", ticket_number="1042"), None, 0.1)
            late = record(conn, setup.rt, connector, old,
                          Delivered(ticket_id="41", ticket_number="1041"), None, 9.0)
            t = conn.execute(select(Ticket).join(Handoff, Handoff.ticket_id == Ticket.id)
                             .where(Handoff.id == hid)).one()
        assert late.status == "superseded"
        assert (t.helpdesk_ticket_id, t.helpdesk_ticket_number) == ("42", "1042")
        assert row(setup.engine, hid).attempts == 1

    def test_a_late_failure_does_not_free_the_new_claim(self, setup: Setup) -> None:
        """The old claim's late failure is Superseded: the row stays with the new claim,
        its attempts unchanged."""
        hid, _ = seed(setup.engine, "late failure")
        connector = make_connector(setup.rt.config)
        now = datetime.now(UTC)
        with setup.engine.begin() as conn:
            [old] = outbox.claim(conn, "n1#1", limit=5, lease=1, now=now)
            outbox.expire(conn, schedule=(3600.0,), now=now + timedelta(seconds=5))
            outbox.claim(conn, "n2#1", limit=5, lease=300,
                                 now=now + timedelta(seconds=5))
            late = record(conn, setup.rt, connector, old, None,
                          HandoffError("HTTP 500"), 9.0)
        r = row(setup.engine, hid)
        assert late.status == "superseded"
        assert (r.status, r.claimed_by, r.attempts) == ("pending", "n2#1", 1)
