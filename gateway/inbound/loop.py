"""Loop detection: mail that must never get an auto-response.

Signals: Precedence bulk/junk/list, X-Loop, X-No-Loop, Auto-Submitted auto-*
(`no` is a human), List-Id, List-Unsubscribe, Mailing-List, and Microsoft's
X-Auto-Response-Suppress naming All or AutoReply (DR, NDR, RN, NRN, OOF alone only
suppress receipts and out-of-office replies). A filter or trusted X-header
`Loop = no` clears the flag, `Loop = yes` sets it. The result is ctx.loop,
stored on the article for the outbound side.
"""

from __future__ import annotations

import re

from gateway.model import Hit, MessageContext, Parsed
from gateway.runtime import Runtime

_PRECEDENCE = re.compile(r"\b(bulk|junk|list)\b", re.IGNORECASE)
_SUPPRESS = re.compile(r"\b(all|autoreply)\b", re.IGNORECASE)
_FALSE = ("0", "no", "false", "off")
_TRUE = ("1", "yes", "true", "on")


def loop_signals(p: Parsed) -> list[str]:
    """Why this message looks automated (empty when it does not)."""
    found: list[str] = []
    for name, value in p.headers:
        lname = name.lower()
        v = value.strip()
        if lname == "precedence" and _PRECEDENCE.search(v):
            found.append(f"Precedence: {v}")
        elif lname in ("x-loop", "x-no-loop", "list-id", "list-unsubscribe", "mailing-list"):
            found.append(f"{name}: {v}" if v else f"{name} present")
        elif lname == "x-auto-response-suppress" and _SUPPRESS.search(v):
            found.append(f"X-Auto-Response-Suppress: {v}")
        elif lname == "auto-submitted" and v.lower().startswith("auto-"):
            found.append(f"Auto-Submitted: {v}")
    return found


def detect_loop(ctx: MessageContext, rt: Runtime) -> None:
    p = ctx.parsed
    if p is None:
        return
    signals = loop_signals(p)
    ctx.record_hit(Hit("loop", "", bool(signals),
                       "signal: " + "; ".join(signals) if signals else "no loop signal"))
    if signals:
        ctx.loop = True
    wanted = ctx.param("Loop").strip().lower()
    if wanted in _FALSE and ctx.loop:
        ctx.loop = False
        ctx.record_hit(Hit("loop", "X-Deskgate-Loop", True, "loop flag cleared (no)"))
    elif wanted in _TRUE and not ctx.loop:
        ctx.loop = True
        ctx.record_hit(Hit("loop", "X-Deskgate-Loop", True, "loop flag set (yes)"))

