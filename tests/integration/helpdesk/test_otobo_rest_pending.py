"""otobo-rest against a real OTOBO: FollowUp-State-Keep and the pending time reach OTOBO's
ticket as deskgate's own store has them."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.config import Config
from gateway.helpdesk.otobo_rest import OtoboRest
from tests.integration.helpdesk.items import item, mail
from tests.peers.otobo import AGENT, AGENT_PASSWORD, Otobo

pytestmark = pytest.mark.otobo

MakeConfig = Callable[..., Config]


def rest(make: MakeConfig, url: str) -> OtoboRest:
    return OtoboRest(make('type = "otobo-rest"', f'url = "{url}"', f'user = "{AGENT}"',
                          f'password = "{AGENT_PASSWORD}"', 'timeout = "30s"'))


def until(otobo: Otobo, ticket_id: str) -> int:
    [row] = otobo.query("select until_time from ticket where id = %s", int(ticket_id))
    return int(row["until_time"])


class TestRestPendingTicket:
    @pytest.mark.parametrize("keep", ["2", "on"])
    def test_followup_keeping_a_pending_ticket_moves_its_time(
            self, otobo: Otobo, helpdesk_config: MakeConfig, keep: str) -> None:
        """A follow-up with FollowUp-State-Keep (2, on: values deskgate keeps the state for)
        leaves the pending ticket pending and sets the pending time it names."""
        c = rest(helpdesk_config, otobo.start_rest())
        res = c.deliver(item(mail("Waiting"), decisions={"State": "pending reminder",
                                                         "State-PendingTime": "+2d"}))
        assert abs(until(otobo, res.ticket_id) - (time.time() + 2 * 86400)) < 600
        fu = c.deliver(item(mail("Re: Waiting"), kind="followup",
                            helpdesk_ticket_id=res.ticket_id,
                            decisions={"FollowUp-State-Keep": keep,
                                       "FollowUp-State-PendingTime": "+5h"}))
        assert otobo.ticket("Waiting")["state"] == "pending reminder"
        assert abs(until(otobo, res.ticket_id) - (time.time() + 5 * 3600)) < 600
        assert not [e for e in fu.log if e[0] in ("Notice", "Warn") and "Pending" in e[1]]

    def test_new_open_ticket_gets_no_time_and_a_notice(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """State open with a pending time: the ticket has none, the log says why."""
        c = rest(helpdesk_config, otobo.start_rest())
        res = c.deliver(item(mail("Open one"), decisions={"State": "open",
                                                          "State-PendingTime": "+2d"}))
        assert otobo.ticket("Open one")["state"] == "open"
        assert until(otobo, res.ticket_id) == 0
        assert ("Notice", "State-PendingTime", "pending time '+2d' ignored: state 'open' is "
                "not a pending state") in res.log


class TestRestPendingStateWithoutTime:
    def test_pending_states_without_time_get_otobos_default(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A new ticket and a follow-up that set a pending state without a pending time
        reach OTOBO, pending for its default 24 hours, with a Notice each."""
        c = rest(helpdesk_config, otobo.start_rest())
        res = c.deliver(item(mail("No time"), decisions={"State": "pending reminder"}))
        assert otobo.ticket("No time")["state"] == "pending reminder"
        assert abs(until(otobo, res.ticket_id) - (time.time() + 86400)) < 600
        assert [e[:2] for e in res.log if e[0] == "Notice"] == [
            ("Notice", "State-PendingTime")]
        other = c.deliver(item(mail("Open first"), decisions={"State": "open"}))
        fu = c.deliver(item(mail("Re: Open first"), kind="followup",
                            helpdesk_ticket_id=other.ticket_id,
                            decisions={"FollowUp-State": "pending auto close+"}))
        assert fu.detail == "updated"
        assert otobo.ticket("Open first")["state"] == "pending auto close+"
        assert abs(until(otobo, other.ticket_id) - (time.time() + 86400)) < 600
        assert [e[:2] for e in fu.log if e[0] == "Notice"] == [
            ("Notice", "FollowUp-State-PendingTime")]
