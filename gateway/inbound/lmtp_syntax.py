"""LMTP command syntax: line limits, the protocol layer's replies, envelope paths.

parse_path reads the argument of MAIL FROM: and RCPT TO: as RFC 5321 4.1.2 writes
it (angle brackets, source routes, quoted local parts) and gives the address back
with the least quoting; least_quoted_path does the same for an address given on
the command line. parse_xforward reads Postfix's XFORWARD command. The session
that uses these is in lmtp_session.py.
"""

from __future__ import annotations

import re

from gateway.textsafe import printable as _printable

# RFC 5321 4.5.3.1.4: 512 octets per command line; MAIL may carry SIZE= and SMTPUTF8.
COMMAND_LIMIT = 512
MAIL_LIMIT = 512 + 26 + 10
# Bytes of input without a line end after which a command line is being discarded.
LINE_BUFFER = 2048

# Replies of the protocol layer (the gateway's own are in gateway.errors).
RSET_OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"
VRFY_CANNOT = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
EXPN_NO = "502 5.5.1 EXPN not implemented"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
LINE_TOO_LONG = "500 5.5.2 Command line too long"
BAD_UTF8 = "500 5.5.2 Error: bad UTF-8 syntax"
NEED_LHLO = "503 5.5.1 Send LHLO first"
NEED_MAIL = "503 5.5.1 Need MAIL command"
NEED_RCPT = "503 5.5.1 Need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
XFORWARD_OK = "250 2.0.0 Ok"
XFORWARD_IN_MAIL = "503 5.5.1 Error: MAIL transaction in progress"

# XFORWARD (Postfix's XFORWARD_README): the attributes offered in the LHLO reply, in
# that order. The values are for the log only; nothing is decided on them.
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE", "LOGIN")
# An attribute value is at most 255 characters (XFORWARD_README, note 1); a longer one
# is cut to this for the log.
XFORWARD_VALUE_LIMIT = 255
_XFORWARD_NAMES = frozenset(XFORWARD_ATTRS)
_UNKNOWN = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})


def syntax_reply(usage: str) -> str:
    """The 501 reply for a command whose argument is malformed."""
    return f"501 5.5.4 Syntax: {usage}"


def parse_path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """'FROM:<a@b> SIZE=10' → ('a@b', ['SIZE=10']); None when malformed."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    arg = arg[len(keyword):].lstrip()
    if '"' in arg:                                  # "john doe"@example.org
        start = _local_start(arg)
        if arg.startswith('"', start):
            return _quoted_path(arg, start)
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            return None
        addr, rest = arg[1:end], arg[end + 1:]
        if rest and not rest.startswith(" "):
            return None
    else:
        addr, _, rest = arg.partition(" ")
    if addr.startswith("@") and ":" in addr:         # source route: @a,@b:user@host
        addr = addr.split(":", 1)[1]
    if any(c in addr for c in " <>\t\r\n"):
        return None
    return addr, rest.split()


_HEX = frozenset("0123456789ABCDEFabcdef")


def xtext_decode(value: str) -> str | None:
    """An RFC 3461 xtext value decoded ('+2B' is '+'), None when malformed. Decoded
    bytes that are not UTF-8 stay as surrogates (printable() shows them as \\xNN)."""
    if "+" not in value:
        return value
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "+":
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or not all(h in _HEX for h in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def printable(text: str, limit: int = XFORWARD_VALUE_LIMIT) -> str:
    """A client-chosen value for the log, on one line: controls and line separators
    written as escapes (\\r, \\n, \\t, \\xNN, \\uNNNN), cut to `limit` characters."""
    return _printable(text, limit)


def parse_xforward(arg: str) -> dict[str, str | None] | str:
    """'NAME=mx.example.org IDENT=3CF6B2AAE8' → {'NAME': 'mx.example.org', 'IDENT': ...};
    an unknown value ([UNAVAILABLE], [TEMPUNAVAIL]) is None. Values are decoded and
    made printable(). A malformed command gives its 501 reply instead (nothing of it
    is taken)."""
    words = arg.split()
    if not words:
        return syntax_reply("XFORWARD attribute=value...")
    attrs: dict[str, str | None] = {}
    for word in words:
        name, eq, value = word.partition("=")
        name = name.upper()
        if not eq or not name:
            return syntax_reply("XFORWARD attribute=value...")
        if name not in _XFORWARD_NAMES:
            return f"501 5.5.4 Bad XFORWARD attribute name: {printable(name, 32)}"
        if value.upper() in _UNKNOWN:
            attrs[name] = None
            continue
        decoded = xtext_decode(value)
        if decoded is None:
            return f"501 5.5.4 Bad XFORWARD {name} syntax"
        attrs[name] = printable(decoded)
    return attrs


def least_quoted_path(address: str) -> str:
    """An envelope address given outside LMTP (`deliver -r/-f`) as LMTP passes the same
    path on: '"support"@example.org' is 'support@example.org'; an address LMTP would
    refuse as syntax comes back as given."""
    parsed = parse_path(f"<{address}>", "")
    return parsed[0] if parsed is not None and not parsed[1] else address


def _quoted_end(s: str, i: int) -> int:
    """Index just past the quoted string that starts at s[i], or -1 when it is not one
    (RFC 5321 4.1.2: printable characters, space, quoted pairs; UTF-8 with SMTPUTF8)."""
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            return i + 1
        if c == "\\":
            i += 1
            if i >= n or not " " <= s[i] <= "~":
                return -1
        elif c < " " or c == "\x7f":
            return -1
        i += 1
    return -1


def _local_start(arg: str) -> int:
    """Where the local part of '<@a,@b:local@host>' (or without brackets) starts."""
    start = 1 if arg.startswith("<") else 0
    if arg.startswith("@", start):                   # source route
        return arg.find(":", start) + 1
    return start


def _quoted_path(arg: str, start: int) -> tuple[str, list[str]] | None:
    """parse_path for a path whose local part is the quoted string at arg[start].

    The address comes back with the least quoting (RFC 5321 4.1.2: all quoted forms
    are equivalent), so '"support"@example.org' is 'support@example.org'. Without a
    domain only a local part that needs no quoting is a path (the postmaster)."""
    end = _quoted_end(arg, start)
    if end < 0:
        return None
    if arg.startswith("<"):
        close = arg.find(">", end)
        if close < 0:
            return None
        addr, rest = arg[start:close], arg[close + 1:]
        if rest and not rest.startswith(" "):
            return None
    else:
        domain, _, rest = arg[end:].partition(" ")
        addr = arg[start:end] + domain
    domain = addr[end - start:]
    if any(c in domain for c in ' "<>\t\r\n'):
        return None
    local = _unquote(addr[:end - start])
    if not domain:
        return (local, rest.split()) if _DOT_STRING.fullmatch(local) else None
    if not domain.startswith("@"):
        return None
    return _least_quoted(local) + domain, rest.split()


# RFC 5321 4.1.2 Dot-string; atext also takes UTF-8 beyond ASCII (RFC 6531).
_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                         r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*")


def _unquote(quoted: str) -> str:
    """The content of a quoted string: '"a\\"b"' → 'a"b'."""
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def _least_quoted(local: str) -> str:
    """A local part as a Dot-string when it is one, else quoted with only '"' and '\\'
    escaped."""
    if _DOT_STRING.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
