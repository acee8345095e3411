"""Text that comes from the outside, made safe to show on one line, and the envelope
addresses that may not go on an SMTP command line at all.

Used by the outbound transport, its queue and DSNs, the inbound DSN reader, the LMTP
listener's XFORWARD values and the CLI's envelope check: one escaping for all of
them. Imports nothing but `re`, so a command's cold start does not pay for the
transport.
"""

from __future__ import annotations

import re

# Where an envelope address holds a control character (a CR/LF would end the SMTP
# command line and start another) it fails at once with 553 and a DSN as an
# address of bad syntax, and the message's other recipients are still sent.
LINE_BREAK_RECIPIENT = (553, "5.1.3 address contains a line break")
LINE_BREAK_SENDER = (553, "5.1.7 sender address contains a line break")
CONTROL_RECIPIENT = (553, "5.1.3 address contains a control character")
CONTROL_SENDER = (553, "5.1.7 sender address contains a control character")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def address_refusal(address: str, *, sender: bool = False) -> tuple[int, str] | None:
    """The 553 an envelope address with a control character gets (a line break named
    as such); None for an address that may go on an SMTP command line."""
    if "\r" in address or "\n" in address:
        return LINE_BREAK_SENDER if sender else LINE_BREAK_RECIPIENT
    if _CONTROL.search(address):
        return CONTROL_SENDER if sender else CONTROL_RECIPIENT
    return None


# What some reader takes for the end of a line, or cannot show: C0 controls, DEL, C1
# controls (NEL among them), the Unicode line and paragraph separators, and the lone
# surrogates of bytes that were not UTF-8.
_NOT_SHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    if c in _ESCAPES:
        return _ESCAPES[c]
    if "\udc80" <= c <= "\udcff":          # surrogateescape: the byte it stands for
        return f"\\x{ord(c) - 0xDC00:02x}"
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def shown(address: str) -> str:
    """The address for a log line or a DSN's readable text, on one line: CR, LF and TAB
    written as \\r, \\n and \\t, other controls, line separators and undecodable
    bytes as \\xNN or \\uNNNN. Other non-ASCII characters (a UTF-8 address) stay."""
    return _NOT_SHOWN.sub(_escape, address)


def reply_text(code: int, text: str) -> str:
    """A reply's text on one line, for the queue, a log line or a DSN: smtplib joins the
    lines of a multi-line reply with LF; here each line after the first follows its
    code, as Postfix writes such a reply ("5.1.1 first 550 5.1.1 last"). Control
    characters are written as shown() writes them."""
    first, *rest = (ln.rstrip("\r") for ln in text.split("\n"))
    if not code or not rest:
        return shown(text)
    *middle, last = rest
    return shown(" ".join([first, *(f"{code}-{ln}" for ln in middle), f"{code} {last}"]))


def reply_line(code: int, text: str) -> str:
    """`code text` on one line (see reply_text): "550-5.1.1 first 550 5.1.1 last" for a
    multi-line reply, as in Postfix's log and bounces."""
    more = bool(code) and "\n" in text
    return f"{code}{'-' if more else ' '}{reply_text(code, text)}"


def printable(text: str, limit: int) -> str:
    """A client-chosen value for a log line, written as shown() writes it, cut to
    `limit` characters (an ellipsis marks the cut)."""
    text = shown(text)
    return text[:limit] + "…" if len(text) > limit else text
