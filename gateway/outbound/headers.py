"""Values for the headers deskgate generates (auto-responses, DSNs, rewritten
submissions) made safe to write.

A customer's Subject may carry control characters (VT, FF, FS, RS, NUL, ...). Python's
email generator treats several of them as line breaks, so copied into a reply they
either inject a header or make the generator refuse the message; either way the
customer's mail would be lost to quarantine. Folding is undone and every other
control character becomes a space. The other way round, `fold_long_lines` folds
a header line longer than RFC 5322 allows before the message is DKIM-signed; it
can fold only at whitespace, so a word too long for a line is RFC 2047-encoded
first (`encode_long_words`) or, where encoding is not allowed (Message-IDs),
left out (`ids_that_fit`).
"""

from __future__ import annotations

import re
from email.header import Header

_FOLD = re.compile(r"\r?\n(?=[ \t])")
# C0 controls except TAB, DEL, C1 NEL and the Unicode line/paragraph separators:
# everything str.splitlines() or a mail parser could take for the end of a line.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]+")


def header_safe(value: str) -> str:
    """`value` unfolded, with each run of control characters replaced by one space."""
    return _UNSAFE.sub(" ", _FOLD.sub("", value))


def raw_utf8(value: str) -> str:
    """`value` for a header field that must not hold RFC 2047 encoded words (an
    address, a Message-ID), to be written as raw UTF-8 (RFC 6532): as surrogates,
    which the email generator writes as the bytes they stand for instead of
    encoding them. An ASCII value is returned as it is."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape")


MAX_LINE = 998          # RFC 5322 2.1.1: octets per line, without the CRLF
FOLD_AT = 78            # where a line that must be folded is folded (RFC 5322's "should")
_WSP_RUN = re.compile(rb"(?<![ \t])(?=[ \t])")


def fold_long_lines(data: bytes) -> bytes:
    """`data` with every header line over MAX_LINE octets folded at its whitespace.

    A relay must break such a line, and where it breaks it inside a word it changes
    what DKIM signed. Folding (CRLF before existing whitespace) changes nothing the
    field means. A line without whitespace is left as it is.
    """
    sep = data.find(b"\r\n\r\n")
    head = data if sep < 0 else data[:sep]
    if len(head) <= MAX_LINE or all(len(ln) <= MAX_LINE for ln in head.split(b"\r\n")):
        return data
    lines: list[bytes] = []
    for line in head.split(b"\r\n"):
        if len(line) <= MAX_LINE:
            lines.append(line)
            continue
        pieces = _WSP_RUN.split(line)
        cur = pieces[0]
        for piece in pieces[1:]:
            if len(cur) + len(piece) > FOLD_AT and cur.strip():
                lines.append(cur)
                cur = piece
            else:
                cur += piece
        lines.append(cur)
    return b"\r\n".join(lines) + (b"" if sep < 0 else data[sep:])


_WORD = re.compile(r"\S+")


def _encoded(word: str) -> str:
    # Encoded words of at most FOLD_AT octets, separated by spaces: a decoder joins
    # adjacent encoded words without the space (RFC 2047 6.2), so the text is the same.
    return Header(word, "utf-8").encode(linesep="\n", maxlinelen=FOLD_AT).replace("\n ", " ")


def encode_long_words(value: str) -> str:
    """`value` (unstructured text, such as a Subject) with every word too long for a
    folded line written as RFC 2047 encoded words, as mail clients do, so that the
    field can be folded within FOLD_AT octets. A value that is not ASCII is left as it
    is: the generator encodes it whole, in encoded words it folds."""
    if not value.isascii():
        return value
    return _WORD.sub(lambda m: m.group() if len(m.group()) < FOLD_AT else _encoded(m.group()),
                     value)


def ids_that_fit(value: str) -> str:
    """The whitespace-separated words of `value` (Message-IDs for In-Reply-To and
    References, which must not be encoded) that a folded line can hold, in order; a
    longer one is left out, since written it would make a line over MAX_LINE octets."""
    return " ".join(w for w in value.split()
                    if len(w.encode("utf-8", "surrogateescape")) < MAX_LINE)


# A MIME part of RFC 6533 (message/global-headers, message/global-delivery-status) or
# RFC 6532 (message/global): UTF-8 header fields carried as a body.
_GLOBAL_PART = re.compile(rb"^content-type:[ \t]*message/global", re.IGNORECASE | re.MULTILINE)


def needs_smtputf8(data: bytes) -> bool:
    """Whether the message `data` (CRLF) carries internationalized header fields raw:
    UTF-8 in its own header section (RFC 6532) or in a message/global* part left 8-bit
    (a DSN returning such headers, RFC 6533). Such a message goes with SMTPUTF8
    (RFC 6531 3.4), whatever its envelope. 8-bit bytes that are not UTF-8 make no
    RFC 6532 message: they are 8-bit content (BODY=8BITMIME) as before."""
    if data.isascii():
        return False
    sep = data.find(b"\r\n\r\n")
    head = data if sep < 0 else data[:sep]
    if not head.isascii():
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return _GLOBAL_PART.search(data) is not None
