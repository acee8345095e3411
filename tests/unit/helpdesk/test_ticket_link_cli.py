"""`deskgate tickets show` gives the helpdesk's ticket link as the dashboard does: the
helpdesk's id URL-quoted into [helpdesk] ticket_url, and only an http(s) link."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.cli import main
from gateway.config import load_config
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Ticket
from gateway.web import ticketdetail
from tests.unit.helpdesk.test_outbox_units import seed


def show(make_confdir: Callable[..., Path], capsys: pytest.CaptureFixture[str],
         ticket_url: str, helpdesk_id: str) -> tuple[str, str]:
    """The link of `tickets show id:N --json` and the output without --json, for a
    handed-off ticket whose helpdesk id is `helpdesk_id`."""
    conf = make_confdir({"50-helpdesk.toml": f"[helpdesk]\nticket_url = '{ticket_url}'\n"})
    engine = make_engine(load_config(conf).database_url)
    migrate(engine)
    seed(engine, ("create",))
    with engine.begin() as conn:
        tid = conn.execute(update(Ticket).values(helpdesk_ticket_id=helpdesk_id,
                                                 helpdesk_ticket_number="2026 1")
                           .returning(Ticket.id)).scalar_one()
    with engine.connect() as conn:
        page = ticketdetail.read_page(conn, f"id:{tid}", ticket_url, limit=10, offset=0)
    engine.dispose()
    argv = ["--config", str(conf), "tickets", "show", f"id:{tid}"]
    assert main([*argv, "--json"]) == 0
    url = str(json.loads(capsys.readouterr().out)["helpdesk"]["url"])
    assert page is not None and page["helpdesk"]["url"] == url     # the dashboard's link
    assert main(argv) == 0
    return url, capsys.readouterr().out


class TestTicketLink:
    def test_the_id_is_quoted_into_the_link(self, make_confdir, capsys):
        """An id with & = # cannot add parameters or a fragment to the link."""
        url, text = show(make_confdir, capsys,
                         "https://hd.example/index.pl?TicketID={id}&N={number}",
                         "7&Action=AgentTicketDelete#x")
        assert f"ticket 2026 1 {url}" in text
        assert url == ("https://hd.example/index.pl?TicketID=7%26Action%3DAgentTicketDelete%23x"
                       "&N=2026%201")

    def test_a_plain_id_gives_the_plain_link(self, make_confdir, capsys):
        """The usual numeric id is put in as it is."""
        url, _ = show(make_confdir, capsys, "https://hd.example/ticket/{id}", "42")
        assert url == "https://hd.example/ticket/42"

    @pytest.mark.parametrize("helpdesk_id", ["javascript:alert(1)", "file:///etc/passwd"])
    def test_only_an_http_link_is_given(self, make_confdir, capsys, helpdesk_id):
        """With ticket_url = "{id}" an id that is a javascript: or file: URL is no link."""
        url, text = show(make_confdir, capsys, "{id}", helpdesk_id)
        assert url == ""
        assert "ticket 2026 1\n" in text and helpdesk_id not in text
