"""A filter's `set` of Subject, From, To, Cc, Reply-To, In-Reply-To, References or Body
changes what the ticket and article are made from (as OTOBO's GetParam), not only the
stored header list; the raw message stays as it came."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway.app import Gateway
from gateway.store.tables import Article, RawMessage
from tests.integration.policy.conftest import deliver, ticket, ticket_count
from tests.unit.policy.mails import mail

SET_SUBJECT = r"""
[[filter]]
name = "010-subject"
match = [{ header = "Subject", value = "^ALERT (?P<host>\\S+)" }]
set = { "Subject" = "Monitoring alert on [**\\host**]" }
"""

# A web form's mail: the customer is named in the body only (OTOBO's classic case).
WEBFORM = r"""
[[filter]]
name = "010-webform"
match = [{ header = "From", email = "noreply@web\\.example\\.org" },
         { header = "Body", value = "^email:\\s*(?P<who>\\S+@\\S+)" }]
[filter.set]
"From" = "Web customer <[**\\who**]>"
"Reply-To" = "[**\\who**]"
"""


def article_row(gw: Gateway, number: str) -> Any:
    """The first article of the ticket, every column."""
    aid = ticket(gw, number)["articles"][0]["id"]
    with gw.engine.connect() as conn:
        return conn.execute(select(Article).where(Article.id == aid)).one()


def header(row: Any, name: str) -> list[str]:
    return [v for k, v in row.headers if k.lower() == name.lower()]


def raw_of(gw: Gateway, row: Any) -> bytes:
    with gw.engine.connect() as conn:
        return bytes(conn.execute(select(RawMessage.data)
                                  .where(RawMessage.id == row.raw_id)).scalar_one())


class TestSetSubject:
    def test_article_subject_and_title_follow_the_set_subject(self, gateway_for):
        """The article's subject, its stored Subject header and the title are the set value."""
        gw = gateway_for({"10-s.toml": SET_SUBJECT})
        raw = mail("ALERT db1.example.org disk full")
        out = deliver(gw, raw)
        t = ticket(gw, out.ticket_number)
        assert t["title"] == "Monitoring alert on db1.example.org"
        row = article_row(gw, out.ticket_number)
        assert row.subject == "Monitoring alert on db1.example.org"
        assert header(row, "Subject") == [row.subject]
        assert raw_of(gw, row) == raw

    def test_title_header_wins_over_the_set_subject(self, gateway_for):
        """X-OTOBO-Title (trusted) names the ticket; the article keeps the set Subject."""
        gw = gateway_for({"10-s.toml": SET_SUBJECT})
        out = deliver(gw, mail("ALERT db1 disk full", headers=[("X-OTOBO-Title", "Disk db1")]),
                      trusted=True)
        assert ticket(gw, out.ticket_number)["title"] == "Disk db1"
        assert article_row(gw, out.ticket_number).subject == "Monitoring alert on db1"

    def test_set_subject_with_a_ticket_number_threads_to_that_ticket(self, gateway_for):
        """Follow-up detection reads the Subject after the filters."""
        pol = r"""
            [[filter]]
            name = "010-ref"
            match = [{ header = "Body", value = "our reference:\\s*(\\d+)" }]
            set = { "Subject" = "Re: [Ticket#[***]] printer" }
        """
        gw = gateway_for({"10-r.toml": pol})
        first = deliver(gw, mail("printer"))
        n = first.ticket_number
        res = deliver(gw, mail("no number here", body=f"Hello,\nour reference: {n}\n"))
        assert res.action == "followup"
        assert res.ticket_number == n
        assert ticket_count(gw) == 1
        assert ticket(gw, n)["articles"][-1]["subject"] == f"Re: [Ticket#{n}] printer"

    def test_subject_condition_of_a_later_filter_sees_the_set_subject(self, gateway_for):
        """A later filter matches the Subject an earlier one set."""
        pol = SET_SUBJECT + r"""
            [[filter]]
            name = "020-route"
            match = [{ header = "Subject", value = "^Monitoring alert" }]
            set = { "X-Deskgate-Queue" = "Sales" }
        """
        gw = gateway_for({"10-s.toml": pol})
        out = deliver(gw, mail("ALERT db1 disk full"))
        assert ticket(gw, out.ticket_number)["queue"] == "Sales"


