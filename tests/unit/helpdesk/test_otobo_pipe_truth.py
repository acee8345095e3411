"""The PostMaster pipe passes deskgate's yes/no decisions in a form OTOBO reads the same
way: FollowUp-State-Keep, IsVisibleForCustomer and Loop as 1/0 or yes, never the raw
value (OTOBO keeps a state for 'no', stores 'off' as the visibility flag)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from gateway.helpdesk.base import HandoffItem
from gateway.helpdesk.otobo_pipe import OtoboPostmaster, decision_headers
from tests.integration.helpdesk.items import item, mail


@pytest.fixture
def cfg(make_confdir: Callable[..., Path]) -> Config:
    return load_config(make_confdir({"60.toml": """
        [helpdesk]
        type = "otobo-postmaster"
        command = ["/bin/true"]
        """}))


def followup(decisions: dict[str, str], visible: bool = True) -> HandoffItem:
    it = item(mail("Re: s"), kind="followup", queue="Support", decisions=decisions)
    return dataclasses.replace(it, article={**it.article, "is_visible_for_customer": visible})


class TestFollowUpStateKeep:
    @pytest.mark.parametrize("value", ["1", "yes", "TRUE", "on", "2", "keep", "y"])
    def test_a_kept_state_is_sent_as_1(self, cfg: Config, value: str) -> None:
        """Every value deskgate keeps the state for reaches OTOBO as 1."""
        got = dict(decision_headers(followup({"FollowUp-State-Keep": value}), cfg))
        assert got["FollowUp-State-Keep"] == "1"

    @pytest.mark.parametrize("value", ["", "0", "no", "No", "false", "off", " OFF "])
    def test_a_state_not_kept_sends_no_header(self, cfg: Config, value: str) -> None:
        """No, false, off (which OTOBO would take as keep) and 0 send no Keep header:
        OTOBO moves the ticket as deskgate did."""
        got = dict(decision_headers(followup({"FollowUp-State-Keep": value,
                                              "FollowUp-State": "open"}), cfg))
        assert "FollowUp-State-Keep" not in got
        assert got["FollowUp-State"] == "open"

    def test_rendered_message_carries_the_normalised_value(self, cfg: Config) -> None:
        """The message piped into OTOBO has X-OTOBO-FollowUp-State-Keep: 1 for 'keep' and
        no Keep header for 'no'."""
        pipe = OtoboPostmaster(cfg)
        kept, _ = pipe.render(followup({"FollowUp-State-Keep": "keep"}))
        assert b"\nX-OTOBO-FollowUp-State-Keep: 1\n" in kept
        moved, _ = pipe.render(followup({"FollowUp-State-Keep": "no"}))
        assert b"State-Keep" not in moved


class TestIsVisibleForCustomer:
    @pytest.mark.parametrize(("value", "visible", "sent"), [
        ("yes", True, "1"), ("Yes please", True, "1"), ("on", True, "1"),
        ("off", False, "0"), ("no", False, "0"), ("", True, "1")])
    def test_new_ticket_sends_1_or_0(self, cfg: Config, value: str, visible: bool,
                                     sent: str) -> None:
        """A new ticket's article visibility reaches OTOBO as deskgate decided it, 1 or 0
        (OTOBO stores any other value as it is)."""
        it = item(mail("s"), decisions={"IsVisibleForCustomer": value})
        it = dataclasses.replace(it, article={**it.article, "is_visible_for_customer": visible})
        assert dict(decision_headers(it, cfg))["IsVisibleForCustomer"] == sent

    @pytest.mark.parametrize(("value", "visible", "sent"), [
        ("yes", True, "1"), ("TRUE.", True, "1"), ("off", False, "0"), ("false", False, "0")])
    def test_followup_sends_1_or_0(self, cfg: Config, value: str, visible: bool,
                                   sent: str) -> None:
        """The same for a follow-up's FollowUp-IsVisibleForCustomer."""
        got = dict(decision_headers(followup({"FollowUp-IsVisibleForCustomer": value},
                                             visible), cfg))
        assert got["FollowUp-IsVisibleForCustomer"] == sent


class TestLoopAndIgnore:
    @pytest.mark.parametrize("value", ["1", "yes", "on", "On", "Yes please", "TRUE."])
    def test_loop_values_deskgate_sets_are_sent(self, cfg: Config, value: str) -> None:
        """Every value that marks the message as a loop in deskgate sends Loop: yes."""
        assert dict(decision_headers(item(mail("s"), decisions={"Loop": value}),
                                     cfg))["Loop"] == "yes"

    @pytest.mark.parametrize("value", ["", "0", "no", "false", "off"])
    def test_loop_values_that_do_not_set_it_send_nothing(self, cfg: Config,
                                                         value: str) -> None:
        """0, no, false, off send no Loop header (OTOBO would take 'no' as a loop)."""
        assert "Loop" not in dict(decision_headers(item(mail("s"), decisions={"Loop": value}),
                                                   cfg))

    def test_ignore_is_never_passed(self, cfg: Config) -> None:
        """deskgate decided Ignore before the hand-off: an Ignore value it did not act on
        ('no') does not reach OTOBO, which would drop the message for 'not true'."""
        got = dict(decision_headers(item(mail("s"), decisions={"Ignore": "not true"}), cfg))
        assert "Ignore" not in got
