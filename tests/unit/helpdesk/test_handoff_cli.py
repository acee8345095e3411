"""`deskgate handoff delete|retry` on rows in every state, an attempt under way included."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from gateway.cli import main
from gateway.config import load_config
from gateway.helpdesk import outbox
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Handoff
from tests.unit.helpdesk.test_outbox_units import seed


@dataclass
class Store:
    conf: Path
    engine: Engine


@pytest.fixture
def store(make_confdir: Callable[..., Path]) -> Iterator[Store]:
    """conf.d and the migrated database it names."""
    conf = make_confdir()
    engine = make_engine(load_config(conf).database_url)
    migrate(engine)
    yield Store(conf, engine)
    engine.dispose()


def run(capsys: pytest.CaptureFixture[str], s: Store, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(["--config", str(s.conf), "handoff", *argv])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


class TestDelete:
    def test_a_row_being_handed_off_is_deleted_and_the_attempt_named(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """The delete wins over the attempt under way, and says that this attempt may
        still reach the helpdesk and that its result will not be recorded."""
        [hid] = seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            outbox.claim(conn, "node-a", limit=5, lease=300)
        rc, out, _ = run(capsys, store, "delete", str(hid))
        assert rc == 0
        assert f"hand-off {hid} deleted" in out
        assert "node-a" in out and "not recorded" in out
        with store.engine.connect() as conn:
            assert outbox.show(conn, hid) is None

    def test_json_tells_whether_an_attempt_was_under_way(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """--json: {id, deleted, status, attempts, in_delivery, claimed_by, lease_until}."""
        busy, idle = seed(store.engine, ("create",)) + seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            outbox.claim(conn, "node-a", limit=1, lease=300)
        rc, out, _ = run(capsys, store, "delete", str(busy), "--json")
        assert rc == 0
        doc = json.loads(out)
        assert (doc["id"], doc["deleted"], doc["status"], doc["attempts"]) == \
            (busy, True, "pending", 1)
        assert (doc["in_delivery"], doc["claimed_by"]) == (True, "node-a")
        assert doc["lease_until"]
        rc, out, _ = run(capsys, store, "delete", str(idle), "--json")
        doc = json.loads(out)
        assert (rc, doc["in_delivery"], doc["claimed_by"], doc["lease_until"]) == \
            (0, False, "", None)

    def test_a_delivered_row_is_not_deleted(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """A delivered row stays, and the answer says it was delivered."""
        [hid] = seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            [c] = outbox.claim(conn, "node-a", limit=5, lease=300)
            outbox.record_delivered(conn, c, ticket_id="41", ticket_number="1041")
        rc, _, err = run(capsys, store, "delete", str(hid))
        assert rc == 1 and "already delivered" in err
        with store.engine.connect() as conn:
            assert outbox.show(conn, hid) is not None


class TestRetry:
    def test_a_failed_row_starts_afresh_and_the_answer_says_so(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """A failed row is pending again with no attempts of its new cycle."""
        [hid] = seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            [c] = outbox.claim(conn, "node-a", limit=5, lease=300)
            outbox.record_failure(conn, c, "HTTP 500", temporary=True, schedule=())
        rc, out, _ = run(capsys, store, "retry", str(hid))
        assert rc == 0 and f"hand-off {hid} will be tried again now" in out
        assert "fresh" in out
        rc, out, _ = run(capsys, store, "show", str(hid), "--json")
        doc = json.loads(out)
        assert (doc["status"], doc["attempts"], doc["earlier_attempts"]) == ("pending", 0, 1)

    def test_a_row_being_handed_off_is_named_not_reset(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """--json lists the rows retried and those left to the attempt under way."""
        busy, idle = seed(store.engine, ("create",)) + seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            outbox.claim(conn, "node-a", limit=1, lease=300)
        rc, out, _ = run(capsys, store, "retry", str(busy))
        assert rc == 0 and "node-a" in out and "right now" in out
        rc, out, _ = run(capsys, store, "retry", "--all", "--json")
        assert rc == 0
        assert json.loads(out) == {"retried": [idle], "in_delivery": [busy]}


class TestListAndShow:
    """`handoff list|show` tell an attempt under way from one whose node died."""

    def test_an_attempt_under_way_is_named(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """--json: in_delivery, claimed_by and lease_until; the table names the node."""
        [hid] = seed(store.engine, ("create",))
        with store.engine.begin() as conn:
            outbox.claim(conn, "node-a", limit=5, lease=300)
        rc, out, _ = run(capsys, store, "list", "--json")
        [doc] = json.loads(out)
        assert (rc, doc["id"], doc["in_delivery"], doc["claimed_by"]) == \
            (0, hid, True, "node-a")
        assert doc["lease_until"]
        rc, out, _ = run(capsys, store, "list")
        assert rc == 0 and "in delivery by node-a" in out
        rc, out, _ = run(capsys, store, "show", str(hid), "--json")
        assert json.loads(out)["in_delivery"] is True

    def test_an_attempt_that_did_not_finish_is_told(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """A claim whose lease ran out (its node was killed) is not in delivery, and the
        table says that attempt did not finish before any node has recorded it."""
        [hid] = seed(store.engine, ("create",))
        past = datetime.now(UTC) - timedelta(seconds=10)
        with store.engine.begin() as conn:
            conn.execute(update(Handoff).values(next_attempt=past))
            assert outbox.claim(conn, "node-a", limit=5, lease=1, now=past)
        rc, out, _ = run(capsys, store, "list", "--json")
        [doc] = json.loads(out)
        assert (doc["in_delivery"], doc["claimed_by"], doc["attempts"]) == \
            (False, "node-a", 1)
        rc, out, _ = run(capsys, store, "list")
        assert "attempt by node-a did not finish" in out
        rc, out, _ = run(capsys, store, "show", str(hid))
        assert rc == 0 and "attempt by node-a did not finish" in out

    def test_a_row_at_rest_is_not_in_delivery(
            self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        """A row nobody holds has in_delivery false and no node."""
        seed(store.engine, ("create",))
        rc, out, _ = run(capsys, store, "list", "--json")
        [doc] = json.loads(out)
        assert (rc, doc["in_delivery"], doc["claimed_by"], doc["lease_until"]) == \
            (0, False, "", None)
