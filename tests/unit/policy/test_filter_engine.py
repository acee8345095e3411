"""The postmaster filter engine: compiling policies and evaluating them on messages."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.inbound.filters import FilterTrace, compile_filters, run_filters
from gateway.runtime import build_runtime
from tests.unit.policy.conftest import prepared
from tests.unit.policy.mails import mail, with_attachments


def errors_of(make_confdir, policy: str) -> list[str]:
    with pytest.raises(ConfigErrors) as ei:
        load_config(make_confdir(policies={"030-bad.toml": policy}))
    return [str(e) for e in ei.value.errors]


class TestCompile:
    def test_invalid_regex_names_file_filter_and_condition(self, make_confdir):
        """A broken pattern is a config error naming the file, the filter and the condition."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "010-broken"
            match = [{ header = "Subject", value = "ok" }, { header = "From", value = "(unclosed" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """)
        assert len(errs) == 1
        assert "030-bad.toml" in errs[0]
        assert "filter[010-broken].match[1].value" in errs[0]
        assert "invalid regular expression" in errs[0]

    def test_invalid_email_regex_in_any(self, make_confdir):
        """An invalid `email` pattern inside `any` is reported with its position."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "x"
            any = [{ header = "From", email = "[a-" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """)
        assert any("filter[x].any[0].email" in e for e in errs)

    def test_condition_keys_are_checked(self, make_confdir):
        """Unknown condition keys, both value and email, or neither are errors."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "a"
            match = [{ header = "Subject", valeu = "x" }]
            set = { "X-Deskgate-Queue" = "Junk" }
            [[filter]]
            name = "b"
            match = [{ header = "From", value = "x", email = "y" }]
            set = { "X-Deskgate-Queue" = "Junk" }
            [[filter]]
            name = "c"
            match = [{ value = "x" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """)
        text = "\n".join(errs)
        assert "filter[a].match[0]: unknown key(s) valeu" in text
        assert "filter[b].match[0]: give exactly one of value" in text
        assert "filter[c].match[0].header: required" in text

    @pytest.mark.parametrize(("cond", "hint"), [
        ('heder = "Subject", value = "x"', "heder (allowed: header, value, email, not); "
                                           "did you mean header?"),
        ('header = "Subject", vlaue = "x"', "vlaue (allowed: header, value, email, not); "
                                            "did you mean value?"),
        ('header = "From", emial = "x"', "emial (allowed: header, value, email, not); "
                                         "did you mean email?"),
        ('heder = "From", vlaue = "x"', "heder, vlaue (allowed: header, value, email, not); "
                                        "did you mean header for heder, value for vlaue?"),
        ('header = "From", value = "x", colour = "red"',
         "colour (allowed: header, value, email, not)"),
    ])
    def test_misspelt_condition_key_gets_a_hint(self, make_confdir, cond, hint):
        """A condition key close to a known one (heder, vlaue) gets 'did you mean ...?', as
        an unknown X-header does; a key like no known one gets the list only."""
        errs = errors_of(make_confdir, f"""
            [[filter]]
            name = "a"
            match = [{{ {cond} }}]
            set = {{ "X-Deskgate-Queue" = "Junk" }}
        """)
        assert [e.split(": ", 1)[1] for e in errs] == [
            f"filter[a].match[0]: unknown key(s) {hint}"], errs

    def test_unknown_x_header_and_unknown_named_group(self, make_confdir):
        """Setting an unknown X-Deskgate- header or naming a missing group is refused."""
        errs = errors_of(make_confdir, r"""
            [[filter]]
            name = "a"
            match = [{ header = "Subject", value = "(?P<id>\\d+)" }]
            set = { "X-Deskgate-Qeueu" = "Junk", "X-Deskgate-Title" = "[**\\nope**]" }
        """)
        text = "\n".join(errs)
        assert "filter[a].set.X-Deskgate-Qeueu: unknown X-header" in text
        assert "[**\\nope**] names no group" in text

    def test_fixed_values_that_cannot_work_are_errors(self, make_confdir):
        """A typo in a fixed queue, state, priority or sender type is caught by check."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "a"
            match = [{ header = "Subject", value = "x" }]
            [filter.set]
            "X-Deskgate-Queue" = "Junkk"
            "X-OTOBO-FollowUp-State" = "opne"
            "X-Deskgate-Priority" = "9 urgent"
            "X-Deskgate-SenderType" = "robot"
        """)
        text = "\n".join(errs)
        assert "filter[a].set.X-Deskgate-Queue: queue 'Junkk' is not defined" in text
        assert "filter[a].set.X-OTOBO-FollowUp-State: state 'opne'" in text
        assert "filter[a].set.X-Deskgate-Priority: priority '9 urgent'" in text
        assert "filter[a].set.X-Deskgate-SenderType: sender type 'robot'" in text

    def test_substituted_values_are_checked_at_run_time(self, policy_config):
        """A value built from a capture cannot be checked in advance and is accepted."""
        cfg = policy_config(r"""
            [[filter]]
            name = "a"
            match = [{ header = "Subject", value = "queue=(\\w+)" }]
            set = { "X-Deskgate-Queue" = "[***]" }
        """)
        assert len(compile_filters(cfg).filters) == 1

    def test_same_x_header_twice_in_one_set_is_refused(self, make_confdir):
        """One filter setting the same X-header under two prefixes (or in two cases) is
        ambiguous and refused by check, naming file, filter and both keys."""
        pol = one('[{ header = "Subject", value = "printer" }]',
                  '{ "X-OTOBO-Queue" = "Sales", "X-Deskgate-Queue" = "Junk" }')
        with pytest.raises(ConfigErrors) as ei:
            load_config(make_confdir(policies={"030-dup.toml": pol}))
        text = "\n".join(str(e) for e in ei.value.errors)
        assert "030-dup.toml" in text
        assert "filter[010].set.X-Deskgate-Queue" in text
        assert "X-OTOBO-Queue" in text

    def test_same_plain_header_twice_in_one_set_is_refused(self, make_confdir):
        """`X-Marker` and `x-marker` in one set name the same header: refused."""
        pol = one('[{ header = "Subject", value = "printer" }]',
                  '{ "X-Marker" = "a", "x-marker" = "b" }')
        with pytest.raises(ConfigErrors) as ei:
            load_config(make_confdir(policies={"030-dup.toml": pol}))
        assert any("filter[010].set.x-marker" in str(e) for e in ei.value.errors)

    def test_duplicate_names_are_an_error(self, make_confdir):
        """Two filters with the same name are refused (names define the order)."""
        errs = errors_of(make_confdir, """
            [[filter]]
            name = "same"
            match = [{ header = "Subject", value = "a" }]
            set = { "X-Deskgate-Queue" = "Junk" }
            [[filter]]
            name = "same"
            match = [{ header = "Subject", value = "b" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """)
        assert any("duplicate filter name 'same'" in e for e in errs)

    def test_filters_run_in_name_order(self, policy_config):
        """Filters are sorted by name, whatever the file order."""
        cfg = policy_config("""
            [[filter]]
            name = "020-second"
            match = [{ header = "Subject", value = "." }]
            set = { "X-Deskgate-Queue" = "Sales" }
            [[filter]]
            name = "010-first"
            match = [{ header = "Subject", value = "." }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """)
        assert [f.name for f in compile_filters(cfg).filters] == ["010-first", "020-second"]




def one(match: str, set_: str = '{ "X-Deskgate-Queue" = "Junk" }', extra: str = "") -> str:
    return f'[[filter]]\nname = "010"\nmatch = {match}\nset = {set_}\n{extra}\n'


class TestEvaluate:
    def test_case_insensitive_and_unanchored(self, run_policy):
        """A pattern matches anywhere in the value, ignoring case."""
        ctx = run_policy(one('[{ header = "Subject", value = "PRINTER" }]'), mail())
        assert ctx.params["Queue"] == "Junk"

    def test_all_match_conditions_must_hold(self, run_policy):
        """One failing `match` condition stops the filter."""
        ctx = run_policy(one('[{ header = "Subject", value = "printer" }, '
                             '{ header = "From", value = "nobody" }]'), mail())
        assert "Queue" not in ctx.params

    def test_any_needs_one(self, run_policy):
        """With `any`, at least one of its conditions must hold as well."""
        pol = one('[{ header = "Subject", value = "printer" }]',
                  extra='any = [{ header = "From", value = "zed" }, { header = "From", '
                        'value = "carla" }]')
        assert run_policy(pol, mail()).params["Queue"] == "Junk"
        pol2 = one('[{ header = "Subject", value = "printer" }]',
                   extra='any = [{ header = "From", value = "zed" }]')
        assert "Queue" not in run_policy(pol2, mail()).params

    def test_not_negates(self, run_policy):
        """`not = true` holds when the pattern does not match."""
        pol = one('[{ header = "To", value = "support@example\\\\.org", not = true }]')
        assert "Queue" not in run_policy(pol, mail(to="support@example.org")).params
        assert run_policy(pol, mail(to="sales@example.org")).params["Queue"] == "Junk"

    def test_email_is_anchored_per_address(self, run_policy):
        """`email` must match a whole address, any of the header's addresses."""
        pol = one('[{ header = "Cc", email = "boss@customer\\\\.test" }]')
        raw = mail(cc="Ann <ann@customer.test>, The Boss <BOSS@customer.test>")
        assert run_policy(pol, raw).params["Queue"] == "Junk"
        assert "Queue" not in run_policy(pol, mail(cc="bigboss@customer.test")).params
        assert "Queue" not in run_policy(pol, mail(cc="boss@customer.test.evil")).params

    def test_email_in_a_header_nesting_comments_too_deep_for_the_parser(self, run_policy):
        """An address header whose comments nest deeper than Python's address parser can
        recurse is read as the bare addresses in it, not a crash of the filter."""
        pol = one('[{ header = "Cc", email = "boss@customer\\\\.test" }]')
        deep = "(" * 1200 + ")" * 1200
        ctx = run_policy(pol, mail(cc=f"boss@customer.test {deep}"))
        assert ctx.params["Queue"] == "Junk"

    def test_missing_header_is_empty_string(self, run_policy):
        """A missing header matches ^$ and fails any pattern needing a character."""
        assert run_policy(one('[{ header = "X-Spam-Flag", value = "^$" }]'),
                          mail()).params["Queue"] == "Junk"
        assert "Queue" not in run_policy(one('[{ header = "X-Spam-Flag", value = "." }]'),
                                         mail()).params

    def test_repeated_header_any_occurrence(self, run_policy):
        """A header present several times holds when one occurrence matches."""
        raw = mail(headers=[("X-Tag", "alpha"), ("X-Tag", "beta")])
        assert run_policy(one('[{ header = "X-Tag", value = "^beta$" }]'),
                          raw).params["Queue"] == "Junk"

    def test_body_pseudo_header_with_named_capture(self, run_policy):
        """`Body` is the decoded text body; named groups fill [**\\name**]."""
        pol = one(r'[{ header = "Body", value = "asset:\\s*(?P<asset>[A-Z]+-\\d+)" }]',
                  r'{ "X-Deskgate-DynamicField-Asset" = "[**\\asset**]", '
                  r'"X-Deskgate-Title" = "Asset [***] broken" }')
        ctx = run_policy(pol, mail(body="Hi,\nasset: PRN-0042 is broken\n"))
        assert ctx.params["DynamicField-Asset"] == "PRN-0042"
        assert ctx.params["Title"] == "Asset PRN-0042 broken"

    def test_star_is_last_capturing_condition(self, run_policy):
        """[***] takes group 1 of the last positive condition that captured."""
        pol = one(r'[{ header = "Subject", value = "(printer)" }, '
                  r'{ header = "From", value = "(carla)" }, { header = "To", value = "support" }]',
                  '{ "X-Deskgate-Title" = "[***]" }')
        assert run_policy(pol, mail()).params["Title"] == "Carla"

    def test_attachment_pseudo_headers(self, run_policy):
        """AttachmentCount and AttachmentExists are computed, with any prefix."""
        pol = one('[{ header = "X-OTOBO-AttachmentCount", value = "^2$" }, '
                  '{ header = "X-Deskgate-AttachmentExists", value = "^yes$" }]')
        assert run_policy(pol, with_attachments(["a.pdf", "b.pdf"])).params["Queue"] == "Junk"
        assert "Queue" not in run_policy(pol, with_attachments(["a.pdf"])).params
        pol0 = one('[{ header = "X-Deskgate-AttachmentExists", value = "^no$" }]')
        assert run_policy(pol0, mail()).params["Queue"] == "Junk"

    def test_stop_after_match(self, run_policy):
        """stop_after_match ends the evaluation; later filters do not run."""
        pol = """
            [[filter]]
            name = "010"
            stop_after_match = true
            match = [{ header = "Subject", value = "printer" }]
            set = { "X-Deskgate-Queue" = "Junk" }
            [[filter]]
            name = "020"
            match = [{ header = "Subject", value = "printer" }]
            set = { "X-Deskgate-Queue" = "Sales", "X-Deskgate-Priority" = "5 very high" }
        """
        ctx = run_policy(pol, mail())
        assert ctx.params["Queue"] == "Junk" and "Priority" not in ctx.params

    def test_later_filters_see_set_values_with_any_prefix(self, run_policy):
        """A value set as X-Deskgate-Queue is seen by a later filter as X-OTRS-Queue."""
        pol = """
            [[filter]]
            name = "010"
            match = [{ header = "Subject", value = "printer" }]
            set = { "X-Deskgate-Queue" = "Junk", "X-Marker" = "seen" }
            [[filter]]
            name = "020"
            match = [{ header = "X-OTRS-Queue", value = "^junk$" },
                     { header = "X-Marker", value = "seen" }]
            set = { "X-Deskgate-Priority" = "1 very low" }
        """
        ctx = run_policy(pol, mail())
        assert ctx.params["Priority"] == "1 very low"
        assert ("X-Marker", "seen") in ctx.parsed.headers
        assert ("X-Deskgate-Queue", "Junk") in ctx.parsed.headers

    def test_timeout_counts_as_not_holding_and_logs_warn(self, run_policy):
        """A pathological pattern times out: the condition fails (even negated), Warn logged."""
        conf = {"60-pm.toml": "[postmaster]\nfilter_timeout = \"20ms\"\n"}
        raw = mail(subject="a" * 40 + "!")
        ctx = run_policy(one('[{ header = "Subject", value = "(a|aa)+$" }]'), raw, conf=conf)
        assert "Queue" not in ctx.params
        assert any(e.priority == "Warn" and "timed out" in e.value for e in ctx.log.entries)
        ctx2 = run_policy(one('[{ header = "Subject", value = "(a|aa)+$", not = true }]'), raw,
                          conf=conf)
        assert "Queue" not in ctx2.params

    def test_explain_records_every_condition(self, policy_config):
        """The explaining run lists each condition with held/why, also after a failure."""
        cfg = policy_config(one('[{ header = "Subject", value = "nomatch" }, '
                                '{ header = "From", value = "carla" }]'))
        rt = build_runtime(cfg)
        ctx = prepared(rt, mail())
        ctx.params.clear()
        traces: list[FilterTrace] = []
        run_filters(rt.filters, ctx, traces)
        (t,) = traces
        assert not t.matched
        assert [c.held for c in t.conditions] == [False, True]
        assert "no match in Subject" in t.conditions[0].reason
        assert "'Carla' matched in From" in t.conditions[1].reason


class TestTrust:
    POLICY = one('[{ header = "Subject", value = "vip" }]',
                 '{ "X-Deskgate-Priority" = "5 very high" }')

    def test_untrusted_x_headers_are_stripped_before_filters(self, run_policy):
        """Untrusted mail loses X-OTOBO-Queue; a filter can still set params."""
        raw = mail(subject="vip request", headers=[("X-OTOBO-Queue", "Sales"),
                                                   ("X-Deskgate-Ignore", "yes")])
        ctx = run_policy(self.POLICY, raw)
        assert "Queue" not in ctx.params and "Ignore" not in ctx.params
        assert ctx.params["Priority"] == "5 very high"
        assert not any(k.lower().startswith("x-otobo-") for k, _ in ctx.parsed.headers)
        assert ctx.action == "new"

    def test_trusted_x_headers_are_kept(self, run_policy):
        """Trusted mail keeps its X-headers as params (any recognised prefix)."""
        raw = mail(subject="vip request", headers=[("X-OTRS-Queue", "Sales"),
                                                   ("X-OTOBO-DynamicField-Contract", "C-7")])
        ctx = run_policy(self.POLICY, raw, trusted=True)
        assert ctx.params["Queue"] == "Sales"
        assert ctx.params["DynamicField-Contract"] == "C-7"
        assert ctx.params["Priority"] == "5 very high"

    def test_trusted_ignore_header_drops(self, run_policy):
        """X-Deskgate-Ignore from a trusted source ends the pipeline as ignore."""
        ctx = run_policy("", mail(headers=[("X-Deskgate-Ignore", "yes")]), trusted=True)
        assert ctx.action == "ignore"


class TestPatternCost:
    @pytest.mark.parametrize(("pattern", "fast"), [
        (r"^yes$", True), (r"\bprinter\b", True), (r"support@example\.org", True),
        (r"[A-Z]{3}-\d{4}", True), (r"x[- ]?mailer", True), (r"(?P<id>ab)c", True),
        (r"(a|aa)+$", False), (r"a.*b", False), (r"\s+", False), (r"(ab){2}", False),
        (r"(a)\1", False), (r"(foo){e<=1}", False), (r"\p{L}", False), (r"a{1,100}", False),
    ])
    def test_backtracking_bound(self, pattern, fast):
        """Only patterns with bounded, unnested repeats skip the time budget."""
        from gateway.inbound.regexcost import backtracking_bound

        assert (backtracking_bound(pattern) is not None) is fast

    def test_fast_patterns_still_time_out_on_long_values(self, run_policy):
        """A long value always runs under the time budget, so a timeout is still caught."""
        conf = {"60-pm.toml": "[postmaster]\nfilter_timeout = \"1ms\"\n"}
        pol = """
            [[filter]]
            name = "010"
            match = [{ header = "Body", value = "(a|aa)+b" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """
        ctx = run_policy(pol, mail(body="a" * 5000 + "\n"), conf=conf)
        assert "Queue" not in ctx.params
        assert any("timed out" in e.value for e in ctx.log.entries)

    def test_message_budget_bounds_many_slow_patterns(self, run_policy):
        """Many pathological patterns on one message stop at the per-message budget."""
        conf = {"60-pm.toml": "[postmaster]\nfilter_timeout = \"20ms\"\n"}
        pol = "\n".join(f"""
            [[filter]]
            name = "{i:03d}"
            match = [{{ header = "Subject", value = "(a|aa)+$" }}]
            set = {{ "X-Deskgate-Queue" = "Junk" }}
        """ for i in range(30))
        ctx = run_policy(pol, mail(subject="a" * 40 + "!"), conf=conf)
        warns = [e for e in ctx.log.entries if e.priority == "Warn" and "timed out" in e.value]
        assert len(warns) == 30
        assert "budget is used up" in warns[-1].value
        assert "Queue" not in ctx.params

    @pytest.mark.parametrize(("pattern", "literal"), [
        (r"printer\s+(?P<ref>x)", "printer"), (r"^Subject: hello", "subject: hello"),
        (r"\bServer:\s*", "server:"), (r"ab*c", None), (r"(printer)", None),
        (r"a|bcd", None), (r"Straße", None), (r"x{e<=1}yz", None),
    ])
    def test_required_literal(self, pattern, literal):
        """The literal shortcut takes only the leading literal run, ASCII, 3+ characters."""
        from gateway.inbound.regexcost import required_literal

        assert required_literal(pattern) == literal

    @pytest.mark.parametrize("text", ["\u212aelvin", "\u017ferver:", "pr\u0131nter", "PRINTER",
                                      "SERVER:"])
    def test_literal_shortcut_never_hides_a_match(self, run_policy, text):
        """Characters that match ASCII letters case-insensitively (K sign, long s, dotless i)
        still match through the shortcut."""
        import regex

        pattern = {"\u212a": "kelvin", "\u017f": "server:", "\u0131": "PRINTER"}.get(
            next((ch for ch in text if not ch.isascii()), ""), text.lower())
        assert regex.search(pattern, text, regex.IGNORECASE)
        pol = f"""
            [[filter]]
            name = "010"
            match = [{{ header = "Body", value = "{pattern}\\\\s*" }}]
            set = {{ "X-Deskgate-Queue" = "Junk" }}
        """
        assert run_policy(pol, mail(body=f"x {text} y\n")).params.get("Queue") == "Junk"
