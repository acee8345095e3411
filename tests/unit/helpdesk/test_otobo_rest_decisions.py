"""The OTOBO REST hand-off reads the postmaster X-header values as deskgate's own store
does: FollowUp-State-Keep's truth values, and a pending time only for a pending state."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.helpdesk.otobo_rest import OtoboRest
from tests.integration.helpdesk.items import item, mail
from tests.unit.helpdesk.fakehttp import Answer, FakeHttp, Request, fake_http

Deliver = Callable[..., tuple[dict[str, Any], list[tuple[str, str, str]]]]


@pytest.fixture
def server() -> Iterator[FakeHttp]:
    with fake_http() as f:
        f.on("POST", "/ws/Session", (200, {}, {"SessionID": "sid"}))
        f.on("POST", "/ws/Ticket", (200, {}, {"TicketID": "7", "TicketNumber": "2026120610000071",
                                              "ArticleID": "9"}))
        f.on("PATCH", "/ws/Ticket/7", (200, {}, {"TicketID": "7", "ArticleID": "10"}))
        yield f


@pytest.fixture
def deliver(make_confdir: Callable[..., Path], server: FakeHttp) -> Deliver:
    """deliver(kind, decisions, state=...) → (the body OTOBO got, the hand-off's log);
    a follow-up goes to ticket 7, which OTOBO reports in `state` (of type `state_type`)."""
    conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
        [helpdesk]
        type = "otobo-rest"
        url = "{server.url}/ws"
        user = "deskgate"
        password_file = "sec"
        """)})
    (conf.parent / "sec").write_text("s3cret\n")
    (conf.parent / "sec").chmod(0o600)
    connector = OtoboRest(load_config(conf))

    def run(kind: str, decisions: dict[str, str], state: str = "open",
            state_type: str = "open") -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        def ticket_get(_r: Request) -> Answer:
            return 200, {}, {"Ticket": [{"TicketID": "7", "TicketNumber": "2026120610000071",
                                         "State": state, "StateType": state_type}]}
        server.on("GET", "/ws/Ticket/7", ticket_get)
        it = item(mail("Printer"), kind="followup" if kind == "followup" else "create",
                  helpdesk_ticket_id="7" if kind == "followup" else "", decisions=decisions)
        res = connector.deliver(it)
        sent = [r for r in server.requests if r.method in ("POST", "PATCH")
                and r.path != "/ws/Session"]
        return sent[-1].json, res.log

    return run


class TestFollowUpStateKeep:
    @pytest.mark.parametrize("value", ["1", "yes", "TRUE", "on", "On", "2", "keep", "y"])
    def test_values_that_keep_the_state(self, deliver: Deliver, value: str) -> None:
        """Every value deskgate's store keeps the state for (any value but empty, 0, no,
        false, off) leaves OTOBO's ticket state alone too."""
        body, _log = deliver("followup", {"FollowUp-State-Keep": value})
        assert "State" not in body.get("Ticket", {})

    @pytest.mark.parametrize("value", ["", "0", "no", "false", "off", "No", "FALSE"])
    def test_values_that_keep_nothing(self, deliver: Deliver, value: str) -> None:
        """Empty, 0, no, false and off keep nothing: the open ticket is set to
        followup_state, as deskgate's store does."""
        body, _log = deliver("followup", {"FollowUp-State-Keep": value})
        assert body["Ticket"]["State"] == "open"


def ignored(key: str, value: str, state: str) -> tuple[str, str, str]:
    return ("Notice", key, f"pending time {value!r} ignored: state {state!r} is not a "
            "pending state")


class TestPendingTimeOnlyForPendingStates:
    def test_new_ticket_in_a_pending_state_gets_the_time(self, deliver: Deliver) -> None:
        """State pending reminder with State-PendingTime +2d: PendingTime is sent."""
        body, log = deliver("create", {"State": "pending reminder",
                                       "State-PendingTime": "+2d"})
        assert body["Ticket"]["PendingTime"] == {"Diff": 2880}
        assert not [e for e in log if "PendingTime" in e[1]]

    @pytest.mark.parametrize("state", ["open", "new"])
    def test_new_ticket_in_another_state_gets_none(self, deliver: Deliver, state: str) -> None:
        """State open or new with a pending time: no PendingTime, and a Notice says why."""
        body, log = deliver("create", {"State": state, "State-PendingTime": "+2d"})
        assert "PendingTime" not in body["Ticket"]
        assert ignored("State-PendingTime", "+2d", state) in log

    def test_new_ticket_in_the_default_state_gets_none(self, deliver: Deliver) -> None:
        """No State: the default_state (new) decides, as in the store."""
        body, log = deliver("create", {"State": "", "State-PendingTime": "+2d"})
        assert (body["Ticket"]["State"], "PendingTime" in body["Ticket"]) == ("new", False)
        assert ignored("State-PendingTime", "+2d", "new") in log

    def test_followup_leaving_the_ticket_open_sends_none(self, deliver: Deliver) -> None:
        """A follow-up moving a pending ticket to followup_state (open) sends no pending
        time, even when it names one."""
        body, log = deliver("followup", {"FollowUp-State-PendingTime": "+1d"},
                            state="pending reminder", state_type="pending reminder")
        assert body["Ticket"] == {"State": "open"}
        assert ignored("FollowUp-State-PendingTime", "+1d", "open") in log

    def test_followup_keeping_an_open_ticket_sends_none(self, deliver: Deliver) -> None:
        """A follow-up keeping an open ticket open: no pending time, a Notice."""
        body, log = deliver("followup", {"FollowUp-State-Keep": "1",
                                         "FollowUp-State-PendingTime": "+1d"})
        assert "Ticket" not in body
        assert ignored("FollowUp-State-PendingTime", "+1d", "open") in log

    def test_followup_setting_a_pending_state_sends_the_time(self, deliver: Deliver) -> None:
        """FollowUp-State pending reminder with a pending time: both are sent."""
        body, log = deliver("followup", {"FollowUp-State": "pending reminder",
                                         "FollowUp-State-PendingTime": "+3h"})
        assert body["Ticket"] == {"State": "pending reminder", "PendingTime": {"Diff": 180}}
        assert not [e for e in log if "PendingTime" in e[1]]

    def test_followup_keeping_a_pending_ticket_sends_the_time(self, deliver: Deliver) -> None:
        """A follow-up keeping a pending ticket pending sends the time, with the ticket's
        own state: OTOBO's TicketUpdate sets a pending time only together with a State."""
        body, _log = deliver("followup", {"FollowUp-State-Keep": "yes",
                                          "FollowUp-State-PendingTime": "+3h"},
                             state="pending reminder", state_type="pending reminder")
        assert body["Ticket"] == {"State": "pending reminder", "PendingTime": {"Diff": 180}}

    def test_followup_keeping_a_pending_state_deskgate_does_not_list(
            self, deliver: Deliver) -> None:
        """A state deskgate's [postmaster.states] does not list: OTOBO's StateType of the
        ticket decides."""
        body, _log = deliver("followup", {"FollowUp-State-Keep": "1",
                                          "FollowUp-State-PendingTime": "+3h"},
                             state="waiting for customer", state_type="pending auto")
        assert body["Ticket"] == {"State": "waiting for customer",
                                  "PendingTime": {"Diff": 180}}


