"""Every recognised X-header through the whole inbound pipeline: what it does to a new
ticket, to the ticket a follow-up continues, and with which prefix and trust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.policy.conftest import deliver, set_state, ticket
from tests.unit.policy.mails import mail

NEW_TICKET = [
    ("Queue", "Sales"), ("State", "pending reminder"), ("Priority", "4 high"), ("Type", "Incident"),
    ("Service", "Printing"), ("SLA", "Gold"), ("Title", "Printer floor 3"),
    ("Owner", "agent1"), ("Responsible", "agent2"), ("Lock", "lock"),
    ("CustomerNo", "C-1001"), ("CustomerUser", "carla"), ("SenderType", "agent"),
    ("IsVisibleForCustomer", "0"), ("DynamicField-Contract", "K-7"),
    ("State-PendingTime", "+2d"),
]


def check_new_ticket(t: dict) -> None:
    assert (t["queue"], t["state"], t["priority"], t["type"]) == (
        "Sales", "pending reminder", "4 high", "Incident")
    assert (t["service"], t["sla"], t["title"]) == ("Printing", "Gold", "Printer floor 3")
    assert (t["owner"], t["responsible"], t["lock"]) == ("agent1", "agent2", "lock")
    assert (t["customer_no"], t["customer_user"]) == ("C-1001", "carla")
    assert t["dynamic_fields"] == {"Contract": "K-7"}
    pending = t["pending_until"]
    if pending.tzinfo is None:
        pending = pending.replace(tzinfo=UTC)
    assert abs(pending - (datetime.now(UTC) + timedelta(days=2))) < timedelta(minutes=5)
    (article,) = t["articles"]
    assert article["sender_type"] == "agent"
    assert article["is_visible_for_customer"] is False


class TestNewTicket:
    @pytest.mark.parametrize("prefix", ["X-Deskgate-", "X-OTOBO-", "x-otrs-"])
    def test_trusted_x_headers_set_every_ticket_field(self, gateway_for, prefix):
        """From a trusted source each recognised X-header (any prefix, any case) sets its
        ticket or article field."""
        gw = gateway_for()
        raw = mail("printer", headers=[(prefix + k, v) for k, v in NEW_TICKET])
        out = deliver(gw, raw, trusted=True)
        check_new_ticket(ticket(gw, out.ticket_number))

    def test_untrusted_x_headers_set_nothing(self, gateway_for):
        """From an untrusted source the same headers change nothing and are not stored."""
        gw = gateway_for()
        raw = mail("printer", headers=[("X-OTOBO-" + k, v) for k, v in NEW_TICKET])
        t = ticket(gw, deliver(gw, raw).ticket_number)
        assert (t["queue"], t["state"], t["priority"], t["title"]) == (
            "Support", "new", "3 normal", "printer")
        assert (t["owner"], t["lock"], t["dynamic_fields"], t["pending_until"]) == (
            "", "unlock", {}, None)
        assert t["customer_user"] == "carla@customer.test"
        assert t["articles"][0]["sender_type"] == "customer"
        assert t["articles"][0]["is_visible_for_customer"] is True

    def test_a_filter_sets_every_ticket_field_for_untrusted_mail(self, gateway_for):
        """A filter's set has the effect the trusted header would have."""
        sets = ", ".join(f'"X-Deskgate-{k}" = "{v}"' for k, v in NEW_TICKET)
        pol = f"""
            [[filter]]
            name = "010-all"
            match = [{{ header = "Subject", value = "printer" }}]
            set = {{ {sets} }}
        """
        gw = gateway_for({"10.toml": pol})
        check_new_ticket(ticket(gw, deliver(gw, mail("printer")).ticket_number))

    def test_first_of_a_repeated_trusted_header_wins(self, gateway_for):
        """A trusted message naming the queue twice (two prefixes) goes by the first."""
        gw = gateway_for()
        raw = mail("x", headers=[("X-OTOBO-Queue", "Sales"), ("X-Deskgate-Queue", "Junk")])
        assert ticket(gw, deliver(gw, raw, trusted=True).ticket_number)["queue"] == "Sales"

    def test_unknown_queue_state_priority_fall_back(self, gateway_for):
        """Values that do not exist fall back to routing and the defaults."""
        gw = gateway_for()
        raw = mail("x", headers=[("X-Deskgate-Queue", "Nowhere"), ("X-Deskgate-State", "bogus"),
                                 ("X-Deskgate-Priority", "9 urgent")])
        t = ticket(gw, deliver(gw, raw, trusted=True).ticket_number)
        assert (t["queue"], t["state"], t["priority"]) == ("Support", "new", "3 normal")


FOLLOW_UP = [
    ("Type", "Problem"), ("Service", "Network"), ("SLA", "Silver"), ("Owner", "agent3"),
    ("Responsible", "agent4"), ("Lock", "lock"), ("CustomerNo", "C-2002"),
    ("CustomerUser", "carla2"), ("State", "pending reminder"), ("State-PendingTime", "+1d"),
]


class TestFollowUp:
    def test_followup_x_headers_change_the_ticket(self, gateway_for):
        """Every FollowUp- header changes the ticket the follow-up continues."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTOBO-FollowUp-" + k, v)
                                                for k, v in FOLLOW_UP])
        assert deliver(gw, raw, trusted=True).ticket_number == n
        t = ticket(gw, n)
        assert (t["type"], t["service"], t["sla"]) == ("Problem", "Network", "Silver")
        assert (t["owner"], t["responsible"], t["lock"]) == ("agent3", "agent4", "lock")
        assert (t["customer_no"], t["customer_user"]) == ("C-2002", "carla2")
        assert (t["state"], t["state_type"]) == ("pending reminder", "pending")
        pending = t["pending_until"]
        if pending.tzinfo is None:
            pending = pending.replace(tzinfo=UTC)
        assert abs(pending - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=5)

    def test_new_ticket_headers_do_not_change_a_followup(self, gateway_for):
        """Queue, State, Priority, Owner ... without FollowUp- leave the ticket as it is."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "open")
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-Deskgate-" + k, v) for k, v in NEW_TICKET])
        assert deliver(gw, raw, trusted=True).ticket_number == n
        t = ticket(gw, n)
        assert (t["queue"], t["state"], t["priority"], t["owner"], t["title"]) == (
            "Support", "open", "3 normal", "", "printer")

    def test_reject_ignores_followup_headers(self, gateway_for):
        """On a closed ticket of a rejecting queue the article is stored and the FollowUp-
        headers change nothing."""
        gw = gateway_for()
        addr = "reject@example.org"
        n = deliver(gw, mail("printer", to=addr), rcpts=(addr,)).ticket_number
        set_state(gw, n, "closed successful")
        raw = mail(f"Re: [Ticket#{n}]", to=addr,
                   headers=[("X-Deskgate-FollowUp-State", "open"),
                            ("X-Deskgate-FollowUp-Priority", "5 very high"),
                            ("X-Deskgate-FollowUp-Owner", "agent9")])
        assert deliver(gw, raw, rcpts=(addr,), trusted=True).ticket_number == n
        t = ticket(gw, n)
        assert (t["state"], t["priority"], t["owner"]) == ("closed successful", "3 normal", "")
        assert len(t["articles"]) == 2

    def test_state_keep_beats_followup_state(self, gateway_for):
        """FollowUp-State-Keep wins over FollowUp-State (as in OTOBO)."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "pending reminder")
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTRS-FollowUp-State-Keep", "1"),
                                                ("X-OTRS-FollowUp-State", "open")])
        deliver(gw, raw, trusted=True)
        assert ticket(gw, n)["state"] == "pending reminder"
