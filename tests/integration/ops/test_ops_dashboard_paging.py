"""Big tables on the dashboard: the ticket list, a ticket's articles and a
communication's objects page through everything, and the outbound and hand-off pages
count everything waiting while they show a bounded part."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from gateway.store.tables import (
    Article,
    Attachment,
    OutboundMessage,
    OutboundRecipient,
    Ticket,
)
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


    def test_queue_filter_folds_case_as_tickets_list_does(self, dashboard):
        """The dashboard's queue filter matches a queue name in any case, as the
        configuration compares queue names and `deskgate tickets list --queue` does."""
        d = dashboard()
        for n in range(2):
            assert d.deliver(message(n)) == [250]
        with d.rg.gateway.engine.begin() as conn:
            conn.execute(Ticket.__table__.update().where(
                Ticket.id == select(Ticket.id).order_by(Ticket.id).limit(1)
                .scalar_subquery()).values(queue="SUPPORT"))
        for spelt in ("Support", "support", "SUPPORT"):
            _, _, body = d.get(f"/tickets?queue={spelt}")
            assert 'id="ticket-count">2 tickets' in body, spelt


def article_ids_on(body: str) -> list[int]:
    """The ids of the articles a ticket page shows, in page order."""
    return [int(i) for i in re.findall(r'<h2 class="article">Article ([0-9]+) ', body)]


class TestTicketArticlePaging:
    def test_articles_of_a_big_ticket_come_a_page_at_a_time(self, dashboard, monkeypatch):
        """A ticket with more articles than a page (a mail loop that slipped through)
        shows a page of them, oldest first, with only their attachments, says which of
        how many and links to the neighbouring pages; a page past the end says how many
        there are, and a page number beyond 10^6 is 400. Before, every article was read
        and shown on one page."""
        monkeypatch.setattr(mailflow, "ARTICLES_PAGE", 2)
        d = dashboard()
        assert d.deliver(message(0)) == [250]
        engine = d.rg.gateway.engine
        now = datetime.now(UTC)
        with engine.begin() as conn:
            tid, number = conn.execute(select(Ticket.id, Ticket.number)).one()
            for n in range(1, 5):
                aid = conn.execute(insert(Article).values(
                    ticket_id=tid, direction="incoming", sender_type="customer",
                    from_addr="cust0@customer.test", subject=f"Re: loop {n}",
                    body=f"loop body {n}", created=now).returning(Article.id)).scalar_one()
                if n == 3:
                    conn.execute(insert(Attachment).values(
                        article_id=aid, filename="loop-3.txt", content_type="text/plain",
                        size=1, content=b"x"))
            ids = list(conn.execute(select(Article.id).where(Article.ticket_id == tid)
                                    .order_by(Article.id)).scalars())
        status, _, body = d.get(f"/tickets/{number}")
        assert status == 200
        assert article_ids_on(body) == ids[:2]
        assert "articles 1 to 2 of 5" in body and "page 1 of 3" in body
        assert "Hello, message 0." in body and "loop body 1" in body
        assert "loop body 2" not in body and "loop-3.txt" not in body
        assert f'href="/tickets/{number}?page=2"' in body and 'class="prev"' not in body
        _, _, body = d.get(f"/tickets/{number}?page=2")
        assert article_ids_on(body) == ids[2:4] and "loop-3.txt" in body
        assert "articles 3 to 4 of 5" in body
        _, _, body = d.get(f"/tickets/{number}?page=3")
        assert article_ids_on(body) == ids[4:] and "articles 5 to 5 of 5" in body
        assert f'href="/tickets/{number}?page=2"' in body and 'class="next"' not in body
        assert "Re: loop 4" in body and 'id="ticket"' in body
        _, _, body = d.get(f"/tickets/{number}?page=9")
        assert article_ids_on(body) == [] and "no articles on this page; 5 in all" in body
        assert d.get(f"/tickets/{number}?page=99999999")[0] == 400

    def test_a_small_ticket_shows_its_count_and_no_pager(self, dashboard):
        """A ticket whose articles fit one page shows them all, with their number, and
        no page links."""
        d = dashboard()
        assert d.deliver(message(0)) == [250]
        with d.rg.gateway.engine.connect() as conn:
            number = conn.execute(select(Ticket.number)).scalar_one()
        status, _, body = d.get(f"/tickets/{number}")
        assert status == 200 and len(article_ids_on(body)) == 1
        assert 'id="article-count">1 article<' in body
        assert 'class="next"' not in body and "page 1 of" not in body


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


class TestCommunicationPaging:
    def test_objects_of_a_big_communication_come_a_page_at_a_time(self, dashboard,
                                                                   monkeypatch):
        """A communication with more objects than a page (a poll run with one Message
        object per fetched message) shows a page of objects with their entries, says
        which of how many, and links to the next page; the priority filter stays on
        the links."""
        from gateway.commlog import Comm, write_comm

        monkeypatch.setattr(mailflow, "OBJECTS_PAGE", 2)
        d = dashboard()
        comm = Comm("Incoming", "IMAPS", "big-box")
        for n in range(5):
            obj = comm.obj("Message")
            obj.log("Info", "Fetched", f"message number {n}")
            obj.log("Error", "Pipeline", f"failure number {n}")
            obj.close("Failed")
        comm.close("Failed")
        with d.rg.gateway.engine.begin() as conn:
            cid = write_comm(conn, comm)
        status, _, body = d.get(f"/log/{cid}")
        assert status == 200
        assert "objects 1 to 2 of 5" in body and "page 1 of 3" in body
        assert "message number 1" in body and "message number 2" not in body
        assert f'href="/log/{cid}?page=2"' in body
        _, _, body = d.get(f"/log/{cid}?page=3&priority=Error")
        assert "objects 5 to 5 of 5" in body and "failure number 4" in body
        assert "message number 4" not in body and "failure number 3" not in body
        assert f'href="/log/{cid}?priority=Error&amp;page=2"' in body
        _, _, body = d.get(f"/log/{cid}?page=9")
        assert 'class="object"' not in body and "no objects on this page; 5 in all" in body
