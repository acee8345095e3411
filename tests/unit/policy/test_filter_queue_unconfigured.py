"""A filter's fixed queue when conf.d defines no [[queue]]: then every ticket goes to
postmaster.default_queue, the one queue there is. `check` refuses any other name, as it
does a typo when queues are defined, and the default queue itself works without an
Error on every message."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.inbound.route import route
from gateway.runtime import build_runtime
from tests.unit.policy.conftest import prepared
from tests.unit.policy.mails import mail

NO_QUEUES = """
[gateway]
hostname = "helpdesk.test"
state_dir = "var"

[lmtp]
listen = ["unix:var/run/lmtp.sock"]

[postmaster]
default_queue = "Inbox"

[dashboard]
listen = ""
"""


def policy(set_table: str) -> str:
    return ('[[filter]]\nname = "a"\nmatch = [{ header = "Subject", value = "printer" }]\n'
            f"set = {set_table}\n")


class TestCheckWithoutQueues:
    @pytest.mark.parametrize("header", ["X-Deskgate-Queue", "X-OTOBO-Queue",
                                        "X-Deskgate-FollowUp-Queue"])
    def test_a_queue_that_cannot_exist_is_refused(self, make_confdir, header):
        """No [[queue]]: a fixed queue other than the default queue is refused, naming
        the file, the filter's key and why (only the default queue exists)."""
        conf = make_confdir({"10-base.toml": NO_QUEUES}, base=False,
                            policies={"030-route.toml": policy(f'{{ "{header}" = "Sales" }}')})
        with pytest.raises(ConfigErrors) as ei:
            load_config(conf)
        errs = [str(e) for e in ei.value.errors]
        assert len(errs) == 1, errs
        assert "030-route.toml" in errs[0], errs
        assert f"filter[a].set.{header}: queue 'Sales'" in errs[0], errs
        assert "no [[queue]] is configured" in errs[0], errs
        assert "postmaster.default_queue 'Inbox'" in errs[0], errs

    @pytest.mark.parametrize("name", ["Inbox", "inbox"])
    def test_the_default_queue_is_accepted(self, make_confdir, name):
        """No [[queue]]: the default queue (in any case) is a queue that exists."""
        pol = policy(f'{{ "X-Deskgate-Queue" = "{name}" }}')
        conf = make_confdir({"10-base.toml": NO_QUEUES}, base=False,
                            policies={"030-route.toml": pol})
        assert [f.name for f in load_config(conf).filters] == ["a"]

    def test_a_value_from_a_match_is_still_accepted(self, make_confdir):
        """A queue built from a match cannot be checked in advance."""
        conf = make_confdir({"10-base.toml": NO_QUEUES}, base=False, policies={
            "030-route.toml": ('[[filter]]\nname = "a"\n'
                               'match = [{ header = "Subject", value = "queue=(\\\\w+)" }]\n'
                               'set = { "X-Deskgate-Queue" = "[***]" }\n')})
        assert [f.name for f in load_config(conf).filters] == ["a"]


class TestRouteWithoutQueues:
    def test_the_default_queue_from_a_filter_logs_no_error(self, make_confdir):
        """No [[queue]]: a filter naming the default queue routes there, with no
        Error entry saying that the queue does not exist."""
        conf = make_confdir({"10-base.toml": NO_QUEUES}, base=False,
                            policies={"030-route.toml": policy('{ "X-Deskgate-Queue" = "inbox" }')})
        rt = build_runtime(load_config(conf))
        ctx = prepared(rt, mail(subject="printer broken"))
        route(ctx, rt)
        assert ctx.queue == "Inbox"
        assert [e for e in ctx.log.entries if e.priority == "Error"] == []
