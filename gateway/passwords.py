"""Password hashes for submission and dashboard users (scrypt, stdlib only).

Format: $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<hash b64>, as printed by
`deskgate passwd`. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_LN, _R, _P, _LEN = 15, 8, 1, 32


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, *, ln: int = _LN) -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=1 << ln, r=_R, p=_P, dklen=_LEN,
                        maxmem=256 * 1024 * 1024)
    return f"$scrypt$ln={ln},r={_R},p={_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when password matches; False for a wrong password or a malformed hash."""
    try:
        _, scheme, params, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        kv = dict(p.split("=", 1) for p in params.split(","))
        ln, r, p = int(kv["ln"]), int(kv["r"]), int(kv["p"])
        if not (1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=1 << ln, r=r, p=p,
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(got, want)


def is_hash(value: str) -> bool:
    return value.startswith("$scrypt$") and value.count("$") == 4


# Verified for unknown user names so they cost as long as known ones (a hash of
# the default cost for a random password nobody knows).
DUMMY_HASH = ("$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA"
              "$Ys3NRTwTL0lZ9ZtBxIdS3iVJTDt/bFk0mN8gv5ITHS0")
