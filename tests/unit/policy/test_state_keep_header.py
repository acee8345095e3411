"""State-Keep exists only as FollowUp-State-Keep (OTOBO's KeepStateHeader): a filter that
sets a plain State-Keep is refused with a hint, the FollowUp- one still works."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.inbound.xheaders import canonical

PREFIXES = ("X-Deskgate-", "X-OTOBO-", "X-OTRS-")


def errors_of(make_confdir, policy: str) -> list[str]:
    with pytest.raises(ConfigErrors) as ei:
        load_config(make_confdir(policies={"030-keep.toml": policy}))
    return [str(e) for e in ei.value.errors]


class TestStateKeep:
    @pytest.mark.parametrize("name", ["X-OTOBO-State-Keep", "X-OTRS-state-keep",
                                      "X-Deskgate-State-Keep"])
    def test_plain_state_keep_is_not_recognised(self, name):
        """OTOBO reads no X-OTOBO-State-Keep (a new ticket has no state to keep)."""
        assert canonical(name, PREFIXES) is None

    @pytest.mark.parametrize("name", ["X-OTOBO-FollowUp-State-Keep",
                                      "x-otrs-followup-state-keep"])
    def test_followup_state_keep_is_recognised(self, name):
        """FollowUp-State-Keep, with any prefix and in any case, still is."""
        assert canonical(name, PREFIXES) == "FollowUp-State-Keep"

    def test_a_filter_setting_state_keep_is_refused_with_a_hint(self, make_confdir):
        """check refuses the filter, says the header is unknown and names the one that
        keeps a follow-up's state."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "keep"
            match = [{ header = "Subject", value = "x" }]
            set = { "X-OTOBO-State-Keep" = "1" }
        """)
        [err] = [e for e in errs if "State-Keep" in e]
        assert "filter[keep].set.X-OTOBO-State-Keep: unknown X-header" in err
        assert "X-OTOBO-FollowUp-State-Keep" in err

    def test_a_filter_setting_followup_state_keep_is_accepted(self, make_confdir):
        """The FollowUp- name loads."""
        cfg = load_config(make_confdir(policies={"030-keep.toml": """
            [[filter]]
            name = "keep"
            match = [{ header = "Subject", value = "x" }]
            set = { "X-OTOBO-FollowUp-State-Keep" = "1" }
        """}))
        assert cfg is not None

    def test_a_misspelt_x_header_names_the_close_one(self, make_confdir):
        """A typo in a recognised name gets a did-you-mean with the same prefix."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "typo"
            match = [{ header = "Subject", value = "x" }]
            set = { "X-OTRS-Qeueu" = "Junk", "X-OTRS-FollowUp-Stat-Keep" = "1" }
        """)
        text = "\\n".join(errs)
        assert "set.X-OTRS-Qeueu: unknown X-header; did you mean X-OTRS-Queue?" in text
        assert ("set.X-OTRS-FollowUp-Stat-Keep: unknown X-header; did you mean "
                "X-OTRS-FollowUp-State-Keep?") in text
