"""A Message-ID a postmaster filter sets: the article's Message-ID, what replies thread
on, and what duplicate detection keys on (the same for a redelivered message)."""

from __future__ import annotations

from sqlalchemy import select

from gateway.store.tables import Article, Delivery
from tests.integration.policy.conftest import deliver, ticket
from tests.unit.policy.mails import mail

SET_MESSAGE_ID = """
[[filter]]
name = "010-form"
match = [{ header = "Body", value = "form id:\\\\s*(\\\\S+)" }]
set = { "Message-ID" = "<form-[***]@forms.example.org>" }
"""


class TestSetMessageId:
    def test_article_and_deliveries_use_the_set_message_id(self, gateway_for):
        """A Message-ID a filter sets is the article's message_id and the one the
        delivery rows are recorded with."""
        gw = gateway_for({"10.toml": SET_MESSAGE_ID})
        raw = mail("web form", mid="<own@customer.test>", body="form id: 4711\n")
        out = deliver(gw, raw)
        with gw.engine.connect() as conn:
            mids = list(conn.execute(select(Article.message_id)).scalars())
            recorded = set(conn.execute(select(Delivery.message_id)).scalars())
        assert out.action == "new"
        assert mids == ["<form-4711@forms.example.org>"]
        assert recorded == {"<form-4711@forms.example.org>"}

    def test_redelivery_of_the_same_message_is_a_duplicate(self, gateway_for):
        """The same raw message delivered again is found as a duplicate and not stored
        again: the set Message-ID is the same for the same input."""
        gw = gateway_for({"10.toml": SET_MESSAGE_ID})
        raw = mail("web form", mid="<own@customer.test>", body="form id: 4711\n")
        first = deliver(gw, raw)
        again = deliver(gw, raw)
        assert (first.action, again.action) == ("new", "duplicate")
        assert again.ticket_number == first.ticket_number
        assert len(ticket(gw, first.ticket_number)["articles"]) == 1

    def test_reply_to_the_set_message_id_is_a_followup(self, gateway_for):
        """A reply whose In-Reply-To names the set Message-ID continues the ticket."""
        gw = gateway_for({"10.toml": SET_MESSAGE_ID})
        n = deliver(gw, mail("web form", body="form id: 4711\n")).ticket_number
        reply = mail("Re: web form", frm="someone@else.test",
                     in_reply_to="<form-4711@forms.example.org>")
        assert deliver(gw, reply).ticket_number == n
