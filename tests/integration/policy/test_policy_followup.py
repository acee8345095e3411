"""Follow-ups: subject numbers, participants, threading headers, closed-ticket policy."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from gateway.store.tables import CommEntry
from tests.integration.policy.conftest import add_outgoing, deliver, set_state, ticket, ticket_count
from tests.unit.policy.mails import mail

QUEUE_ADDR = {"possible": "possible@example.org", "reject": "reject@example.org",
              "new-ticket": "newticket@example.org"}
STATES = {"new": "new", "open": "open", "pending": "pending reminder",
          "closed": "closed successful"}

# (state type, queue policy) → (action, state of the old ticket afterwards)
MATRIX = {
    ("new", "possible"): ("followup", "new"),
    ("new", "reject"): ("followup", "new"),
    ("new", "new-ticket"): ("followup", "new"),
    ("open", "possible"): ("followup", "open"),
    ("open", "reject"): ("followup", "open"),
    ("open", "new-ticket"): ("followup", "open"),
    ("pending", "possible"): ("followup", "open"),
    ("pending", "reject"): ("followup", "open"),
    ("pending", "new-ticket"): ("followup", "open"),
    ("closed", "possible"): ("followup", "open"),
    ("closed", "reject"): ("followup", "closed successful"),
    ("closed", "new-ticket"): ("new", "closed successful"),
}


def open_ticket(gw, queue_policy: str, state: str = "new") -> str:
    addr = QUEUE_ADDR[queue_policy]
    out = deliver(gw, mail("Printer on floor 3 is jammed", to=addr), rcpts=(addr,))
    if STATES[state] != "new":
        set_state(gw, out.ticket_number, STATES[state])
    return out.ticket_number


class TestMatrix:
    @pytest.mark.parametrize(("state", "policy"), sorted(MATRIX))
    def test_follow_up_matrix(self, gateway_for, state, policy):
        """Each ticket state and queue follow_up policy ends as the design says."""
        gw = gateway_for()
        n = open_ticket(gw, policy, state)
        addr = QUEUE_ADDR[policy]
        res = deliver(gw, mail(f"RE: [Ticket#{n}] Printer on floor 3 is jammed", to=addr,
                               body="It is jammed again.\n"), rcpts=(addr,))
        action, old_state = MATRIX[(state, policy)]
        assert res.action == action
        old = ticket(gw, n)
        assert old["state"] == old_state
        if action == "followup":
            assert res.ticket_number == n
            assert len(old["articles"]) == 2
            assert old["articles"][-1]["body"].startswith("It is jammed again.")
        else:
            assert res.ticket_number != n
            assert len(old["articles"]) == 1
            new = ticket(gw, res.ticket_number)
            assert new["linked_ticket_id"] == old["id"]
            assert new["title"] == "RE: Printer on floor 3 is jammed"
            assert new["state"] == "new"
            assert new["queue"] == "NewTicket"


class TestFollowUpParams:
    def test_keep_state(self, gateway_for):
        """FollowUp-State-Keep keeps a closed ticket closed and a pending one pending."""
        gw = gateway_for()
        for state in ("closed", "pending"):
            n = open_ticket(gw, "possible", state)
            res = deliver(gw, mail(f"Re: Ticket#{n}", to="possible@example.org",
                                   headers=[("X-OTOBO-FollowUp-State-Keep", "yes")]),
                          rcpts=("possible@example.org",), trusted=True)
            assert res.ticket_number == n
            assert ticket(gw, n)["state"] == STATES[state]

    def test_followup_state_priority_dynamic_field_queue(self, gateway_for):
        """FollowUp-State/-Priority/-DynamicField/-Queue change the existing ticket."""
        gw = gateway_for()
        n = open_ticket(gw, "possible", "new")
        headers = [("X-Deskgate-FollowUp-State", "closed unsuccessful"),
                   ("X-Deskgate-FollowUp-Priority", "4 high"),
                   ("X-OTRS-FollowUp-DynamicField-Floor", "3"),
                   ("X-Deskgate-FollowUp-Queue", "Support"),
                   ("X-Deskgate-Priority", "1 very low")]
        res = deliver(gw, mail(f"Re: [Ticket#{n}]", headers=headers), trusted=True)
        assert res.action == "followup"
        t = ticket(gw, n)
        assert (t["state"], t["priority"], t["queue"]) == ("closed unsuccessful", "4 high",
                                                           "Support")
        assert t["dynamic_fields"] == {"Floor": "3"}

    def test_unknown_followup_state_falls_back(self, gateway_for):
        """An unknown FollowUp-State is logged as Error and followup_state is used."""
        gw = gateway_for()
        n = open_ticket(gw, "possible", "pending")
        deliver(gw, mail(f"Re: [Ticket#{n}]", headers=[("X-Deskgate-FollowUp-State", "bogus")]),
                trusted=True)
        assert ticket(gw, n)["state"] == "open"

    def test_new_ticket_stays_new_unless_followup_state(self, gateway_for):
        """A new ticket stays new on follow-ups; FollowUp-State moves it explicitly."""
        gw = gateway_for()
        n = open_ticket(gw, "possible", "new")
        deliver(gw, mail(f"Re: [Ticket#{n}]"))
        deliver(gw, mail(f"Re: [Ticket#{n}] again"))
        assert ticket(gw, n)["state"] == "new"
        deliver(gw, mail(f"Re: [Ticket#{n}]", headers=[("X-Deskgate-FollowUp-State", "open")]),
                trusted=True)
        assert ticket(gw, n)["state"] == "open"

    def test_filter_sets_followup_params(self, gateway_for):
        """A filter may set FollowUp- values for untrusted mail."""
        pol = """
            [[filter]]
            name = "010-urgent"
            match = [{ header = "Subject", value = "urgent" }]
            set = { "X-Deskgate-FollowUp-Priority" = "5 very high" }
        """
        gw = gateway_for({"10.toml": pol})
        n = open_ticket(gw, "possible", "open")
        deliver(gw, mail(f"Re: [Ticket#{n}] URGENT"))
        assert ticket(gw, n)["priority"] == "5 very high"


class TestParticipants:
    def test_stranger_with_ticket_number_opens_new_ticket(self, gateway_for):
        """A non-participant naming a ticket number gets a new ticket, not a follow-up."""
        gw = gateway_for()
        n = open_ticket(gw, "possible")
        res = deliver(gw, mail(f"Re: [Ticket#{n}] I saw this number",
                               frm="mallory@elsewhere.test"))
        assert res.action == "new" and res.ticket_number != n
        assert len(ticket(gw, n)["articles"]) == 1

    def test_cc_participant_is_accepted(self, gateway_for):
        """An address that was on an earlier article (Cc) may follow up by number."""
        gw = gateway_for()
        out = deliver(gw, mail("printer", cc="Bob <bob@customer.test>"))
        res = deliver(gw, mail(f"Re: [Ticket#{out.ticket_number}]", frm="BOB@customer.test"))
        assert res.action == "followup" and res.ticket_number == out.ticket_number

    def test_outgoing_recipient_is_participant(self, gateway_for):
        """Someone the agent wrote to may follow up by number."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        add_outgoing(gw, n, "<ans@helpdesk.test>", to="dave@customer.test")
        res = deliver(gw, mail(f"Re: [Ticket#{n}]", frm="dave@customer.test"))
        assert res.ticket_number == n

    def test_system_address_as_sender_is_no_participant(self, gateway_for):
        """Mail claiming to come from our own system address does not attach by number."""
        gw = gateway_for()
        n = open_ticket(gw, "possible")
        res = deliver(gw, mail(f"Re: [Ticket#{n}]", frm="Support <support@example.org>"))
        assert res.action == "new" and res.ticket_number != n

    def test_switch_off_participant_check(self, gateway_for):
        """followup_requires_participant = false accepts anyone naming the number."""
        gw = gateway_for(conf={"60-pm.toml": "[postmaster]\n"
                                              "followup_requires_participant = false\n"})
        n = open_ticket(gw, "possible")
        res = deliver(gw, mail(f"Re: [Ticket#{n}]", frm="mallory@elsewhere.test"))
        assert res.action == "followup" and res.ticket_number == n

    def test_merged_ticket_is_not_continued(self, gateway_for):
        """A merged ticket takes no follow-ups: its number opens a new ticket."""
        gw = gateway_for()
        n = open_ticket(gw, "possible")
        set_state(gw, n, "merged")
        res = deliver(gw, mail(f"Re: [Ticket#{n}]"))
        assert res.action == "new" and res.ticket_number != n

    def test_system_id_with_letters(self, gateway_for):
        """With a system_id that is not all digits a reply naming the ticket's number (and
        the number written in lower case) continues it; only its date part was read, so
        every reply opened a new ticket."""
        gw = gateway_for(conf={"60-g.toml": '[gateway]\nsystem_id = "HD"\n'})
        n = deliver(gw, mail("printer")).ticket_number
        assert "HD" in n
        assert deliver(gw, mail(f"Re: [Ticket#{n}] printer")).ticket_number == n
        assert deliver(gw, mail(f"Re: [ticket#{n.lower()}] printer")).ticket_number == n

    def test_unknown_number_opens_new_ticket(self, gateway_for):
        """A number that does not exist is no follow-up."""
        gw = gateway_for()
        res = deliver(gw, mail("Re: [Ticket#2020010110099999] old"))
        assert res.action == "new"


    def test_hostile_address_header_on_the_ticket(self, gateway_for):
        """An article whose Cc nests 2,000 comments does not stop the participant check:
        Python's address parser recursed too deep on it, so every later follow-up by
        Subject from anyone but the customer went to the quarantine."""
        gw = gateway_for()
        cc = "colleague@customer.test, " + "(" * 2000 + "x@y.test"
        n = deliver(gw, mail("printer", cc=cc)).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{n}] printer", frm="colleague@customer.test"))
        assert res.action == "followup" and res.ticket_number == n

    def test_hostile_from_is_stored(self, gateway_for):
        """A From nesting 2,000 comments is stored as a ticket (its address as far as it
        can be read), not quarantined."""
        gw = gateway_for()
        res = deliver(gw, mail("printer", frm="(" * 2000 + "Carla <carla@customer.test>"))
        assert res.action == "new"
        assert ticket(gw, res.ticket_number)["customer_user"] == "carla@customer.test"

    def test_subject_with_thousands_of_numbers(self, gateway_for):
        """A Subject naming 20,000 ticket numbers is looked up by its first few: one
        query and one communication log entry per number made it take seconds and
        flooded the log (a 50 MiB Subject: hours)."""
        gw = gateway_for()
        n = open_ticket(gw, "possible")
        junk = " ".join(f"Ticket#20200101100{i:05d}" for i in range(20_000))
        res = deliver(gw, mail(f"Re: [Ticket#{n}] {junk}"))
        assert res.action == "followup" and res.ticket_number == n

        fresh = gateway_for()
        start = time.perf_counter()
        deliver(fresh, mail("Re: printer"))
        plain = time.perf_counter() - start
        start = time.perf_counter()
        res = deliver(fresh, mail(f"Re: {junk}"))
        assert time.perf_counter() - start < 20 * plain + 0.5
        assert res.action == "new"
        with fresh.engine.connect() as conn:
            notes = conn.execute(select(CommEntry.value).where(CommEntry.key == "FollowUp")
                                 ).scalars().all()
        assert 0 < len(notes) <= 20, len(notes)


