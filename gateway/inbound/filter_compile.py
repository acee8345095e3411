"""Postmaster filters: compiling policies/*.toml into the FilterSet that
gateway.inbound.filters runs, and the checks `deskgate check` reports for them."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import regex

from gateway.config import Config, FilterConfig
from gateway.inbound.regexcost import backtracking_bound, required_literal
from gateway.inbound.xheaders import canonical, unknown_hint

_COND_KEYS = frozenset({"header", "value", "email", "not"})
# [***] and [**\name**] in a set value
SUBST = regex.compile(r"\[\*\*\*\]|\[\*\*\\(\w+)\*\*\]")
_PSEUDO = {"AttachmentCount": "attachmentcount", "AttachmentExists": "attachmentexists"}


class FilterCompileError(ValueError):
    """A filter that cannot be compiled; `key` names the filter and condition."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file, self.key, self.reason = file, key, reason


@dataclass(frozen=True, slots=True)
class Condition:
    where: str                       # "match[0]" / "any[1]"
    header: str                      # as written in the policy
    lheader: str                     # lower-case lookup key of the header list
    source: str                      # "header" | "param" | "body" | "attachmentcount" | ...
    param: str                       # canonical X-header name when source == "param"
    kind: Literal["value", "email"]
    pattern: str
    rx: Any                          # regex.Pattern
    negate: bool
    groups: bool                     # the pattern has capturing groups
    fast: bool                       # bounded backtracking: short values skip the timeout
    literal: str | None              # casefolded text every match contains (a shortcut)


@dataclass(frozen=True, slots=True)
class SetAction:
    header: str                      # as written
    param: str | None                # canonical X-header name, None for other headers
    template: str
    substitutes: bool                # template contains [***] or [**\name**]


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    source: str
    match: tuple[Condition, ...]
    any: tuple[Condition, ...]
    set: tuple[SetAction, ...]
    stop_after_match: bool


@dataclass(frozen=True)
class FilterSet:
    """Every filter of the configuration, in name order, compiled."""

    filters: tuple[Filter, ...] = ()
    timeout: float = 0.05
    prefixes: tuple[str, ...] = ()
    uses_body: bool = False
    uses_attachments: bool = False


# ---------------------------------------------------------------- compiling


def compile_filters(cfg: Config) -> FilterSet:
    """Compile every [[filter]]; raises FilterCompileError on the first bad one."""
    prefixes = tuple(cfg.gateway.header_prefixes)
    out: list[Filter] = []
    errors: list[FilterCompileError] = []
    for f in cfg.filters:
        compiled = _compile_filter(f, prefixes, errors.append)
        if compiled is not None:
            out.append(compiled)
    if errors:
        raise errors[0]
    conds = [c for f in out for c in (*f.match, *f.any)]
    return FilterSet(filters=tuple(out), timeout=cfg.postmaster.filter_timeout,
                     prefixes=prefixes,
                     uses_body=any(c.source == "body" for c in conds),
                     uses_attachments=any(c.source.startswith("attachment") for c in conds))


def _compile_filter(f: FilterConfig, prefixes: Sequence[str],
                    err: Callable[[FilterCompileError], None]) -> Filter | None:
    base = f"filter[{f.name}]"
    ok = True

    def bad(key: str, reason: str) -> None:
        nonlocal ok
        ok = False
        err(FilterCompileError(f.source, f"{base}.{key}", reason))

    groups: dict[str, tuple[Condition, ...]] = {}
    names: set[str] = set()
    for group in ("match", "any"):
        conds: list[Condition] = []
        for i, raw in enumerate(getattr(f, group)):
            c = _compile_condition(raw, f"{group}[{i}]", prefixes, bad)
            if c is not None:
                conds.append(c)
                names.update(c.rx.groupindex)
        groups[group] = tuple(conds)
    if not f.match and not f.any:
        bad("match", "a filter needs at least one condition in match or any")
    sets: list[SetAction] = []
    seen: dict[str, str] = {}          # what a key sets (param or header) → the key
    for key, template in f.set.items():
        param = canonical(key, prefixes) if key[:2].lower() == "x-" else None
        first = seen.setdefault(param or key.lower(), key)
        if first != key:
            bad(f"set.{key}", f"sets the same header as {first!r}; which value wins "
                "would depend on the order of the keys (set each once)")
            continue
        if param is None and _has_prefix(key, prefixes):
            bad(f"set.{key}", f"unknown X-header{unknown_hint(key, prefixes)} "
                "(docs/policies.md lists them, under X-headers and trust)")
            continue
        if param in _PSEUDO:
            bad(f"set.{key}", f"{param} is computed from the message and cannot be set")
            continue
        if not key.strip() or ":" in key or any(ch.isspace() for ch in key):
            bad(f"set.{key}", "not a header name")
            continue
        for m in SUBST.finditer(template):
            if m.group(1) and m.group(1) not in names:
                bad(f"set.{key}", f"[**\\{m.group(1)}**] names no group (?P<{m.group(1)}>...) "
                    "of this filter's conditions")
        sets.append(SetAction(key, param, template, bool(SUBST.search(template))))
    if not ok:
        return None
    return Filter(name=f.name, source=f.source, match=groups["match"], any=groups["any"],
                  set=tuple(sets), stop_after_match=f.stop_after_match)


