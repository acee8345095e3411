"""The startup check shared by deskgate's explicit tables (inbound and outbound
stages, config checks, runtime builders): every expected name exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def once_each(expected: Sequence[str], names: Iterable[str], *, prefix: str = "",
              unknown: str = "unknown") -> list[str]:
    """What is wrong with `names` against `expected`: missing, repeated, unknown."""
    count = Counter(names)
    problems = [f"{prefix}{n!r} missing" for n in expected if count[n] == 0]
    problems += [f"{prefix}{n!r} present {c} times" for n, c in count.items() if c > 1]
    problems += [f"{prefix}{n!r} {unknown}" for n in count if n not in expected]
    return problems