def refuses_pending_without_time(op: str, answer: dict[str, Any]) -> Callable[[Request], Answer]:
    """OTOBO's TicketCreate/TicketUpdate: a pending State without PendingTime is refused
    (TicketUpdate answers MissingParameter)."""
    def handle(r: Request) -> Answer:
        t = (r.json or {}).get("Ticket") or {}
        if "pending" in str(t.get("State", "")) and not t.get("PendingTime"):
            return 200, {}, {"Error": {"ErrorCode": f"{op}.MissingParameter",
                                       "ErrorMessage": "Can't set a ticket on a pending "
                                       "state without pendig time!"}}
        return 200, {}, answer
    return handle


def defaulted(key: str, state: str, why: str) -> tuple[str, str, str]:
    return ("Notice", key, f"{why}: state {state!r} is a pending state, so OTOBO's default "
            "pending time was sent: now + 24 hours (OTOBO's Ticket::Frontend::PendingDiffTime "
            "86400 s)")


class TestPendingStateWithoutTime:
    @pytest.fixture(autouse=True)
    def refusing(self, server: FakeHttp) -> None:
        server.on("POST", "/ws/Ticket", refuses_pending_without_time(
            "TicketCreate", {"TicketID": "7", "TicketNumber": "2026120610000071",
                             "ArticleID": "9"}))
        server.on("PATCH", "/ws/Ticket/7", refuses_pending_without_time(
            "TicketUpdate", {"TicketID": "7", "ArticleID": "10"}))

    def test_new_ticket_in_a_pending_state_without_time(self, deliver: Deliver) -> None:
        """State pending reminder and no State-PendingTime: the ticket arrives, pending
        for OTOBO's default 24 hours, and a Notice says so."""
        body, log = deliver("create", {"State": "pending reminder"})
        assert body["Ticket"]["State"] == "pending reminder"
        assert body["Ticket"]["PendingTime"] == {"Diff": 1440}
        assert defaulted("State-PendingTime", "pending reminder",
                         "no pending time given") in log

    def test_new_ticket_with_a_time_otobo_cannot_take(self, deliver: Deliver) -> None:
        """A State-PendingTime that is no time: the default, after the Warn."""
        body, log = deliver("create", {"State": "pending reminder",
                                       "State-PendingTime": "tomorrow"})
        assert body["Ticket"]["PendingTime"] == {"Diff": 1440}
        assert defaulted("State-PendingTime", "pending reminder",
                         "'tomorrow' is no pending time") in log

    def test_followup_setting_a_pending_state_without_time(self, deliver: Deliver) -> None:
        """FollowUp-State pending reminder on an open ticket without a time: the
        follow-up arrives and the ticket is pending for 24 hours."""
        body, log = deliver("followup", {"FollowUp-State": "pending reminder"})
        assert body["Ticket"] == {"State": "pending reminder", "PendingTime": {"Diff": 1440}}
        assert defaulted("FollowUp-State-PendingTime", "pending reminder",
                         "no pending time given") in log

    def test_followup_with_a_time_otobo_cannot_take(self, deliver: Deliver) -> None:
        """FollowUp-State-PendingTime that is no time, with a pending FollowUp-State."""
        body, log = deliver("followup", {"FollowUp-State": "pending auto close+",
                                         "FollowUp-State-PendingTime": "soon"})
        assert body["Ticket"] == {"State": "pending auto close+",
                                  "PendingTime": {"Diff": 1440}}
        assert defaulted("FollowUp-State-PendingTime", "pending auto close+",
                         "'soon' is no pending time") in log

    def test_followup_naming_the_tickets_own_pending_state(self, deliver: Deliver) -> None:
        """FollowUp-State the ticket already has, without a time: the state is not sent,
        so the ticket keeps its state and its pending time, as in deskgate's store."""
        body, log = deliver("followup", {"FollowUp-State": "pending reminder"},
                            state="pending reminder", state_type="pending reminder")
        assert "Ticket" not in body
        assert not [e for e in log if "PendingTime" in e[1]]
