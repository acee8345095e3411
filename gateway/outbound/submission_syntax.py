"""MAIL FROM / RCPT TO syntax of the submission listener.

What Postfix's smtpd takes by default (strict_rfc821_envelopes = no) is taken: a
path with or without angle brackets, a space after the colon, source routes
(dropped), quoted local parts (given back with the least quoting), address
literals, UTF-8 with or without SMTPUTF8. A path with spaces inside the
brackets, text glued to the '>', unbalanced or doubled brackets, comments,
bytes that are no UTF-8 or a malformed domain is refused; Postfix reads some of
those with its RFC 822 parser, which is what strict_rfc821_envelopes exists to
stop. The parameters are split on blanks and checked by the session.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 5321 4.1.2 atext, with UTF-8 beyond ASCII (RFC 6531) but not the C1 controls
# (refused as C0 controls are, and as the relay refuses them: textsafe.address_refusal)
# nor the lone surrogates that stand for bytes that are no UTF-8 (surrogateescape).
_U = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]"
# The dots of a local part are not checked, as Postfix does not (a.@example.org exists).
_DOT_LOCAL = rf"\.*{_ATEXT}[.A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
# Host names: letters, digits, '-' (not first or last) and '_' (Postfix takes it).
_LABEL = rf"[A-Za-z0-9_{_U}](?:[A-Za-z0-9_\-{_U}]*[A-Za-z0-9_{_U}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_MAILBOX = re.compile(
    rf"(?P<local>{_DOT_LOCAL}|{_QUOTED})(?:@(?:(?P<domain>{_DOMAIN})|\[(?P<literal>[^\[\]\\]+)\]))?")
_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_BLANK = " \t"


def split_path(text: str) -> tuple[str, list[str]] | None:
    """The text after 'FROM:' / 'TO:' as (address, parameters): '<a@b> SIZE=1' →
    ('a@b', ['SIZE=1']), '<>' → ('', []); None when it holds no path."""
    text = text.lstrip(_BLANK)
    if text.startswith("<"):
        end = _scan(text, 1, ">")
        if end < 0:
            return None
        inner, rest = text[1:end], text[end + 1:]
        if rest and rest[0] not in _BLANK:
            return None
        if not inner:
            return "", rest.split()
    else:
        end = _scan(text, 0, _BLANK)
        inner, rest = text[:end], text[end:]
    address = _address(inner)
    return None if address is None else (address, rest.split())


def _scan(text: str, i: int, stop: str) -> int:
    """Index of the first character of `stop` at or after i outside a quoted string;
    len(text) when none is found and `stop` is blank (the end of a bare path), else -1."""
    quoted = False
    n = len(text)
    while i < n:
        c = text[i]
        if quoted and c == "\\":
            i += 1
        elif c == '"':
            quoted = not quoted
        elif not quoted and c in stop:
            return i
        i += 1
    return n if stop == _BLANK else -1


def _address(inner: str) -> str | None:
    """The mailbox of a path without its brackets and source route; None when malformed."""
    route = _ROUTE.match(inner)
    if route is not None:
        inner = inner[route.end():]
    m = _MAILBOX.fullmatch(inner)
    if m is None:
        return None
    literal = m.group("literal")
    if literal is not None and not _address_literal(literal):
        return None
    local = m.group("local")
    if local.startswith('"'):
        content = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_STRING.fullmatch(content):
            local = content
        elif m.group("domain") is None and literal is None:
            return None     # only a local part that needs no quotes stands alone
    return local + inner[m.end("local"):]


def _address_literal(literal: str) -> bool:
    """An IPv4 address or 'IPv6:' and an IPv6 address (RFC 5321 4.1.3)."""
    try:
        if literal[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True
