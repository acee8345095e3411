"""Property tests: the filter engine agrees with a small reference evaluator."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.commlog import CommObj
from gateway.config import Config, FilterConfig
from gateway.inbound.filters import compile_filters, run_filters
from gateway.inbound.parse import parse_message
from gateway.model import Envelope, MessageContext

HEADERS = ["Subject", "From", "X-Tag"]
COND_HEADERS = [*HEADERS, "X-Missing", "X-OTOBO-Queue"]


@dataclass(frozen=True)
class Cond:
    header: str
    pattern: str
    negate: bool


@dataclass(frozen=True)
class Filt:
    name: str
    match: tuple[Cond, ...]
    any: tuple[Cond, ...]
    sets: tuple[tuple[str, str], ...]
    stop: bool


literal = st.sampled_from(["", "a", "b", "c", "ab", "bc", "ca", "."])
affix = st.sampled_from(["", "", "", "a", "b", "."])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    body = draw(literal)
    if draw(st.booleans()):
        body = f"{draw(affix)}({body}){draw(affix)}"
    if draw(st.booleans()):
        body = "^" + body
    if draw(st.booleans()):
        body += "$"
    return body


conds = st.builds(Cond, header=st.sampled_from(COND_HEADERS), pattern=patterns(),
                  negate=st.booleans())
set_values = st.sampled_from(["a", "b", "[***]", "x[***]y"])
sets = st.lists(st.tuples(st.sampled_from(["X-Deskgate-Queue", "X-Tag", "X-Deskgate-Title"]),
                          set_values), min_size=1, max_size=2, unique_by=lambda t: t[0])


@st.composite
def filters(draw: st.DrawFn) -> list[Filt]:
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        out.append(Filt(name=f"{i:03d}", match=tuple(draw(st.lists(conds, min_size=1,
                                                                    max_size=3))),
                        any=tuple(draw(st.lists(conds, max_size=3))),
                        sets=tuple(draw(sets)), stop=draw(st.booleans())))
    return out


header_values = st.sampled_from(["", "a", "ab", "abc", "b c", "cab", "A Bc", "bcabc"])
messages = st.fixed_dictionaries({h: header_values for h in HEADERS})

PARAM = {"x-deskgate-queue": "Queue", "x-otobo-queue": "Queue", "x-deskgate-title": "Title"}


def reference(fs: list[Filt], headers: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The semantics of docs/policies.md, written as plainly as possible."""
    hdrs = {k.lower(): v for k, v in headers.items()}
    params: dict[str, str] = {}

    def value(h: str) -> str:
        if h.lower() in PARAM:
            return params.get(PARAM[h.lower()], "")
        return hdrs.get(h.lower(), "")

    def test(c: Cond) -> tuple[bool, re.Match[str] | None]:
        m = re.search(c.pattern, value(c.header), re.IGNORECASE)
        return (m is not None) != c.negate, (m if m is not None and not c.negate else None)

    for f in sorted(fs, key=lambda f: f.name):
        star: str | None = None
        ok = True
        for c in f.match:
            held, m = test(c)
            if not held:
                ok = False
                break
            if m is not None and m.re.groups:
                star = m.group(1) or ""
        if ok and f.any:
            ok = False
            for c in f.any:
                held, m = test(c)
                if held:
                    ok = True
                    if m is not None and m.re.groups:
                        star = m.group(1) or ""
                    break
        if not ok:
            continue
        for k, template in f.sets:
            v = template.replace("[***]", star or "")
            if k.lower() in PARAM:
                params[PARAM[k.lower()]] = v
            hdrs[k.lower()] = v
        if f.stop:
            break
    return params, hdrs


