"""Addresses of From/To/Cc/Reply-To through the whole inbound pipeline when their display
names are RFC 2047 encoded words: the address is the one written, never a decoded name."""

from __future__ import annotations

from email import message_from_bytes

from sqlalchemy import select

from gateway.store.tables import Article, AutoResponseRequest
from tests.integration.policy.conftest import deliver, ticket
from tests.unit.policy.mails import mail

DESK = """
[[queue]]
name = "Desk"
address = "desk@example.org"
auto_response_new = "Dear {customer},\\nwe opened ticket {ticket_number}.\\n"

[[address]]
email = "desk@example.org"
queue = "Desk"
"""

BOSS_NAME = "=?utf-8?q?boss=40customer.test?= <mallory@evil.test>"


def requests(gw) -> list:
    with gw.engine.connect() as conn:
        return conn.execute(select(AutoResponseRequest.address, AutoResponseRequest.data)
                            ).all()


class TestEncodedDisplayNames:
    def test_customer_user_is_the_written_address(self, gateway_for):
        """A From whose encoded name decodes to boss@customer.test is mallory's: the
        ticket's customer user and the article's from_email are mallory@evil.test."""
        gw = gateway_for()
        res = deliver(gw, mail(frm=BOSS_NAME))
        t = ticket(gw, res.ticket_number)
        assert t["customer_user"] == "mallory@evil.test"
        with gw.engine.connect() as conn:
            row = conn.execute(select(Article.from_email, Article.from_addr)).one()
        assert tuple(row) == ("mallory@evil.test", '"boss@customer.test" <mallory@evil.test>')

    def test_encoded_name_is_no_participant(self, gateway_for):
        """Mallory naming boss's ticket with boss's address as encoded display name is
        not a participant: a new ticket, boss's ticket keeps its one article."""
        gw = gateway_for()
        n = deliver(gw, mail(frm="Boss <boss@customer.test>")).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{n}] wire the money", frm=BOSS_NAME))
        assert res.action == "new" and res.ticket_number != n
        assert len(ticket(gw, n)["articles"]) == 1

    def test_stored_encoded_name_makes_no_participant(self, gateway_for):
        """The stored From of mallory's ticket does not make boss@customer.test one of its
        participants (the address check reads the stored From again)."""
        gw = gateway_for()
        n = deliver(gw, mail(frm=BOSS_NAME)).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{n}]", frm="boss@customer.test"))
        assert res.action == "new" and res.ticket_number != n

    def test_encoded_name_with_a_comma_is_one_participant(self, gateway_for):
        """`=?utf-8?q?Doe=2C_John?= <jd@customer.test>` on a Cc is one mailbox: John is a
        participant, and so is nobody called Doe."""
        gw = gateway_for()
        n = deliver(gw, mail(cc="=?utf-8?q?Doe=2C_John?= <jd@customer.test>")).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{n}] me too", frm="John <jd@customer.test>"))
        assert (res.action, res.ticket_number) == ("followup", n)

    def test_routing_reads_the_written_to_address(self, gateway_for):
        """A To whose encoded name decodes to a system address does not route there."""
        gw = gateway_for(conf={"45-desk.toml": DESK})
        res = deliver(gw, mail(to="=?utf-8?q?desk=40example.org?= <carla@customer.test>"),
                      rcpts=("nobody@example.org",))
        assert ticket(gw, res.ticket_number)["queue"] != "Desk"


class TestAutoResponseAddress:
    def test_auto_response_goes_to_the_written_address(self, gateway_for):
        """The auto-response to an encoded From that decodes to boss@customer.test goes
        to mallory@evil.test, not to boss."""
        gw = gateway_for(conf={"45-desk.toml": DESK})
        deliver(gw, mail(frm=BOSS_NAME, to="desk@example.org"), rcpts=("desk@example.org",))
        assert [r.address for r in requests(gw)] == ["mallory@evil.test"]

    def test_auto_response_reply_to_and_name(self, gateway_for):
        """An encoded Reply-To that decodes to another address is not where the answer
        goes; the greeting uses the decoded From name with its comma."""
        gw = gateway_for(conf={"45-desk.toml": DESK})
        raw = mail(frm="=?utf-8?q?Doe=2C_John?= <jd@customer.test>", to="desk@example.org",
                   headers=[("Reply-To", "=?utf-8?q?boss=40customer.test?= <jd2@customer.test>")])
        deliver(gw, raw, rcpts=("desk@example.org",))
        [(address, data)] = requests(gw)
        assert address == "jd2@customer.test"
        body = message_from_bytes(data).get_payload(decode=True).decode()
        assert body.startswith("Dear Doe, John,\n")
