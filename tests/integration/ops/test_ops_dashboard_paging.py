"""Big tables on the dashboard: the ticket list pages through every ticket, and the
outbound and hand-off pages count everything waiting while they show a bounded part."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from gateway.store.tables import OutboundMessage, OutboundRecipient, Ticket
from gateway.web import mailflow
from tests.integration.ops.ops_web import message
from tests.unit.helpdesk.test_outbox_units import seed


def numbers_on(body: str) -> list[str]:
    """Ticket numbers linked from the ticket list, in page order."""
    table = body.split('id="tickets"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'href="/tickets/([0-9]+)[^"]*"', table)


class TestTicketPaging:
    def test_pages_reach_every_ticket(self, dashboard, monkeypatch):
        """The list says how many tickets match and pages through them newest first;
        the last page holds the oldest ticket, and the queue filter stays on the
        page links."""
        monkeypatch.setattr(mailflow, "TICKET_PAGE", 2)
        d = dashboard()
        for n in range(5):
            assert d.deliver(message(n)) == [250]
        with d.rg.gateway.engine.connect() as conn:
            ordered = [r[0] for r in conn.execute(select(Ticket.number)
                                                  .order_by(Ticket.id.desc()))]
        status, _, body = d.get("/tickets")
        assert status == 200 and 'id="ticket-count">5 tickets' in body
        assert numbers_on(body) == ordered[:2]
        assert 'id="next"' in body and 'id="prev"' not in body
        _, _, body = d.get("/tickets?page=3")
        assert numbers_on(body) == ordered[4:]
        assert 'id="prev"' in body and 'id="next"' not in body
        _, _, body = d.get("/tickets?queue=Support&page=2")
        assert numbers_on(body) == ordered[2:4]
        assert 'href="/tickets?queue=Support&amp;page=3"' in body
        _, _, body = d.get("/tickets?queue=Sales")
        assert 'id="ticket-count">0 tickets' in body and numbers_on(body) == []
        assert d.get("/tickets?page=99999999")[0] == 400


class TestWaitingCounts:
    def test_outbound_heading_counts_the_whole_queue(self, dashboard, monkeypatch):
        """With more messages waiting than the page shows, the heading gives the number
        waiting, not the number of rows shown, and says that only the oldest are shown."""
        monkeypatch.setattr(mailflow, "OUTBOUND_SHOWN", 2)
        d = dashboard()
        now = datetime.now(UTC)
        with d.rg.gateway.engine.begin() as conn:
            for n in range(5):
                oid = conn.execute(insert(OutboundMessage).values(
                    queue="Support", sender="support@example.org", data=b"x", size=1,
                    status="queued", attempts=0, next_attempt=now + timedelta(minutes=5),
                    created=now, updated=now).returning(OutboundMessage.id)).scalar_one()
                conn.execute(insert(OutboundRecipient).values(
                    outbound_id=oid, address=f"c{n}@customer.test", status="pending",
                    updated=now))
        status, _, body = d.get("/outbound")
        assert status == 200
        assert "Waiting (5)" in body and "the oldest 2 are shown" in body
        table = body.split('id="outbound"', 1)[1].split("</table>", 1)[0]
        assert table.count("c0@customer.test") == 1 and "c2@customer.test" not in table

    def test_handoff_heading_counts_every_waiting_row(self, dashboard, monkeypatch):
        """With more hand-offs waiting than the page shows, the heading counts them all
        and says that only the newest are shown."""
        monkeypatch.setattr(mailflow, "HANDOFF_SHOWN", 2)
        d = dashboard()
        rows = seed(d.rg.gateway.engine, ("create", "followup", "followup", "followup"))
        status, _, body = d.get("/handoff")
        assert status == 200
        assert "Waiting and failed (4)" in body and "the newest 2 are shown" in body
        table = body.split('id="handoffs"', 1)[1].split("</table>", 1)[0]
        assert f'id="h{rows[3]}"' in table and f'id="h{rows[0]}"' not in table