def engine(fs: list[Filt], headers: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    fcs = tuple(FilterConfig(
        name=f.name, match=tuple({"header": c.header, "value": c.pattern, "not": c.negate}
                                 for c in f.match),
        any=tuple({"header": c.header, "value": c.pattern, "not": c.negate} for c in f.any),
        set=dict(f.sets), stop_after_match=f.stop, source="prop.toml") for f in fs)
    cfg = Config(root=Path("/nonexistent"), conf_dir=Path("/nonexistent/conf.d"), filters=fcs)
    raw = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\nbody\r\n"
    ctx = MessageContext(envelope=Envelope("a@b.test", ("c@d.test",), raw.encode()),
                         log=CommObj("Message"))
    ctx.parsed = parse_message(raw.encode())
    run_filters(compile_filters(cfg), ctx)
    hdrs = {k.lower(): v for k, v in ctx.parsed.headers}
    return ctx.params, hdrs


class TestAgainstReference:
    @settings(max_examples=300, deadline=None)
    @given(fs=filters(), headers=messages)
    def test_engine_matches_reference(self, fs, headers):
        """For random filters and headers, params and headers equal the reference's."""
        assert engine(fs, headers) == reference(fs, headers)

    @settings(max_examples=100, deadline=None)
    @given(fs=filters(), headers=messages)
    def test_explain_does_not_change_the_outcome(self, fs, headers):
        """Explaining (evaluating every condition) gives the same result as the hot path."""
        fcs = tuple(FilterConfig(
            name=f.name, match=tuple({"header": c.header, "value": c.pattern, "not": c.negate}
                                     for c in f.match),
            any=tuple({"header": c.header, "value": c.pattern, "not": c.negate} for c in f.any),
            set=dict(f.sets), stop_after_match=f.stop) for f in fs)
        cfg = Config(root=Path("/nonexistent"), conf_dir=Path("/nonexistent/conf.d"),
                     filters=fcs)
        raw = ("".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\nb\r\n").encode()
        results = []
        for explain in (None, []):
            ctx = MessageContext(envelope=Envelope("a@b.test", ("c@d.test",), raw),
                                 log=CommObj("Message"))
            ctx.parsed = parse_message(raw)
            run_filters(compile_filters(cfg), ctx, explain)
            results.append((ctx.params, ctx.parsed.headers))
        assert results[0] == results[1]

    @settings(max_examples=300, deadline=None)
    @given(cond=conds, negate=st.booleans(), headers=messages)
    def test_single_condition_capture(self, cond, negate, headers):
        """One condition and a [***] value: held/not and group 1 agree with the reference."""
        c = Cond(cond.header, cond.pattern, negate)
        fs = [Filt("000", (c,), (), (("X-Deskgate-Title", "<[***]>"),), False)]
        assert engine(fs, headers) == reference(fs, headers)

    @settings(max_examples=300, deadline=None)
    @given(any_=st.lists(conds, min_size=1, max_size=3), headers=messages)
    def test_any_capture_comes_from_first_holding(self, any_, headers):
        """With `any`, the capture comes from the first condition that holds."""
        always = Cond("Subject", "", False)
        fs = [Filt("000", (always,), tuple(any_), (("X-Deskgate-Title", "<[***]>"),), False)]
        assert engine(fs, headers) == reference(fs, headers)


ADDRESS_VALUES = ["", "ab@c.test", "Ab <AB@c.test>", "x@y.test, z@c.test", "no address",
                  "\"Q\" <q@y.test>"]
EMAIL_PATTERNS = ["ab@c\\.test", ".*@c\\.test", "(x|z)@.*", "[a-z]+@y\\.test", "b@c\\.test",
                  "(?P<u>[a-z]+)@c\\.test"]


def reference_email(conds: list[tuple[str, str, bool]],
                    headers: list[tuple[str, str]]) -> bool:
    """Every (header, email pattern, not) holds: some address of some occurrence fullmatches."""
    import email.utils

    for header, pattern, negate in conds:
        vals = [v for k, v in headers if k.lower() == header.lower() and v]
        addrs = [a for _n, a in email.utils.getaddresses(vals) if a]
        found = any(re.fullmatch(pattern, a, re.IGNORECASE) for a in addrs)
        if found == negate:
            return False
    return True


class TestEmailAndRepeatedHeaders:
    @settings(max_examples=200, deadline=None)
    @given(conds=st.lists(st.tuples(st.sampled_from(["To", "Cc"]),
                                    st.sampled_from(EMAIL_PATTERNS), st.booleans()),
                          min_size=1, max_size=3),
           headers=st.lists(st.tuples(st.sampled_from(["To", "Cc"]),
                                      st.sampled_from(ADDRESS_VALUES)), max_size=4))
    def test_email_conditions_over_repeated_headers(self, conds, headers):
        """`email` conditions over headers that repeat agree with the reference."""
        fc = FilterConfig(name="e", match=tuple({"header": h, "email": p, "not": n}
                                                for h, p, n in conds),
                          set={"X-Deskgate-Queue": "Q"})
        cfg = Config(root=Path("/nonexistent"), conf_dir=Path("/nonexistent/conf.d"),
                     filters=(fc,))
        raw = ("From: a@b.test\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
               + "\r\nbody\r\n").encode()
        ctx = MessageContext(envelope=Envelope("a@b.test", ("c@d.test",), raw),
                             log=CommObj("Message"))
        ctx.parsed = parse_message(raw)
        run_filters(compile_filters(cfg), ctx)
        assert ("Queue" in ctx.params) == reference_email(conds, headers)


class TestLiteralShortcut:
    @settings(max_examples=300, deadline=None)
    @example(lit="AIK", tail="\\s*", text="a\u0131\u212a")
    @example(lit="Sak", tail="\\s*", text="\u017fAk")
    @example(lit="AiA", tail="\\s*", text="A\u0130A")
    @given(lit=st.text(alphabet="aksiKISA", min_size=3, max_size=5),
           tail=st.sampled_from(["\\s*", "(?P<n>\\d+)"]),   # unbounded: the timed path
           text=st.text(alphabet="aksiKISA \u212a\u017f\u0131\u0130\u00df12", max_size=30))
    def test_shortcut_agrees_with_plain_search(self, lit, tail, text):
        """With the literal shortcut the condition holds exactly when regex.search finds it."""
        import regex

        from gateway.inbound.regexcost import required_literal

        pattern = lit + tail
        assert required_literal(pattern) is not None
        fc = FilterConfig(name="l", match=({"header": "Body", "value": pattern},),
                          set={"X-Deskgate-Queue": "Q"})
        cfg = Config(root=Path("/nonexistent"), conf_dir=Path("/nonexistent/conf.d"),
                     filters=(fc,))
        raw = ("From: a@b.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
               + text + "\r\n").encode()
        ctx = MessageContext(envelope=Envelope("a@b.test", ("c@d.test",), raw),
                             log=CommObj("Message"))
        ctx.parsed = parse_message(raw)
        run_filters(compile_filters(cfg), ctx)
        expected = regex.search(pattern, ctx.parsed.body, regex.IGNORECASE) is not None
        assert ("Queue" in ctx.params) == expected
