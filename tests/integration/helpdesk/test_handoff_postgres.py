"""The outbox on PostgreSQL: two nodes claim concurrently, nothing twice, order per ticket."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select

from gateway.helpdesk import outbox
from gateway.store import repo
from gateway.store.db import migrate
from gateway.store.tables import Handoff

pytestmark = pytest.mark.postgres


def seed(url: str, tickets: int, per_ticket: int) -> list[int]:
    """`tickets` tickets with `per_ticket` hand-offs each (creation, then follow-ups),
    interleaved so every ticket's rows are spread over the whole outbox."""
    engine = create_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        ids = [repo.insert_ticket(conn, number=None, title=f"t{i}", queue="Raw", state="new",
                                  state_type="new", priority="3 normal", dynamic_fields={})
               for i in range(tickets)]
        for n in range(per_ticket):
            for tid in ids:
                aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                          sender_type="customer", subject=f"{tid}/{n}")
                outbox.enqueue(conn, ticket_id=tid, article_id=aid,
                               kind="create" if n == 0 else "followup", helpdesk="webhook",
                               decisions={})
    engine.dispose()
    return ids


class TestTwoNodes:
    def test_concurrent_claims_deliver_each_once_in_ticket_order(self, pg_url: str) -> None:
        """Two nodes claiming in parallel with FOR UPDATE SKIP LOCKED: every hand-off is
        delivered exactly once, and within a ticket strictly in outbox order."""
        seed(pg_url, tickets=8, per_ticket=5)
        delivered: list[tuple[str, int, int]] = []
        lock = threading.Lock()
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def node(name: str) -> None:
            engine = create_engine(pg_url)
            try:
                start.wait(30)
                idle = 0
                while idle < 20:
                    with engine.begin() as conn:
                        claimed = outbox.claim(conn, name, limit=3, lease=60)
                    if not claimed:
                        idle += 1
                        continue
                    idle = 0
                    for c in claimed:
                        with lock:
                            delivered.append((name, c.ticket_id, c.id))
                        with engine.begin() as conn:
                            outbox.record_delivered(conn, c, ticket_id=str(c.ticket_id),
                                                    ticket_number="")
            except BaseException as exc:
                errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=node, args=(f"node{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        ids = [hid for _, _, hid in delivered]
        assert len(ids) == 40 and len(set(ids)) == 40
        assert {name for name, _, _ in delivered} == {"node1", "node2"}
        by_ticket: dict[int, list[int]] = {}
        for _, tid, hid in delivered:
            by_ticket.setdefault(tid, []).append(hid)
        assert all(v == sorted(v) for v in by_ticket.values())

    def test_an_interrupted_attempt_is_taken_back_once_and_not_counted(self, pg_url: str
                                                                       ) -> None:
        """Two nodes find the lapsed claim of a dead one at the same moment: one takes it
        back (the other skips the locked row) without counting the attempt, and the
        row is due at once; the next claim sees a retry (the helpdesk may have it)."""
        seed(pg_url, tickets=1, per_ticket=1)
        engine = create_engine(pg_url)
        now = datetime.now(UTC)
        later = now + timedelta(seconds=6)
        try:
            with engine.begin() as conn:
                [first] = outbox.claim(conn, "dead#1", limit=10, lease=5, now=now)
                assert outbox.claim(conn, "other#1", limit=10, lease=5,
                                    now=later) == []       # not before it is taken back
            assert first.attempts == 0
            with engine.begin() as a, engine.begin() as b:
                lost_a = outbox.expire(a, schedule=(60.0,), now=later)
                lost_b = outbox.expire(b, schedule=(60.0,), now=later)
            assert (len(lost_a), lost_b) == (1, [])
            assert (lost_a[0].outcome.status, lost_a[0].again) == ("pending", False)
            with engine.begin() as conn:
                assert outbox.expire(conn, schedule=(60.0,), now=later) == []
                [again] = outbox.claim(conn, "b#1", limit=10, lease=5, now=later)
                r = conn.execute(select(Handoff)).one()
            assert (again.attempts, again.interrupted) == (0, True)
            assert (r.attempts, r.claimed_by, r.status) == (1, "b#1", "pending")
            assert "previous attempt was interrupted" in r.last_error
        finally:
            engine.dispose()

    def test_a_second_interruption_is_deferred_and_a_late_result_changes_nothing(
            self, pg_url: str) -> None:
        """The claim that took over dies too: the row is deferred without counting; the
        first dead claim's late delivery is not recorded over the row (superseded), nor
        its late failure."""
        seed(pg_url, tickets=1, per_ticket=1)
        engine = create_engine(pg_url)
        now = datetime.now(UTC)
        try:
            with engine.begin() as conn:
                [first] = outbox.claim(conn, "dead#1", limit=10, lease=5, now=now)
                outbox.expire(conn, schedule=(600.0,), now=now + timedelta(seconds=6))
                [second] = outbox.claim(conn, "dead#2", limit=10, lease=5,
                                        now=now + timedelta(seconds=6))
                late = outbox.record_delivered(conn, first, ticket_id="41",
                                               ticket_number="1041")
                assert late.status == "superseded"
            with engine.begin() as a, engine.begin() as b:
                lost_a = outbox.expire(a, schedule=(600.0,), now=now + timedelta(seconds=12))
                lost_b = outbox.expire(b, schedule=(600.0,), now=now + timedelta(seconds=12))
            assert (len(lost_a), lost_b) == (1, [])
            assert (lost_a[0].again, lost_a[0].outcome.status) == (True, "pending")
            with engine.begin() as conn:
                assert outbox.record_failure(conn, second, "HTTP 500", temporary=True,
                                             schedule=(1.0,)).status == "superseded"
                r = conn.execute(select(Handoff)).one()
            assert (r.status, r.attempts, r.claimed_by, r.lease_until) == \
                ("pending", 0, "", None)
            assert r.next_attempt > now + timedelta(seconds=500)
            assert "previous attempt was interrupted" in r.last_error
        finally:
            engine.dispose()


class TestAdminOnPostgres:
    def test_retry_starts_afresh_and_delete_wins_over_the_attempt(self, pg_url: str) -> None:
        """On PostgreSQL too: a retried failed row starts a fresh cycle with its earlier
        attempts kept, a row deleted during its attempt stays deleted and the attempt's
        answer is not recorded."""
        seed(pg_url, tickets=2, per_ticket=1)
        engine = create_engine(pg_url)
        try:
            with engine.begin() as conn:
                first, second = outbox.claim(conn, "n1", limit=2, lease=300)
                outbox.record_failure(conn, first, "HTTP 500", temporary=True, schedule=())
                assert outbox.retry_now(conn).retried == [first.id]
                assert outbox.retry_now(conn).in_delivery == [second.id]
                [again] = outbox.claim(conn, "n2", limit=5, lease=300)
                assert (again.id, again.attempts, again.earlier) == (first.id, 0, 1)
                gone = outbox.remove(conn, second.id)
                assert gone is not None and (gone.in_delivery, gone.claimed_by) == (True, "n1")
                assert outbox.record_delivered(conn, second, ticket_id="7",
                                               ticket_number="107").status == "deleted"
        finally:
            engine.dispose()
