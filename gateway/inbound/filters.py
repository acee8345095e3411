"""Postmaster filters (policies/*.toml): compiled once per config, run per message.

Semantics follow OTOBO's MatchDBSource, with decisions made on purpose:

- regexes are case-insensitive and unanchored; `email = "<regex>"` tests each
  address of the header, anchored at both ends (OTOBO's EMAILADDRESS:);
- a header that occurs several times holds when any occurrence matches; a missing
  header is the empty string (so `email` finds no address in it);
- `Body` is the decoded text body; `<prefix>AttachmentCount` / `AttachmentExists`
  (yes/no) are computed; recognised X-headers are read from the params in effect,
  so a value set by an earlier filter is seen with every prefix;
- every `match` condition must hold and, when `any` is given, at least one of it
  (evaluated in order up to the first that holds);
- `[***]` is group 1 of the last positive condition that has groups, `[**\\name**]`
  a named group of any of them (later conditions win);
- a `set` of Subject, From, To, Cc, Reply-To, Message-ID, In-Reply-To, References or
  Body also changes the parsed field read from it (parse.set_header), as OTOBO's Set
  changes GetParam: the article, the ticket title, the customer user, follow-up
  detection and (Message-ID) the article's message_id and the key duplicate detection
  uses follow the set value; the raw message stays as it came;
- a pattern that exceeds `postmaster.filter_timeout` makes its condition fail, negated
  or not (an undecided condition never fires a filter), and is logged as Warn; all
  timed patterns of one message share MESSAGE_BUDGET times filter_timeout.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway import metrics
from gateway.inbound.filter_compile import (
    SUBST,
    Condition,
    Filter,
    FilterCompileError,
    FilterSet,
    SetAction,
    compile_filters,
    validate_filters,
)
from gateway.inbound.parse import decode_header_value, mailboxes, set_header
from gateway.inbound.pipeline import Offload, inline_budget
from gateway.inbound.regexcost import FAST_MAX_LEN, fold
from gateway.model import Hit, MessageContext
from gateway.runtime import Runtime

__all__ = ["MESSAGE_BUDGET", "Condition", "ConditionTrace", "Filter", "FilterCompileError",
           "FilterSet", "FilterTrace", "SetAction", "compile_filters", "run_filters", "stage",
           "substitute", "validate_filters"]

log = structlog.get_logger(__name__)

_SHOW = 160   # characters of a tested value shown in a trace
# All timed patterns of one message together get this many filter_timeouts; after
# that every timed condition counts as timed out. On the event loop the timed
# patterns get only the pipeline's INLINE_BUDGET: past it they raise Offload and
# the message is evaluated again on the worker pool with the full budget.
MESSAGE_BUDGET = 5


@dataclass
class ConditionTrace:
    where: str
    header: str
    kind: str
    pattern: str
    negate: bool
    held: bool
    found: bool
    timed_out: bool
    tested: str
    matched: str
    reason: str
    used: bool = True        # False: a delivery does not evaluate it (explained only)

    def as_dict(self) -> dict[str, Any]:
        return {"condition": self.where, "header": self.header, "kind": self.kind,
                "pattern": self.pattern, "not": self.negate, "held": self.held,
                "timed_out": self.timed_out, "tested": self.tested, "matched": self.matched,
                "reason": self.reason, "used": self.used}


@dataclass
class FilterTrace:
    name: str
    source: str
    matched: bool
    conditions: list[ConditionTrace] = field(default_factory=list)
    set: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.source, "matched": self.matched,
                "conditions": [c.as_dict() for c in self.conditions], "set": self.set,
                "stop_after_match": self.stopped}


# ---------------------------------------------------------------- evaluating


class _View:
    """The message as the filters see it; built once per message."""

    __slots__ = ("_addrs", "_folded", "ctx", "deadline", "headers", "inline")

    def __init__(self, ctx: MessageContext, deadline: float = float("inf"),
                 inline: float | None = None) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.inline = inline     # on the event loop: when timed patterns must give up
        self.headers: dict[str, list[str]] = {}
        assert ctx.parsed is not None
        for k, v in ctx.parsed.headers:
            self.headers.setdefault(k.lower(), []).append(v)
        self._addrs: dict[str, list[str]] = {}
        self._folded: dict[str, str] = {}

    def folded(self, value: str) -> str:
        got = self._folded.get(value)
        if got is None:
            got = self._folded[value] = fold(value)
        return got

    def values(self, c: Condition) -> list[str]:
        src = c.source
        if src == "header":
            return self.headers.get(c.lheader) or [""]
        if src == "param":
            return [self.ctx.params.get(c.param, "")]
        p = self.ctx.parsed
        assert p is not None
        if src == "body":
            return [p.body]
        if src == "attachmentcount":
            return [str(len(p.attachments))]
        return ["yes" if p.attachments else "no"]

    def addresses(self, c: Condition) -> list[str]:
        key = c.param or c.lheader
        got = self._addrs.get(key)
        if got is None:
            vals = [v for v in self.values(c) if v]
            raw = self._raw(c.lheader) if c.source == "header" else []
            if any("=?" in v for v in raw):
                vals = [v for v in raw if v.strip()]
            got = [a.strip() for _n, a in mailboxes(vals) if a.strip()]
            self._addrs[key] = got
        return got

    def _raw(self, lname: str) -> list[str]:
        """The header's values as they came, when they are still what the filters see.

        Addresses are read from these: decoded first, an encoded display name such as
        `=?utf-8?q?Doe=2C_John?=` or `=?utf-8?q?boss=40example.org?=` would read as
        more addresses than the header has. A header a filter set is read as set.
        """
        p = self.ctx.parsed
        assert p is not None
        raw = [str(v) for k, v in p.msg.raw_items() if k.lower() == lname]
        if [decode_header_value(v) for v in raw] != self.headers.get(lname, []):
            return []
        return raw

    def set(self, name: str, value: str) -> None:
        p = self.ctx.parsed
        assert p is not None
        stored = set_header(p, name, value)
        if stored is not None:
            lname = name.lower()
            self.headers[lname] = [stored]
            self._addrs.pop(lname, None)


def _test(c: Condition, view: _View, timeout: float) -> tuple[bool, Any, bool, str]:
    """(found, match, timed_out, tested value) for one condition, before `not`."""
    email_kind = c.kind == "email"
    items = view.addresses(c) if email_kind else view.values(c)
    fast = c.fast
    rx = c.rx
    for v in items:
        try:
            if fast and len(v) <= FAST_MAX_LEN:
                m = rx.fullmatch(v) if email_kind else rx.search(v)
            elif c.literal is not None and c.literal not in view.folded(v):
                m = None
            else:
                now = time.monotonic()
                budget = min(timeout, view.deadline - now)
                if view.inline is not None:
                    budget = min(budget, view.inline - now)
                    if budget <= 0:
                        raise Offload
                if budget <= 0:
                    return False, None, True, v
                # concurrent: the GIL is released while it runs, so a pattern
                # running to its budget on a worker thread cannot hold the loop
                worker = view.inline is None
                m = (rx.fullmatch(v, timeout=budget, concurrent=worker) if email_kind
                     else rx.search(v, timeout=budget, concurrent=worker))
        except TimeoutError:
            if view.inline is not None:
                raise Offload from None     # decided on a worker, with the full budget
            return False, None, True, v
        if m is not None:
            return True, m, False, v
    return False, None, False, ", ".join(items) if email_kind else items[0]


def _reason(c: Condition, found: bool, held: bool, timed_out: bool, tested: str,
            m: Any, timeout: float) -> str:
    if timed_out:
        return f"pattern ran longer than {timeout * 1000:g} ms: counts as not holding"
    what = "an address of " + c.header if c.kind == "email" else c.header
    shown = _short(tested)
    if c.kind == "email" and not tested:
        base = f"{c.header} has no address"
    elif found:
        base = f"'{_short(m.group(0))}' matched in {what} '{shown}'"
    elif c.source == "header" and not tested:
        base = f"no match: {c.header} is missing or empty (\"\")"
    else:
        base = f"no match in {what} '{shown}'"
    if c.negate:
        return f"not: {base} → {'holds' if held else 'fails'}"
    return base


def _short(s: str) -> str:
    s = s.replace("\r", "").replace("\n", "\\n")
    return s if len(s) <= _SHOW else s[:_SHOW - 3] + "..."


def _condition(c: Condition, view: _View, timeout: float, ctx: MessageContext,
               fname: str, trace: list[ConditionTrace] | None, extra: bool = False
               ) -> tuple[bool, Any]:
    """Test one condition. `extra`: one only an explaining run evaluates (a delivery
    stops before it), so its time counts against no budget and its timeout is not logged."""
    start = time.monotonic()
    found, m, timed_out, tested = _test(c, view, timeout)
    if extra:
        spent = time.monotonic() - start
        view.deadline += spent
        if view.inline is not None:
            view.inline += spent
    elif timed_out:
        why = (f"timed out after {timeout * 1000:g} ms" if time.monotonic() < view.deadline
               else "timed out: the message's filter time budget is used up")
        ctx.log.log("Warn", "Filter", f"{fname} {c.where}: pattern '{c.pattern}' on {c.header} "
                    f"{why}; condition does not hold")
        log.warning("filter pattern timed out", filter=fname, condition=c.where,
                    header=c.header)
        metrics.FILTER_TIMEOUTS.labels(fname).inc()
    held = (found != c.negate) and not timed_out
    if trace is not None:
        trace.append(ConditionTrace(
            where=c.where, header=c.header, kind=c.kind, pattern=c.pattern, negate=c.negate,
            held=held, found=found, timed_out=timed_out, tested=_short(tested),
            matched=_short(m.group(0)) if m is not None else "",
            reason=_reason(c, found, held, timed_out, tested, m, timeout), used=not extra))
    return held, (m if found and not c.negate and c.groups else None)


def _evaluate(f: Filter, view: _View, timeout: float, ctx: MessageContext,
              trace: list[ConditionTrace] | None) -> tuple[bool, str | None, dict[str, str]]:
    """Whether the filter holds, and its captures ([***], named groups).

    With `trace` every condition is evaluated and recorded; those a delivery would not
    reach are marked unused and cost the message's time budget nothing, so the
    explanation comes to the delivery's result."""
    star: str | None = None
    named: dict[str, str] = {}
    ok = True

    def take(m: Any) -> None:
        nonlocal star
        star = m.group(1) or ""
        for k, v in m.groupdict().items():
            named[k] = v or ""

    for c in f.match:
        held, m = _condition(c, view, timeout, ctx, f.name, trace, extra=not ok)
        if trace is not None and not trace[-1].used:
            trace[-1].reason += " (not reached on delivery: an earlier condition failed)"
        elif not held:
            ok = False
            if trace is None:
                return False, None, {}
        elif m is not None:
            take(m)
    if f.any and (ok or trace is not None):
        any_ok = False
        for c in f.any:
            if any_ok and trace is None:
                break
            held, m = _condition(c, view, timeout, ctx, f.name, trace,
                                 extra=any_ok or not ok)
            if trace is not None and not trace[-1].used:
                trace[-1].reason += (" (not needed: an earlier `any` condition held)" if any_ok
                                     else " (not reached on delivery: a match condition "
                                     "failed)")
            elif held:
                any_ok = True
                if m is not None:
                    take(m)
        ok = ok and any_ok
    return ok, star, named