def _has_prefix(name: str, prefixes: Sequence[str]) -> bool:
    lname = name.lower()
    return any(lname.startswith(p.lower()) for p in prefixes)


def _compile_condition(raw: Mapping[str, Any], where: str, prefixes: Sequence[str],
                       bad: Callable[[str, str], None]) -> Condition | None:
    if not isinstance(raw, Mapping):
        bad(where, "a condition is a table such as { header = \"Subject\", value = \"...\" }")
        return None
    unknown = set(raw) - _COND_KEYS
    if unknown:
        bad(where, f"unknown key(s) {', '.join(sorted(unknown))} (allowed: header, value, "
            f"email, not){_cond_key_hint(sorted(unknown))}")
        return None
    header = raw.get("header")
    if not isinstance(header, str) or not header.strip():
        bad(f"{where}.header", "required: the header to test (or Body)")
        return None
    negate = raw.get("not", False)
    if not isinstance(negate, bool):
        bad(f"{where}.not", "expected true or false")
        return None
    has_value, has_email = "value" in raw, "email" in raw
    if has_value == has_email:
        bad(where, "give exactly one of value (regex on the header) or email (regex on each "
            "address)")
        return None
    kind: Literal["value", "email"] = "value" if has_value else "email"
    pattern = raw[kind]
    if not isinstance(pattern, str):
        bad(f"{where}.{kind}", "expected a string (a regular expression)")
        return None
    try:
        rx = regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        bad(f"{where}.{kind}", f"invalid regular expression {pattern!r}: {exc}")
        return None
    except (ValueError, OverflowError, RecursionError) as exc:
        bad(f"{where}.{kind}", f"invalid regular expression {pattern!r}: {exc}")
        return None
    header = header.strip()
    source, param = "header", ""
    if header.lower() == "body":
        source = "body"
    else:
        name = canonical(header, prefixes) if header[:2].lower() == "x-" else None
        if name in _PSEUDO:
            source = _PSEUDO[name]
        elif name is not None:
            source, param = "param", name
    return Condition(where=where, header=header, lheader=header.lower(), source=source,
                     param=param, kind=kind, pattern=pattern, rx=rx, negate=negate,
                     groups=rx.groups > 0, fast=backtracking_bound(pattern) is not None,
                     literal=required_literal(pattern) if kind == "value" else None)


def _cond_key_hint(unknown: Sequence[str]) -> str:
    """'; did you mean header?' for misspelt condition keys (heder, vlaue), '' when none
    is close to a known key."""
    # 0.75 as for X-headers (xheaders.unknown_hint): a misspelling, not any short word
    close = {k: difflib.get_close_matches(k.lower(), sorted(_COND_KEYS), n=1, cutoff=0.75)
             for k in unknown}
    hits = [(k, m[0]) for k, m in close.items() if m]
    if not hits:
        return ""
    if len(unknown) == 1:
        return f"; did you mean {hits[0][1]}?"
    return f"; did you mean {', '.join(f'{m} for {k}' for k, m in hits)}?"


def validate_filters(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    prefixes = tuple(cfg.gateway.header_prefixes)
    for f in cfg.filters:
        compiled = _compile_filter(f, prefixes, lambda e: add(e.file, e.key, e.reason))
        for s in compiled.set if compiled is not None else ():
            problem = _static_value_problem(cfg, s)
            if problem:
                add(f.source, f"filter[{f.name}].set.{s.header}", problem)


def _static_value_problem(cfg: Config, s: SetAction) -> str:
    """A fixed set value that can never work (a typo in a queue, state or priority)."""
    if s.param is None or s.substitutes:
        return ""
    name = s.param.removeprefix("FollowUp-")
    value = s.template
    if name == "Queue" and cfg.queue_named(value) is None:
        if cfg.queue:
            return f"queue {value!r} is not defined by any [[queue]]"
        return (f"queue {value!r} cannot exist: no [[queue]] is configured, so every "
                f"ticket goes to postmaster.default_queue "
                f"{cfg.postmaster.default_queue!r}; define the queue with [[queue]]")
    if name == "State" and value not in cfg.postmaster.states:
        return f"state {value!r} is not in [postmaster.states]"
    if name == "Priority" and value not in cfg.postmaster.priorities:
        return f"priority {value!r} is not in postmaster.priorities"
    if name == "SenderType" and value not in ("customer", "agent", "system"):
        return f"sender type {value!r} is not customer, agent or system"
    return ""
