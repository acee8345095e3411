"""/metrics gauges read from the database at scrape time: a failed read shows as NaN and
is counted, never as the last good value. Real PostgreSQL, made unreachable."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from gateway import metrics
from gateway.helpdesk import outbox
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Handoff
from gateway.web.server import handoff_gauges
from tests.conftest import pg_unreachable

pytestmark = pytest.mark.postgres


def scrape(engine: object) -> dict[str, float]:
    """The hand-off gauges and their refresh error count after one /metrics scrape."""
    body = metrics.render(engine, (handoff_gauges,))[0].decode()  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name in ("deskgate_handoff_pending", "deskgate_handoff_failed",
                          "deskgate_handoff_oldest_pending_seconds") or (
                    s.name == "deskgate_gauge_refresh_errors_total"
                    and s.labels.get("gauges") == "handoff"):
                out[s.name] = s.value
    return out


class TestHandoffGauges:
    def test_a_failed_refresh_is_visible_not_the_last_value(self, pg_url: str) -> None:
        """With the database gone, /metrics does not repeat the last pending and failed
        counts and the oldest age as if they were current: all three are NaN and the
        failure is counted under gauges="handoff", a series there from the start."""
        engine = make_engine(pg_url)
        try:
            migrate(engine)
            with engine.begin() as conn:
                tid = repo.insert_ticket(conn, number=None, title="t", queue="Raw",
                                         state="new", state_type="new",
                                         priority="3 normal", dynamic_fields={})
                for n in range(3):
                    aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                              sender_type="customer", subject=str(n))
                    outbox.enqueue(conn, ticket_id=tid, article_id=aid,
                                   kind="create" if n == 0 else "followup",
                                   helpdesk="webhook", decisions={})
                first = conn.execute(select(func.min(Handoff.id))).scalar_one()
                conn.execute(update(Handoff).where(Handoff.id == first)
                             .values(status="failed"))
            before = scrape(engine)
            with pg_unreachable(pg_url):
                during = scrape(engine)
            after = scrape(engine)
        finally:
            engine.dispose()
        assert (before["deskgate_handoff_pending"], before["deskgate_handoff_failed"]) == (2, 1)
        assert before["deskgate_handoff_oldest_pending_seconds"] >= 0
        assert math.isnan(during["deskgate_handoff_pending"])
        assert math.isnan(during["deskgate_handoff_failed"])
        assert math.isnan(during["deskgate_handoff_oldest_pending_seconds"])
        # The series exists before the first failure, so increase() sees that one too.
        assert during["deskgate_gauge_refresh_errors_total"] == \
            before["deskgate_gauge_refresh_errors_total"] + 1
        assert (after["deskgate_handoff_pending"], after["deskgate_handoff_failed"]) == (2, 1)
        assert after["deskgate_gauge_refresh_errors_total"] == \
            during["deskgate_gauge_refresh_errors_total"]
