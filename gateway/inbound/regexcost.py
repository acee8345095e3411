"""Which filter patterns are cheap enough to run without a time budget.

The `regex` package's per-call timeout costs ~5 µs, ten times a short search,
and with hundreds of filters that is most of the filter stage. A pattern whose
backtracking is bounded by a small constant per start position (no unbounded
or nested repeats, no backreferences, nothing only `regex` understands) cannot
run away on a short value, so it runs without the budget there; anything else,
and every long value (the body), keeps the budget.
"""

from __future__ import annotations

import re._constants as c
import re._parser as sre_parse
import warnings
from typing import Any

# Values longer than this always run under the time budget.
FAST_MAX_LEN = 4096
# Upper bound of backtracking steps per start position for a "fast" pattern.
_MAX_COST = 64
_ATOMS = {c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN, c.CATEGORY}
_ZERO_WIDTH = {c.AT}


def backtracking_bound(pattern: str) -> int | None:
    """Steps per start position at most, or None when unbounded or unknown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = list(sre_parse.parse(pattern))
    except Exception:  # regex-only syntax (or a re warning): keep the time budget
        return None
    # `regex` reads {e<=1} (fuzzy matching) and friends that `re` takes as literals:
    # a literal "{" means the two may disagree, so trust nothing.
    if any(op == c.LITERAL and av == ord("{") for op, av in _walk(tree)):
        return None
    cost = _cost(tree)
    return cost if cost is not None and cost <= _MAX_COST else None


def _walk(items: Any) -> Any:
    for op, av in items:
        yield op, av
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            yield from _walk(av[2])
        elif op == c.SUBPATTERN:
            yield from _walk(av[-1])
        elif op == c.BRANCH:
            for b in av[1]:
                yield from _walk(b)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            yield from _walk(av[1])
        elif op == getattr(c, "ATOMIC_GROUP", None):
            yield from _walk(av)


def _cost(items: list[Any]) -> int | None:
    total = 1
    for op, av in items:
        if op in _ATOMS or op in _ZERO_WIDTH:
            continue
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            _lo, hi, sub = av
            if hi == c.MAXREPEAT or hi > 16:
                return None
            if len(sub) != 1 or sub[0][0] not in _ATOMS:
                return None          # a repeated group: nested backtracking
            total *= hi + 1
        elif op == c.SUBPATTERN:
            inner = _cost(list(av[-1]))
            if inner is None:
                return None
            total *= inner
        elif op == c.BRANCH:
            costs = [_cost(list(b)) for b in av[1]]
            if any(x is None for x in costs):
                return None
            total *= sum(x for x in costs if x is not None)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            inner = _cost(list(av[1]))
            if inner is None:
                return None
            total *= inner
        else:
            return None              # backreferences, conditionals, anything else
        if total > _MAX_COST:
            return None
    return total


def required_literal(pattern: str, min_len: int = 3) -> str | None:
    """An ASCII text every match must contain (casefolded), or None.

    Taken from the run of literal characters at the start of the pattern (after
    anchors). Searching for it in the folded value rules most values out with
    one `in` instead of a timed regex search. `fold` maps every character that
    matches an ASCII letter under `regex` IGNORECASE (Kelvin K, long s, dotless i,
    checked over all of Unicode) to that letter, so a value whose fold lacks the
    literal cannot match.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = list(sre_parse.parse(pattern))
    except Exception:  # regex-only syntax: no shortcut
        return None
    if any(op == c.LITERAL and av == ord("{") for op, av in _walk(tree)):
        return None
    chars: list[str] = []
    for op, av in tree:
        if op == c.AT and not chars:
            continue
        if op != c.LITERAL:
            break
        chars.append(chr(av))
    # sre_parse moves a repeated character into the repeat (ab* = a, b*), so the
    # run holds only characters every match contains
    text = "".join(chars)
    if not text.isascii() or len(text) < min_len:
        return None
    return text.casefold()


def fold(value: str) -> str:
    """The value as required_literal() literals are searched in."""
    # U+0130 (capital I with dot) casefolds to "i" + combining dot and U+0131
    # (dotless i) stays itself, yet `regex` IGNORECASE matches both with i: map
    # them first (checked against every code point matching [a-z] under IGNORECASE).
    return value.replace("\u0130", "i").casefold().replace("\u0131", "i")
