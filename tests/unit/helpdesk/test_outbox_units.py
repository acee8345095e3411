"""The hand-off outbox on SQLite: when the worker has to look again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.helpdesk import outbox
from gateway.store import repo
from gateway.store.db import make_engine, migrate


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
    def test_a_row_in_flight_is_due_when_its_lease_ends(self, engine: Engine) -> None:
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
            assert outbox.claim(conn, "n2", limit=5, lease=300,
                                now=now + timedelta(seconds=10))
            outbox.record_failure(conn, stale, "timed out", temporary=True, schedule=(0.0,))
            assert outbox.claim(conn, "n3", limit=5, lease=5,
                                now=now + timedelta(seconds=20)) == []
