"""The hand-off outbox on SQLite: when the worker has to look again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from gateway.helpdesk import outbox
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import CommEntry, CommObject, Handoff, Ticket


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'hd.db'}")
    migrate(e)
    yield e
    e.dispose()


def seed(engine: Engine, kinds: tuple[str, ...]) -> list[int]:
    """One ticket with one hand-off row per kind (in order)."""
    with engine.begin() as conn:
        tid = repo.insert_ticket(conn, number=None, title="t", queue="Raw", state="new",
                                 state_type="new", priority="3 normal", dynamic_fields={})
        rows = []
        for n, kind in enumerate(kinds):
            aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                      sender_type="customer", subject=f"{n}")
            rows.append(outbox.enqueue(conn, ticket_id=tid, article_id=aid, kind=kind,
                                       helpdesk="webhook", decisions={}))
    return rows


class TestNextDue:
    def test_a_row_in_delivery_is_due_when_its_lease_ends(self, engine: Engine) -> None:
        """A claimed row is next due when its lease runs out, not at its past next
        attempt: the worker polled every 50 ms while a hand-off was under way."""
        seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            assert len(outbox.claim(conn, "n1", limit=5, lease=300, now=now)) == 1
            due = outbox.next_due(conn)
        assert due is not None and due >= now + timedelta(seconds=299)

    def test_a_row_held_back_by_a_failed_one_is_not_due(self, engine: Engine) -> None:
        """A follow-up behind a failed creation waits for `handoff retry`/`delete`, not
        for the clock: the worker polled every 50 ms for as long as it stayed failed."""
        seed(engine, ("create", "followup"))
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            outbox.record_failure(conn, c, "TicketCreate: invalid queue", temporary=False,
                                  schedule=())
            assert outbox.claim(conn, "n1", limit=5, lease=300) == []
            assert outbox.next_due(conn) is None


class TestStaleAttempt:
    def test_a_late_failure_does_not_undo_another_nodes_delivery(self, engine: Engine
                                                                 ) -> None:
        """An attempt whose lease ran out and whose row another node then delivered
        records its failure without making the row pending (and sent) again."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            [stale] = outbox.claim(conn, "n1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=10))
            [other] = outbox.claim(conn, "n2", limit=5, lease=5,
                                   now=now + timedelta(seconds=10))
            outbox.record_delivered(conn, other, ticket_id="41", ticket_number="1041")
            out = outbox.record_failure(conn, stale, "timed out", temporary=True,
                                        schedule=(60.0,))
            assert out.status == "superseded"
            assert outbox.claim(conn, "n3", limit=5, lease=5,
                                now=now + timedelta(hours=2)) == []
            assert outbox.show(conn, hid)["status"] == "delivered"  # type: ignore[index]

    def test_a_late_failure_leaves_the_lease_of_the_node_now_trying(self, engine: Engine
                                                                    ) -> None:
        """A stale failure leaves the row to the node that holds it now: no third node
        can claim it while that node's attempt runs."""
        seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            [stale] = outbox.claim(conn, "n1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=10))
            assert outbox.claim(conn, "n2", limit=5, lease=300,
                                now=now + timedelta(seconds=10))
            outbox.record_failure(conn, stale, "timed out", temporary=True, schedule=(0.0,))
            assert outbox.claim(conn, "n3", limit=5, lease=5,
                                now=now + timedelta(seconds=20)) == []


class TestDeletedDuringAttempt:
    """`deskgate handoff delete` wins over an attempt under way (as `postsuper -d` on
    Postfix's active queue): the attempt's result is not written back."""

    def test_the_delete_reports_the_attempt_under_way(self, engine: Engine) -> None:
        """Deleting a row a node has claimed says which node was handing it off."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            outbox.claim(conn, "n1", limit=5, lease=300)
            gone = outbox.remove(conn, hid)
        assert gone is not None
        assert (gone.id, gone.status, gone.in_delivery, gone.claimed_by) == \
            (hid, "pending", True, "n1")

    def test_a_delete_of_a_row_at_rest_names_no_attempt(self, engine: Engine) -> None:
        """A row nobody is handing off is deleted without an attempt to speak of."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            gone = outbox.remove(conn, hid)
        assert gone is not None and not gone.in_delivery and gone.claimed_by == ""

    def test_a_delivery_after_the_delete_writes_nothing_back(self, engine: Engine) -> None:
        """The helpdesk's answer to an attempt whose row was deleted meanwhile is not
        recorded: the row stays gone and the ticket takes no helpdesk id or number."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            assert outbox.remove(conn, hid) is not None
            out = outbox.record_delivered(conn, c, ticket_id="41", ticket_number="1041")
            assert out.status == "deleted"
            assert outbox.show(conn, hid) is None
            t = conn.execute(select(Ticket).where(Ticket.id == c.ticket_id)).one()
        assert t.number is None
        assert not t.helpdesk_ticket_id and not t.helpdesk_ticket_number

    def test_a_failure_after_the_delete_is_reported_as_deleted(self, engine: Engine) -> None:
        """A failed attempt of a deleted row is 'deleted', not taken for another
        attempt's delivery ('superseded')."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            assert outbox.remove(conn, hid) is not None
            out = outbox.record_failure(conn, c, "HTTP 500", temporary=True, schedule=(60.0,))
        assert out.status == "deleted"

    def test_a_row_that_reuses_the_id_is_left_alone(self, engine: Engine) -> None:
        """SQLite gives the id of a deleted last row to the next one: the late answer
        of the deleted row's attempt does not deliver the new row."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            assert outbox.remove(conn, hid) is not None
        [new] = seed(engine, ("create",))
        with engine.begin() as conn:
            assert outbox.record_delivered(conn, c, ticket_id="41",
                                           ticket_number="1041").status == "deleted"
            assert outbox.record_failure(conn, c, "HTTP 500", temporary=False,
                                         schedule=()).status == "deleted"
            shown = outbox.show(conn, new)
        assert shown is not None and shown["status"] == "pending"


class TestRetryByHand:
    """`deskgate handoff retry` starts a fresh cycle of attempts (as `postsuper -r`)."""

    @staticmethod
    def failed_row(engine: Engine) -> int:
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            assert outbox.record_failure(conn, c, "HTTP 500", temporary=True,
                                         schedule=()).status == "failed"
        return hid

    def test_a_retried_failed_row_gets_the_whole_schedule_again(self, engine: Engine
                                                                ) -> None:
        """One failure after the retry is deferred on the schedule's first step, not
        failed again at once for the attempts of the cycle before."""
        hid = self.failed_row(engine)
        with engine.begin() as conn:
            assert outbox.retry_now(conn, hid).retried == [hid]
            shown = outbox.show(conn, hid)
            assert shown is not None and (shown["status"], shown["attempts"]) == ("pending", 0)
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
            out = outbox.record_failure(conn, c, "HTTP 500", temporary=True,
                                        schedule=(60.0, 3600.0))
        assert out.status == "pending" and out.attempts == 1
        assert out.next_attempt is not None
        assert out.next_attempt < datetime.now(UTC) + timedelta(seconds=70)

    def test_the_attempt_after_a_retry_still_checks_the_helpdesk_first(
            self, engine: Engine) -> None:
        """The earlier attempts are kept apart: the claim after a retry knows the row
        was tried before (a REST connector then looks for the ticket an earlier attempt
        may have created)."""
        hid = self.failed_row(engine)
        with engine.begin() as conn:
            outbox.retry_now(conn, hid)
            [c] = outbox.claim(conn, "n1", limit=5, lease=300)
        assert (c.attempts, c.earlier) == (0, 1)

    def test_the_reset_is_in_the_communication_log(self, engine: Engine) -> None:
        """A Retry entry on the article says what the row had and that it starts
        afresh."""
        hid = self.failed_row(engine)
        with engine.begin() as conn:
            outbox.retry_now(conn, hid)
            aid = conn.execute(select(Handoff.article_id).where(Handoff.id == hid)).scalar()
            logged = [(e.key, e.value) for e in conn.execute(
                select(CommEntry).join(CommObject, CommObject.id == CommEntry.object_id)
                .where(CommObject.article_id == aid)).all()]
        assert any(k == "Retry" and "failed" in v and "1 attempt" in v and "HTTP 500" in v
                   for k, v in logged), logged

    def test_interruptions_after_a_retry_count_its_time_from_the_retry(
            self, engine: Engine) -> None:
        """A row retried by hand days after it was created and then interrupted twice in
        a row waits for the retry delay reached since the retry, not failed at once for
        the days before it."""
        hid = self.failed_row(engine)
        then = datetime.now(UTC) + timedelta(days=3)
        with engine.begin() as conn:
            assert outbox.retry_now(conn, hid, now=then).retried == [hid]
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=then)
            outbox.expire(conn, schedule=(60.0, 600.0), now=then + timedelta(seconds=10))
            outbox.claim(conn, "dead#2", limit=5, lease=5, now=then + timedelta(seconds=10))
            later = then + timedelta(seconds=90)
            [lost] = outbox.expire(conn, schedule=(60.0, 600.0), now=later)
            shown = outbox.show(conn, hid)
        assert (lost.again, lost.outcome.status) == (True, "pending")
        assert shown is not None and shown["status"] == "pending"
        # 90 s since the retry: past the first step (60 s), so the second's 600 s ±10 %
        assert later + timedelta(seconds=530) < shown["next_attempt"] < \
            later + timedelta(seconds=670)

    def test_the_first_interruption_after_a_retry_is_retried_at_once(
            self, engine: Engine) -> None:
        """A row whose last attempt was interrupted, retried by hand: the next
        interruption is the first of the new cycle, handed off again at once (it was
        taken for the second in a row and waited for the retry schedule). last_error
        still tells what happened before the retry."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0, 600.0), now=now + timedelta(seconds=10))
            assert outbox.retry_now(conn, hid, now=now + timedelta(seconds=20)).retried == [hid]
            shown = outbox.show(conn, hid)
            assert shown is not None and INTERRUPTED in shown["last_error"]
            # `handoff show` tells when the current cycle began
            assert shown["cycle_started"] == now + timedelta(seconds=20)
            outbox.claim(conn, "dead#2", limit=5, lease=5, now=now + timedelta(seconds=20))
            later = now + timedelta(seconds=30)
            [lost] = outbox.expire(conn, schedule=(60.0, 600.0), now=later)
            shown = outbox.show(conn, hid)
        assert (lost.again, lost.outcome.status) == (False, "pending")
        assert shown is not None and shown["next_attempt"] <= later

    def test_a_row_being_handed_off_is_left_to_its_attempt(self, engine: Engine) -> None:
        """A row claimed by a live node is not reset under its attempt (whose record
        would count on the old attempts): it is reported as in delivery."""
        [hid] = seed(engine, ("create",))
        with engine.begin() as conn:
            outbox.claim(conn, "n1", limit=5, lease=300)
            res = outbox.retry_now(conn, hid)
            shown = outbox.show(conn, hid)
        assert (res.retried, res.in_delivery) == ([], [hid])
        assert shown is not None and (shown["attempts"], shown["claimed_by"]) == (1, "n1")


INTERRUPTED = "previous attempt was interrupted"


class TestAttemptThatDidNotFinish:
    """A claim whose lease ran out with no outcome (the node died or hung) is taken back
    by `expire` as an interrupted attempt: not counted, handed off again at once;
    deferred by its time in the outbox when the attempt before was interrupted too."""

    def test_a_lapsed_claim_is_retried_at_once_uncounted(self, engine: Engine) -> None:
        """After its lease the row is pending, due now, its attempt uncounted, the reason
        and the node in last_error; the claim after it is told the helpdesk may have
        it (interrupted) and counts one attempt."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=now)
            assert outbox.expire(conn, schedule=(60.0,),
                                 now=now + timedelta(seconds=4)) == []
            assert outbox.claim(conn, "n1#1", limit=5, lease=5,
                                now=now + timedelta(seconds=10)) == []  # not before expire
            [lost] = outbox.expire(conn, schedule=(60.0,),
                                   now=now + timedelta(seconds=10))
            shown = outbox.show(conn, hid)
            [again] = outbox.claim(conn, "n1#1", limit=5, lease=5,
                                   now=now + timedelta(seconds=10))
            after = outbox.show(conn, hid)
        assert (lost.claimed.id, lost.claimed.node, lost.outcome.status, lost.again) == \
            (hid, "dead#1", "pending", False)
        assert shown is not None
        assert (shown["status"], shown["attempts"], shown["claimed_by"]) == ("pending", 0, "")
        assert INTERRUPTED in shown["last_error"] and "dead#1" in shown["last_error"]
        assert shown["next_attempt"] <= now + timedelta(seconds=10)
        assert (again.attempts, again.interrupted) == (0, True)
        assert after is not None and after["attempts"] == 1

    def test_a_second_interruption_is_deferred_by_age_uncounted(self, engine: Engine
                                                               ) -> None:
        """The attempt that took over is interrupted too: the row waits for the retry
        delay its time in the outbox has reached, its attempts unchanged."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0, 600.0), now=now + timedelta(seconds=10))
            outbox.claim(conn, "dead#2", limit=5, lease=5, now=now + timedelta(seconds=10))
            later = now + timedelta(seconds=90)
            [lost] = outbox.expire(conn, schedule=(60.0, 600.0), now=later)
            shown = outbox.show(conn, hid)
        assert (lost.again, lost.outcome.status, lost.outcome.attempts) == \
            (True, "pending", 0)
        assert shown is not None and (shown["attempts"], shown["claimed_by"]) == (0, "")
        assert INTERRUPTED in shown["last_error"] and "dead#2" in shown["last_error"]
        # 90 s in the outbox: past the first step (60 s), so the second's 600 s ±10 %
        assert later + timedelta(seconds=530) < shown["next_attempt"] < \
            later + timedelta(seconds=670)

    def test_it_is_taken_back_once(self, engine: Engine) -> None:
        """Two nodes that both find the lapsed claim take it back once."""
        seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=now)
            later = now + timedelta(seconds=10)
            assert len(outbox.expire(conn, schedule=(60.0,), now=later)) == 1
            assert outbox.expire(conn, schedule=(60.0,), now=later) == []

    def test_past_the_schedule_a_second_interruption_fails_the_row(self, engine: Engine
                                                                  ) -> None:
        """Interrupted twice in a row after its time in the outbox exceeded the sum of
        the schedule: the row fails, no attempt counted."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "dead#1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=10))
            outbox.claim(conn, "dead#2", limit=5, lease=5, now=now + timedelta(seconds=10))
            [lost] = outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=70))
            shown = outbox.show(conn, hid)
        assert (lost.again, lost.outcome.status) == (True, "failed")
        assert shown is not None and (shown["status"], shown["attempts"]) == ("failed", 0)

    def test_the_rows_the_node_still_holds_are_left_to_it(self, engine: Engine) -> None:
        """A node whose renewal came late does not take back its own running claims;
        another node does."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "n1#1", limit=5, lease=5, now=now)
            assert outbox.expire(conn, schedule=(60.0,), held={hid: "n1#1"},
                                 now=now + timedelta(seconds=10)) == []
            assert len(outbox.expire(conn, schedule=(60.0,), held={hid: "n1#0"},
                                     now=now + timedelta(seconds=10))) == 1

    def test_a_late_failure_of_the_lost_attempt_changes_nothing(self, engine: Engine
                                                               ) -> None:
        """The hung attempt that fails after all is superseded: the row stays as the
        expiry left it."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1#1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=10))
            before = outbox.show(conn, hid)
            out = outbox.record_failure(conn, c, "HTTP 500", temporary=True, schedule=(1.0,))
            after = outbox.show(conn, hid)
        assert out.status == "superseded"
        assert before == after

    def test_a_renewal_of_an_earlier_claim_does_not_hold_the_new_one(self, engine: Engine
                                                                     ) -> None:
        """Claims are renewed by name: a late renewal of this node's earlier claim
        extends nothing once the row has a new claim, even one of the same node."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            outbox.claim(conn, "n1#1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(60.0,), now=now + timedelta(seconds=10))
            outbox.claim(conn, "n1#2", limit=5, lease=5, now=now + timedelta(seconds=10))
            assert outbox.renew(conn, {hid: "n1#1"}, lease=300,
                                now=now + timedelta(seconds=11)) == 0
            assert outbox.renew(conn, {hid: "n1#2"}, lease=300,
                                now=now + timedelta(seconds=11)) == 1

    def test_a_late_delivery_of_the_lost_attempt_is_kept(self, engine: Engine) -> None:
        """The hung attempt that got through after all, before another claim took the
        row, is recorded: the helpdesk has the ticket, so the row is delivered and not
        sent again."""
        [hid] = seed(engine, ("create",))
        now = datetime.now(UTC)
        with engine.begin() as conn:
            [c] = outbox.claim(conn, "n1", limit=5, lease=5, now=now)
            outbox.expire(conn, schedule=(), now=now + timedelta(seconds=10))
            out = outbox.record_delivered(conn, c, ticket_id="41", ticket_number="1041")
            shown = outbox.show(conn, hid)
        assert out.status == "delivered"
        assert shown is not None and (shown["status"], shown["last_error"]) == ("delivered", "")
