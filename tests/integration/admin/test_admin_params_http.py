"""Dashboard URLs with bad numbers and missing objects: 400 and 404, never 500."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.store.tables import CommObject, Ticket
from tests.integration.admin.conftest import message

BAD_PAGES = ("-1", "0", "abc", "1.5", "1e3", "-0", "99999999999999999999999", "0x10",
             "%D9%A1")        # an Arabic-Indic digit one: int() takes it, a URL should not


@pytest.fixture
def running(admin_dashboard):
    d = admin_dashboard()
    assert d.deliver("support@example.org", message(1, "support@example.org")) == [250]
    with d.rg.gateway.engine.connect() as conn:
        number = conn.execute(select(Ticket.number)).scalar_one()
        comm = conn.execute(select(CommObject.communication_id)
                            .where(CommObject.type == "Message")).scalar_one()
    return d, number, comm


class TestParameters:
    def test_bad_page_numbers_are_400(self, running):
        """A page that is negative, zero, not a whole number or beyond any list gets 400
        with a one-line reason, on every paged page; page 1 and no page are fine."""
        d, number, comm = running
        for path in ("/log/list", "/tickets", f"/tickets/{number}", f"/log/{comm}"):
            assert d.request(path)[0] == 200, path
            assert d.request(path + "?page=1")[0] == 200, path
            assert d.request(path + "?page=")[0] == 200, path
            for bad in BAD_PAGES:
                status, body = d.request(f"{path}?page={bad}")
                assert status == 400, (path, bad, status, body)
                assert "page" in body

    def test_missing_objects_are_404(self, running):
        """A ticket, communication, outbound message or hand-off that does not exist
        gets 404 with a page saying so; ids beyond the database's get 400."""
        d, _, _ = running
        for path in ("/tickets/20990101999999", "/tickets/nope", "/tickets/id:99999",
                     "/log/99999", "/outbound/99999", "/handoff/99999"):
            status, body = d.request(path)
            assert status == 404, (path, status)
            assert "There is no" in body
        assert d.request("/log/99999999999999999999999")[0] == 400
        assert d.request("/outbound/99999999999999999999999")[0] == 400

    def test_odd_filters_never_500(self, running):
        """Durations, times and filters a visitor types get an answer, never a 500."""
        d, _, _ = running
        for path in ("/log?period=-1h", "/log?period=abc", "/log?period=99999999999999d",
                     "/log/list?since=-1h", "/log/list?since=0001-01-01",
                     "/log/list?until=9999-12-31T23:59:59", "/log/list?since=1e400",
                     "/log/list?sort=nonsense", "/log/list?direction=%00",
                     "/log/list?search=%25%5C_", "/tickets?state=%00",
                     "/tickets/id:abc", "/tickets/id:-1", "/tickets/id:99999999999999999999999",
                     "/log/1?priority=nonsense", "/addresses?sort=-nonsense"):
            status, body = d.request(path)
            assert status < 500, (path, status, body)

    def test_ticket_links_work_for_any_helpdesk_number(self, running):
        """With a helpdesk behind deskgate the ticket number is the helpdesk's, which
        may hold ?, # or %: every link to the ticket (ticket list, communication, its
        hand-off) still leads to the ticket's page."""
        import html
        import re
        from datetime import UTC, datetime

        from sqlalchemy import insert, update

        from gateway.store.tables import Article, Handoff

        d, _, comm = running
        odd = "RT-5?x=1#y%2F"
        now = datetime.now(UTC)
        with d.rg.gateway.engine.begin() as conn:
            tid = conn.execute(select(Ticket.id)).scalar_one()
            conn.execute(update(Ticket).where(Ticket.id == tid).values(number=odd))
            aid = conn.execute(select(Article.id)).scalar_one()
            hid = conn.execute(insert(Handoff).values(
                ticket_id=tid, article_id=aid, kind="create", key="odd-1", helpdesk="rt-rest2",
                status="failed", cycle_started=now, next_attempt=now, created=now,
                updated=now).returning(Handoff.id)).scalar_one()
        for page in ("/tickets", f"/log/{comm}", "/handoff", f"/handoff/{hid}"):
            status, body = d.request(page)
            assert status == 200, page
            links = [html.unescape(h) for h in re.findall(r'href="(/tickets/[^"]*)"', body)]
            assert links, page
            for link in links:
                status, target = d.request(link)
                assert status == 200, (page, link, status)
                assert html.escape(odd) in target, (page, link)
