"""The values of the postmaster X-headers as OTOBO reads them: a pending time only for a
pending state, and the truth values of Ignore and FollowUp-State-Keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from gateway.store.tables import CommEntry, Ticket
from tests.integration.policy.conftest import deliver, set_state, ticket, ticket_count
from tests.unit.policy.mails import mail


def notes(gw, key: str) -> list[tuple[str, str]]:
    """(priority, value) of the communication log entries with this key."""
    with gw.engine.connect() as conn:
        return [(r.priority, r.value) for r in conn.execute(
            select(CommEntry.priority, CommEntry.value).where(CommEntry.key == key))]


def near(when: datetime | None, delta: timedelta) -> bool:
    assert when is not None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return abs(when - (datetime.now(UTC) + delta)) < timedelta(minutes=5)


def set_pending(gw, number: str, when: datetime) -> None:
    with gw.engine.begin() as conn:
        conn.execute(update(Ticket).where(Ticket.number == number).values(pending_until=when))


class TestPendingTimeOnlyForPendingStates:
    def test_new_ticket_in_a_pending_state_gets_the_time(self, gateway_for):
        """State pending reminder with State-PendingTime +2d: pending in two days."""
        gw = gateway_for()
        raw = mail("x", headers=[("X-OTOBO-State", "pending reminder"),
                                 ("X-OTOBO-State-PendingTime", "+2d")])
        t = ticket(gw, deliver(gw, raw, trusted=True).ticket_number)
        assert t["state_type"] == "pending"
        assert near(t["pending_until"], timedelta(days=2))
        assert notes(gw, "State-PendingTime") == []

    @pytest.mark.parametrize("state", ["open", None])
    def test_new_ticket_in_another_state_ignores_the_time(self, gateway_for, state):
        """State open (or the default new) with a pending time: no pending time is stored,
        and a Notice says why."""
        gw = gateway_for()
        headers = [("X-OTOBO-State-PendingTime", "+2d")]
        if state:
            headers.append(("X-OTOBO-State", state))
        t = ticket(gw, deliver(gw, mail("x", headers=headers), trusted=True).ticket_number)
        assert t["pending_until"] is None
        shown = state or "new"
        assert notes(gw, "State-PendingTime") == [
            ("Notice", f"pending time '+2d' ignored: state {shown!r} is not a pending state")]

    def test_followup_that_keeps_an_open_ticket_leaves_its_time(self, gateway_for):
        """A follow-up keeping an open ticket open does not set the pending time it names;
        the time stored on the ticket stays, and a Notice says why."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "open")
        before = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        set_pending(gw, n, before)
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTRS-FollowUp-State-Keep", "1"),
                                                ("X-OTRS-FollowUp-State-PendingTime", "+1d")])
        deliver(gw, raw, trusted=True)
        t = ticket(gw, n)
        assert t["state"] == "open"
        assert t["pending_until"].replace(tzinfo=UTC) == before
        assert notes(gw, "FollowUp-State-PendingTime") == [
            ("Notice", "pending time '+1d' ignored: state 'open' is not a pending state")]

    def test_followup_reopening_a_pending_ticket_ignores_the_time(self, gateway_for):
        """A follow-up that sets a pending ticket to open (followup_state) stores no
        pending time, even when it names one."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "pending reminder")
        raw = mail(f"Re: [Ticket#{n}]",
                   headers=[("X-OTRS-FollowUp-State-PendingTime", "+1d")])
        deliver(gw, raw, trusted=True)
        t = ticket(gw, n)
        assert (t["state"], t["pending_until"]) == ("open", None)
        assert [p for p, _v in notes(gw, "FollowUp-State-PendingTime")] == ["Notice"]

    def test_followup_keeping_a_pending_ticket_sets_the_time(self, gateway_for):
        """A follow-up that keeps a pending ticket pending sets the time it names."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "pending reminder")
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTRS-FollowUp-State-Keep", "yes"),
                                                ("X-OTRS-FollowUp-State-PendingTime", "+3h")])
        deliver(gw, raw, trusted=True)
        t = ticket(gw, n)
        assert t["state"] == "pending reminder"
        assert near(t["pending_until"], timedelta(hours=3))
        assert notes(gw, "FollowUp-State-PendingTime") == []


class TestTruthValues:
    @pytest.mark.parametrize("value", ["1", "yes", "YES", "True", "on", "On",
                                       "yes please", "TRUE."])
    def test_ignore_values_that_drop_the_message(self, gateway_for, value):
        """Ignore drops the message for deskgate's 1/yes/true/on and, as OTOBO, for any
        value holding yes or true, in any case."""
        gw = gateway_for()
        out = deliver(gw, mail("x", headers=[("X-OTRS-Ignore", value)]), trusted=True)
        assert out.action == "ignore"
        assert ticket_count(gw) == 0

    @pytest.mark.parametrize("value", ["0", "no", "false", "off", "NO", "y"])
    def test_ignore_values_that_keep_the_message(self, gateway_for, value):
        """Ignore: 0, no, false, off (and other words) store the message."""
        gw = gateway_for()
        out = deliver(gw, mail("x", headers=[("X-OTRS-Ignore", value)]), trusted=True)
        assert out.action == "new"

    @pytest.mark.parametrize("value", ["1", "yes", "Yes", "TRUE", "on", "2", "keep", "y"])
    def test_state_keep_values_that_keep_the_state(self, gateway_for, value):
        """FollowUp-State-Keep keeps the state for every value OTOBO keeps it for (any
        value but 0), in any case."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "closed successful")
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTOBO-FollowUp-State-Keep", value)])
        deliver(gw, raw, trusted=True)
        assert ticket(gw, n)["state"] == "closed successful"

    @pytest.mark.parametrize("value", ["0", "no", "false", "off", "No", "FALSE"])
    def test_state_keep_values_that_change_the_state(self, gateway_for, value):
        """FollowUp-State-Keep: 0, and deskgate's no/false/off, keep nothing."""
        gw = gateway_for()
        n = deliver(gw, mail("printer")).ticket_number
        set_state(gw, n, "closed successful")
        raw = mail(f"Re: [Ticket#{n}]", headers=[("X-OTOBO-FollowUp-State-Keep", value)])
        deliver(gw, raw, trusted=True)
        assert ticket(gw, n)["state"] == "open"