def substitute(template: str, star: str | None, named: Mapping[str, str]) -> str:
    """Fill [***] and [**\\name**] in a set value."""
    def repl(m: Any) -> str:
        if m.group(1):
            return str(named.get(m.group(1), ""))
        return star or ""
    return str(SUBST.sub(repl, template))


def run_filters(fs: FilterSet, ctx: MessageContext,
                explain: list[FilterTrace] | None = None) -> None:
    """Apply the filters to ctx (params and header list); with `explain`, record why."""
    if ctx.parsed is None or not fs.filters:
        return
    timeout = fs.timeout
    now, inline = time.monotonic(), inline_budget()
    view = _View(ctx, now + MESSAGE_BUDGET * timeout, None if inline is None else now + inline)
    for f in fs.filters:
        ctrace: list[ConditionTrace] | None = [] if explain is not None else None
        ok, star, named = _evaluate(f, view, timeout, ctx, ctrace)
        ft = FilterTrace(f.name, f.source, ok, ctrace or []) if explain is not None else None
        if ft is not None and explain is not None:
            explain.append(ft)
        if not ok:
            ctx.hits.append(Hit("filter", f.name, False, "no match"))
            continue
        applied: dict[str, str] = {}
        for s in f.set:
            value = substitute(s.template, star, named) if s.substitutes else s.template
            if s.param is not None:
                ctx.params[s.param] = value
            view.set(s.header, value)
            applied[s.header] = value
        if ft is not None:
            ft.set, ft.stopped = applied, f.stop_after_match
        shown = ", ".join(f"{k}={v!r}" for k, v in applied.items())
        stop = "; stop_after_match" if f.stop_after_match else ""
        ctx.record_hit(Hit("filter", f.name, True, f"matched; set {shown}{stop}"))
        if f.stop_after_match:
            break


def stage(ctx: MessageContext, rt: Runtime) -> None:
    fs = rt.filters
    if isinstance(fs, FilterSet) and fs.filters:
        run_filters(fs, ctx)

