"""Values for the headers deskgate generates (auto-responses, DSNs, rewritten
submissions) made safe to write.

A customer's Subject may carry control characters (VT, FF, FS, RS, NUL, ...). Python's
email generator treats several of them as line breaks, so copied into a reply they
either inject a header or make the generator refuse the message; either way the
customer's mail would be lost to quarantine. Folding is undone and every other
control character becomes a space.
"""

from __future__ import annotations

import re

_FOLD = re.compile(r"\r?\n(?=[ \t])")
# C0 controls except TAB, DEL, C1 NEL and the Unicode line/paragraph separators:
# everything str.splitlines() or a mail parser could take for the end of a line.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]+")


def header_safe(value: str) -> str:
    """`value` unfolded, with each run of control characters replaced by one space."""
    return _UNSAFE.sub(" ", _FOLD.sub("", value))