class TestSetAddresses:
    def test_set_from_changes_the_customer_user(self, gateway_for):
        """From set from the body gives from/from_email, customer user and Reply-To."""
        gw = gateway_for({"10-w.toml": WEBFORM})
        raw = mail("contact form", frm="Web form <noreply@web.example.org>",
                   body="email: Dora@Customer.test\nmessage: the printer is jammed\n")
        out = deliver(gw, raw)
        t = ticket(gw, out.ticket_number)
        assert t["customer_user"] == "dora@customer.test"
        row = article_row(gw, out.ticket_number)
        assert row.from_addr == "Web customer <Dora@Customer.test>"
        assert row.from_email == "dora@customer.test"
        assert row.reply_to == "Dora@Customer.test"
        assert header(row, "From") == [row.from_addr]
        assert header(row, "Reply-To") == [row.reply_to]
        assert raw_of(gw, row) == raw

    def test_set_from_is_the_sender_of_a_follow_up(self, gateway_for):
        """The participant check of a follow-up reads the From a filter set."""
        gw = gateway_for({"10-w.toml": WEBFORM})
        n = deliver(gw, mail("printer", frm="dora@customer.test")).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{n}] printer", frm="noreply@web.example.org",
                               body="email: dora@customer.test\nstill jammed\n"))
        assert res.action == "followup"
        assert res.ticket_number == n

    def test_set_to_and_cc_are_the_stored_addresses(self, gateway_for):
        """To and Cc columns and headers are the set values (one header each)."""
        pol = r"""
            [[filter]]
            name = "010-addr"
            match = [{ header = "Subject", value = "rewrite" }]
            [filter.set]
            "To" = "Support <support@example.org>"
            "Cc" = "=?utf-8?q?Doe=2C_John?= <jd@customer.test>"
        """
        gw = gateway_for({"10-a.toml": pol})
        out = deliver(gw, mail("rewrite", to="old@example.org, other@example.org",
                               cc="x@customer.test"))
        row = article_row(gw, out.ticket_number)
        assert row.to_addr == "Support <support@example.org>"
        assert row.cc_addr == '"Doe, John" <jd@customer.test>'
        assert header(row, "To") == [row.to_addr]
        assert header(row, "Cc") == [row.cc_addr]


class TestSetThreadingHeaders:
    def test_set_in_reply_to_threads(self, gateway_for):
        """In-Reply-To set by a filter is what follow-up detection reads and the article stores."""
        gw = gateway_for({"10-t.toml": r"""
            [[filter]]
            name = "010-thread"
            match = [{ header = "X-Original-Ref", value = "(<[^>]+>)" }]
            set = { "In-Reply-To" = "[***]" }
        """})
        first = deliver(gw, mail("printer", mid="<first.dora@customer.test>"))
        res = deliver(gw, mail("still jammed",
                               headers=[("X-Original-Ref", "<first.dora@customer.test>")]))
        assert res.ticket_number == first.ticket_number
        row = ticket(gw, first.ticket_number)["articles"][-1]
        assert row["in_reply_to"] == "<first.dora@customer.test>"


class TestSetBody:
    def test_set_body_is_the_article_body(self, gateway_for):
        """Body set by a filter is the article's body; no 'Body' header is added."""
        gw = gateway_for({"10-b.toml": r"""
            [[filter]]
            name = "010-redact"
            match = [{ header = "Body", value = "password" }]
            set = { "Body" = "(removed: the message held a password)" }
        """})
        raw = mail("access", body="my password is hunter2\n")
        out = deliver(gw, raw)
        row = article_row(gw, out.ticket_number)
        assert row.body == "(removed: the message held a password)"
        assert row.body_html is None
        assert header(row, "Body") == []
        assert raw_of(gw, row) == raw
