"""A follow-up article's sender type and customer visibility, as OTOBO's PostMaster reads
them: from FollowUp-SenderType and FollowUp-IsVisibleForCustomer, else the defaults."""

from __future__ import annotations

from sqlalchemy import select

from gateway.store.tables import CommEntry
from tests.integration.policy.conftest import deliver, ticket
from tests.unit.policy.mails import mail


def followup(gw, headers: list[tuple[str, str]]) -> dict:
    """The follow-up article a trusted reply with `headers` adds to a new ticket."""
    n = deliver(gw, mail("printer")).ticket_number
    deliver(gw, mail(f"Re: [Ticket#{n}]", headers=headers), trusted=True)
    first, second = ticket(gw, n)["articles"]
    assert first["sender_type"] == "customer"
    return second


class TestFollowUpArticle:
    def test_followup_headers_set_the_article(self, gateway_for):
        """FollowUp-SenderType agent and FollowUp-IsVisibleForCustomer 0: an agent's
        article the customer does not see."""
        a = followup(gateway_for(), [("X-OTOBO-FollowUp-SenderType", "agent"),
                                     ("X-OTOBO-FollowUp-IsVisibleForCustomer", "0")])
        assert (a["sender_type"], a["is_visible_for_customer"]) == ("agent", False)

    def test_new_ticket_headers_do_not_set_a_followup_article(self, gateway_for):
        """SenderType and IsVisibleForCustomer without FollowUp- are for a new ticket's
        article: a follow-up gets the defaults (customer, visible), as in OTOBO."""
        a = followup(gateway_for(), [("X-OTOBO-SenderType", "agent"),
                                     ("X-OTOBO-IsVisibleForCustomer", "0")])
        assert (a["sender_type"], a["is_visible_for_customer"]) == ("customer", True)

    def test_followup_headers_win_over_the_new_ticket_ones(self, gateway_for):
        """Both given: the FollowUp- ones decide a follow-up."""
        a = followup(gateway_for(), [("X-OTOBO-SenderType", "agent"),
                                     ("X-OTOBO-IsVisibleForCustomer", "0"),
                                     ("X-OTOBO-FollowUp-SenderType", "system"),
                                     ("X-OTOBO-FollowUp-IsVisibleForCustomer", "1")])
        assert (a["sender_type"], a["is_visible_for_customer"]) == ("system", True)

    def test_unknown_followup_sender_type_is_customer_with_an_error(self, gateway_for):
        """FollowUp-SenderType robot: customer, and an Error entry under its name."""
        gw = gateway_for()
        a = followup(gw, [("X-OTOBO-FollowUp-SenderType", "robot")])
        assert a["sender_type"] == "customer"
        with gw.engine.connect() as conn:
            rows = [(r.priority, r.value) for r in conn.execute(
                select(CommEntry.priority, CommEntry.value).where(
                    CommEntry.key == "FollowUp-SenderType"))]
        assert rows == [("Error", "sender type 'robot' unknown; using customer")]

    def test_followup_headers_do_not_set_a_new_ticket_article(self, gateway_for):
        """A new ticket's article ignores FollowUp-SenderType / -IsVisibleForCustomer."""
        gw = gateway_for()
        raw = mail("x", headers=[("X-OTOBO-FollowUp-SenderType", "agent"),
                                 ("X-OTOBO-FollowUp-IsVisibleForCustomer", "0")])
        (a,) = ticket(gw, deliver(gw, raw, trusted=True).ticket_number)["articles"]
        assert (a["sender_type"], a["is_visible_for_customer"]) == ("customer", True)
