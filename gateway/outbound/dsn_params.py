"""The DSN parameters of RFC 3461: RET and ENVID of MAIL, NOTIFY and ORCPT of RCPT.

The submission listener takes them (with Postfix's smtpd replies for bad ones), the
queue stores them with the message and each recipient, and the relay honours them:
which notices a recipient gets, what a failure notice returns, and what is passed on
to a next hop that announces DSN. A value is kept decoded (xtext, RFC 3461 4) and
encoded again only when it is passed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The notices NOTIFY can ask for, in the order deskgate writes a list of them.
NOTIFY_KINDS = ("SUCCESS", "FAILURE", "DELAY")
# RFC 3461 4.4 and 4.2: the longest ENVID and ORCPT values.
ENVID_MAX = 100
ORCPT_MAX = 500
# RFC 3461 4: xchar is any printable ASCII but '+' and '='; hexchar is '+' and two hex
# digits (lower-case ones taken as Postfix's xtext_unquote takes them).
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass(frozen=True)
class MessageDsn:
    """MAIL FROM's RET ('' | 'FULL' | 'HDRS') and ENVID (decoded; '' when not given)."""

    ret: str = ""
    envid: str = ""

    def __bool__(self) -> bool:
        return bool(self.ret or self.envid)


@dataclass(frozen=True)
class RecipientDsn:
    """RCPT TO's NOTIFY ('' when not given, 'NEVER', or a list of NOTIFY_KINDS) and ORCPT
    ('addr-type;address', the address decoded; '' when not given)."""

    notify: str = ""
    orcpt: str = ""

    def __bool__(self) -> bool:
        return bool(self.notify or self.orcpt)

    def wants(self, kind: str) -> bool:
        """Whether a notice of `kind` (SUCCESS, FAILURE, DELAY) goes to the sender: without
        NOTIFY failure and delay notices, as without DSN (RFC 3461 4.1)."""
        if not self.notify:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify.split(",")


@dataclass(frozen=True)
class DsnRequest:
    """A message's DSN parameters on their way to the next hop: its MAIL parameters and
    one RecipientDsn per recipient, in the recipients' order."""

    message: MessageDsn
    recipients: tuple[RecipientDsn, ...]


def xtext_decode(text: str) -> str | None:
    """The value of an xtext (RFC 3461 4); None when it is none."""
    if not _XTEXT.fullmatch(text):
        return None
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """`text` (ASCII) as xtext: '+', '=' and anything but printable ASCII as '+HH'."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in text)


def parse_ret(value: str) -> str | None:
    """RET=FULL or HDRS (any case), upper-cased; None otherwise."""
    ret = value.upper()
    return ret if ret in ("FULL", "HDRS") else None


def parse_envid(value: str) -> str | None:
    """ENVID decoded; None for bad xtext, a decoded value that is not printable ASCII
    (Postfix's allprint) or one longer than ENVID_MAX."""
    envid = xtext_decode(value)
    if envid is None or len(envid) > ENVID_MAX or not _printable(envid):
        return None
    return envid


def parse_notify(value: str) -> str | None:
    """NOTIFY as 'NEVER' or its kinds in NOTIFY_KINDS order; None when it is neither
    (NEVER with another word, an unknown word, an empty member)."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return "NEVER"
    if not all(w in NOTIFY_KINDS for w in words):
        return None
    return ",".join(k for k in NOTIFY_KINDS if k in words)


def parse_orcpt(value: str) -> str | None:
    """ORCPT as 'addr-type;address' with the address decoded; None without a ';', with
    an empty type or address, bad xtext, a decoded address that is not printable ASCII,
    or a value longer than ORCPT_MAX."""
    addr_type, semi, coded = value.partition(";")
    if not semi or len(value) > ORCPT_MAX or not _ADDR_TYPE.fullmatch(addr_type):
        return None
    address = xtext_decode(coded)
    if not address or not _printable(address):
        return None
    return f"{addr_type};{address}"


def orcpt_param(orcpt: str) -> str:
    """A stored ORCPT as the RCPT parameter passed on ('ORCPT=rfc822;a+2Bb@x')."""
    addr_type, _, address = orcpt.partition(";")
    return f"ORCPT={addr_type};{xtext_encode(address)}"


def _printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)
