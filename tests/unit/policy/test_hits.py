"""Filter and rule hits as structured data: (kind, name, hit, reason), read by the log."""

from __future__ import annotations

from gateway.model import Hit
from gateway.runtime import build_runtime
from tests.unit.policy.conftest import prepared
from tests.unit.policy.mails import mail

POLICY = r"""
[[filter]]
name = "010-sales"
match = [{ header = "Subject", value = "^offer" }]
set = { "X-Deskgate-Queue" = "Sales" }

[[filter]]
name = "020-never"
match = [{ header = "Subject", value = "^zzz$" }]
set = { "X-Deskgate-Queue" = "Junk" }
"""


class TestHits:
    def test_every_filter_and_rule_is_recorded(self, policy_config):
        """Each filter (hit or not), the loop rule and the bounce rule leave one Hit."""
        ctx = prepared(build_runtime(policy_config(POLICY)), mail("offer for you"))
        assert ctx.hits == [
            Hit("filter", "010-sales", True, "matched; set X-Deskgate-Queue='Sales'"),
            Hit("filter", "020-never", False, "no match"),
            Hit("loop", "", False, "no loop signal"),
            Hit("bounce", "", False, "not a delivery status notification"),
        ]

    def test_log_and_trace_are_written_from_the_hits(self, policy_config):
        """The communication log entries and the trace of a message come from its hits that
        hit; misses are not logged."""
        raw = mail("offer", headers={"Precedence": "bulk"})
        ctx = prepared(build_runtime(policy_config(POLICY)), raw)
        hits = [h for h in ctx.hits if h.hit]
        assert [h.kind for h in hits] == ["filter", "loop"]
        entries = [(e.priority, e.key, e.value) for e in ctx.log.entries
                   if e.key in ("Filter", "Loop")]
        assert entries == [("Info", "Filter", "010-sales: matched; set X-Deskgate-Queue='Sales'"),
                           ("Notice", "Loop", "signal: Precedence: bulk")]
        assert "filter 010-sales: matched; set X-Deskgate-Queue='Sales'" in ctx.trace
        assert "loop: signal: Precedence: bulk" in ctx.trace

    def test_stop_after_match_in_the_reason(self, policy_config):
        """A filter with stop_after_match says so in its hit, and later filters leave none."""
        policy = POLICY.replace('set = { "X-Deskgate-Queue" = "Sales" }',
                                'set = { "X-Deskgate-Queue" = "Sales" }\n'
                                'stop_after_match = true', 1)
        ctx = prepared(build_runtime(policy_config(policy)), mail("offer"))
        filters = [h for h in ctx.hits if h.kind == "filter"]
        assert filters == [Hit("filter", "010-sales", True,
                               "matched; set X-Deskgate-Queue='Sales'; stop_after_match")]
