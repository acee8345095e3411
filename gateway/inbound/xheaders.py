"""X-Deskgate-/X-OTOBO-/X-OTRS- headers: recognition and the trust stage."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from gateway.model import MessageContext

# Names recognised after a prefix (case-insensitive). DynamicField-<Name> and the
# FollowUp- variants of all of these are recognised too.
KNOWN = (
    "Queue", "State", "State-PendingTime", "Priority", "Type", "Service", "SLA",
    "Title", "Owner", "Responsible", "Lock", "CustomerNo", "CustomerUser", "SenderType",
    "IsVisibleForCustomer", "Ignore", "Loop", "BodyDecrypted", "AttachmentCount",
    "Sign", "Encrypt",   # outbound: per-message S/MIME/PGP request (gateway.crypto.outbound)
    "AttachmentExists", "ArticleKey",
)
# Recognised only after FollowUp-: OTOBO's KeepStateHeader is X-OTOBO-FollowUp-State-Keep
# (a new ticket has no state to keep; OTOBO reads no X-OTOBO-State-Keep).
FOLLOWUP_ONLY = ("State-Keep",)
_KNOWN_LOWER = {k.lower(): k for k in KNOWN}
_FOLLOWUP_ONLY_LOWER = {k.lower(): k for k in FOLLOWUP_ONLY}


def canonical(name: str, prefixes: Sequence[str]) -> str | None:
    """'X-OTOBO-FollowUp-DynamicField-Foo' → 'FollowUp-DynamicField-Foo'; None if not ours."""
    lname = name.lower()
    for prefix in prefixes:
        if lname.startswith(prefix.lower()):
            return _canonical_suffix(name[len(prefix):])
    return None


def _canonical_suffix(rest: str) -> str | None:
    lrest = rest.lower()
    head = ""
    if lrest.startswith("followup-"):
        head, rest, lrest = "FollowUp-", rest[9:], lrest[9:]
    if lrest.startswith("dynamicfield-") and len(rest) > 13:
        return f"{head}DynamicField-{rest[13:]}"
    known = _KNOWN_LOWER.get(lrest) or (_FOLLOWUP_ONLY_LOWER.get(lrest) if head else None)
    return f"{head}{known}" if known else None


def unknown_hint(name: str, prefixes: Sequence[str]) -> str:
    """For an X-header `canonical` does not know: what was probably meant ('' if
    nothing close), for `deskgate check`'s message."""
    lname = name.lower()
    prefix = next((p for p in prefixes if lname.startswith(p.lower())), "")
    rest = name[len(prefix):]
    if rest.lower() in _FOLLOWUP_ONLY_LOWER:
        return (f"; a state is kept only on a follow-up: {prefix}FollowUp-"
                f"{_FOLLOWUP_ONLY_LOWER[rest.lower()]}")
    names = [*KNOWN, *(f"FollowUp-{k}" for k in (*KNOWN, *FOLLOWUP_ONLY))]
    # 0.75: a misspelling (Quee, Priorty), not any name sharing a few letters (Nope)
    close = difflib.get_close_matches(rest.lower(), [n.lower() for n in names], n=1,
                                      cutoff=0.75)
    if not close:
        return ""
    spelled = next(n for n in names if n.lower() == close[0])
    return f"; did you mean {prefix}{spelled}?"


def apply_trust(ctx: MessageContext, prefixes: Sequence[str]) -> None:
    """Trusted sources set params from their X-headers; untrusted ones lose them."""
    p = ctx.parsed
    if p is None:
        return
    kept: list[tuple[str, str]] = []
    stripped = 0
    for name, value in p.headers:
        key = canonical(name, prefixes) if name[:2] in ("X-", "x-") else None
        if key is None:
            kept.append((name, value))
        elif ctx.envelope.trusted:
            ctx.params.setdefault(key, value)
            kept.append((name, value))
        else:
            stripped += 1
    if stripped:
        p.headers = kept
        ctx.log.log("Notice", "UntrustedHeaders", f"removed {stripped} X-header(s) from an "
                    "untrusted source")
