"""X-Deskgate-/X-OTOBO-/X-OTRS- headers: recognition and the trust stage."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.model import MessageContext

# Names recognised after a prefix (case-insensitive). DynamicField-<Name> and the
# FollowUp- variants of all of these are recognised too.
KNOWN = (
    "Queue", "State", "State-PendingTime", "State-Keep", "Priority", "Type", "Service", "SLA",
    "Title", "Owner", "Responsible", "Lock", "CustomerNo", "CustomerUser", "SenderType",
    "IsVisibleForCustomer", "Ignore", "Loop", "BodyDecrypted", "AttachmentCount",
    "Sign", "Encrypt",   # outbound: per-message S/MIME/PGP request (gateway.crypto.outbound)
    "AttachmentExists", "ArticleKey",
)
_KNOWN_LOWER = {k.lower(): k for k in KNOWN}


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
    known = _KNOWN_LOWER.get(lrest)
    return f"{head}{known}" if known else None


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