class TestThreading:
    def test_in_reply_to_incoming_article(self, gateway_for):
        """In-Reply-To naming a stored article's Message-ID makes a follow-up (any sender)."""
        gw = gateway_for()
        n = deliver(gw, mail("printer", mid="<orig-1@customer.test>")).ticket_number
        res = deliver(gw, mail("Re: printer", frm="colleague@customer.test",
                               in_reply_to="<orig-1@customer.test>"))
        assert res.action == "followup" and res.ticket_number == n

    def test_references_to_outgoing_article(self, gateway_for):
        """References naming our outgoing answer (after unknown ids) threads the reply."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        add_outgoing(gw, n, "<answer-7@helpdesk.test>")
        res = deliver(gw, mail("Re: your answer",
                               references="<unknown-1@x.test> <answer-7@helpdesk.test> "
                                          "<unknown-2@y.test>"))
        assert res.action == "followup" and res.ticket_number == n

    def test_in_reply_to_before_references(self, gateway_for):
        """In-Reply-To wins over References when they name different tickets."""
        gw = gateway_for()
        a = deliver(gw, mail("a", mid="<a-1@customer.test>")).ticket_number
        b = deliver(gw, mail("b", mid="<b-1@customer.test>")).ticket_number
        res = deliver(gw, mail("Re: b", in_reply_to="<b-1@customer.test>",
                               references="<a-1@customer.test>"))
        assert res.ticket_number == b != a

    def test_subject_number_before_threading_headers(self, gateway_for):
        """A valid subject number wins over In-Reply-To."""
        gw = gateway_for()
        a = deliver(gw, mail("a", mid="<a-2@customer.test>")).ticket_number
        b = deliver(gw, mail("b")).ticket_number
        res = deliver(gw, mail(f"Re: [Ticket#{b}]", in_reply_to="<a-2@customer.test>"))
        assert res.ticket_number == b != a

    @pytest.mark.parametrize("backend", ["sqlite",
                                         pytest.param("postgresql", marks=pytest.mark.postgres)])
    def test_in_reply_to_with_thousands_of_ids(self, gateway_for, request, backend):
        """An In-Reply-To with 40,000 ids is looked up by its first ones (as References by its
        newest): the first threads the reply. All of them went into one query, which
        PostgreSQL refused (over 65,535 parameters), answering 451 on every attempt."""
        conf = ({"30-db.toml": f'[gateway]\ndatabase = "{request.getfixturevalue("pg_url")}"\n'}
                if backend == "postgresql" else {})
        gw = gateway_for(conf=conf)
        n = deliver(gw, mail("printer", mid="<orig-9@customer.test>")).ticket_number
        junk = " ".join(f"<j{i}@x.test>" for i in range(40_000))
        res = deliver(gw, mail("Re: printer", in_reply_to=f"<orig-9@customer.test> {junk}"))
        assert res.action == "followup" and res.ticket_number == n

    def test_unrelated_references_open_new_ticket(self, gateway_for):
        """References to nothing stored open a new ticket."""
        gw = gateway_for()
        deliver(gw, mail("a"))
        res = deliver(gw, mail("Re: x", references="<nothing@x.test>"))
        assert res.action == "new" and ticket_count(gw) == 2
