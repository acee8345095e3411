"""The dashboard's hand-off pages tell a hand-off under way from one whose node died,
as `deskgate handoff list|show` do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from gateway.helpdesk import outbox
from gateway.store.tables import Handoff
from tests.unit.helpdesk.test_outbox_units import seed


class TestHandoffAttempt:
    def test_in_delivery_and_did_not_finish(self, dashboard):
        """A row claimed by node-a with its lease running shows 'in delivery by node-a'
        on /handoff, its own page and its ticket's page; a row whose lease ran out
        without an outcome shows that node-a's attempt did not finish; a row nobody
        holds shows neither."""
        d = dashboard()
        engine = d.rg.gateway.engine
        [live] = seed(engine, ("create",))
        [dead] = seed(engine, ("create",))
        [idle] = seed(engine, ("create",))
        past = datetime.now(UTC) - timedelta(seconds=10)
        later = datetime.now(UTC) + timedelta(hours=1)
        with engine.begin() as conn:
            conn.execute(update(Handoff).values(next_attempt=later))
            conn.execute(update(Handoff).where(Handoff.id == live).values(next_attempt=past))
            assert [c.id for c in outbox.claim(conn, "node-a", limit=5,
                                               lease=300)] == [live]
            conn.execute(update(Handoff).where(Handoff.id == dead).values(next_attempt=past))
            assert [c.id for c in outbox.claim(conn, "node-a", limit=5, lease=1,
                                               now=past)] == [dead]
            tickets = dict(conn.execute(select(Handoff.id, Handoff.ticket_id)).all())

        status, _, page = d.get("/handoff")
        assert status == 200
        rows = {hid: page.split(f'id="h{hid}"', 1)[1].split("</tr>", 1)[0]
                for hid in (live, dead, idle)}
        assert "in delivery by node-a" in rows[live]
        assert "attempt by node-a did not finish" in rows[dead]
        assert "node-a" not in rows[idle]

        _, _, item = d.get(f"/handoff/{live}")
        assert "in delivery by node-a" in item
        _, _, item = d.get(f"/handoff/{dead}")
        assert "attempt by node-a did not finish" in item
        _, _, item = d.get(f"/handoff/{idle}")
        assert "in delivery" not in item and "did not finish" not in item

        _, _, ticket = d.get(f"/tickets/id:{tickets[live]}")
        assert "in delivery by node-a" in ticket
        _, _, ticket = d.get(f"/tickets/id:{tickets[dead]}")
        assert "attempt by node-a did not finish" in ticket
