"""Bytes and header values to text: declared charsets with fallbacks that never fail,
and RFC 2047 encoded words decoded in linear time. Split from parse.py, which
re-exports decode_bytes, decode_header_value and decode_words."""

from __future__ import annotations

import binascii
import codecs
import email.base64mime
import email.quoprimime
import re
from email.errors import HeaderParseError

# unknown-8bit (RFC 1428), x-unknown and x-user-defined say only that the charset is not
# known: read as undeclared text is (UTF-8, else Windows-1252), as Thunderbird does; taken
# as Latin-1 they turned the UTF-8 most such mail is into mojibake ("GrÃ¼ÃŸe")
_CHARSET_ALIASES = {"unknown-8bit": "utf-8", "x-unknown": "utf-8", "us-ascii": "ascii",
                    "ansi_x3.4-1968": "ascii", "cp-850": "cp850", "x-user-defined": "utf-8"}


# Python codecs that are no MIME charset: Python's own escapes, IDNA (host names), and one
# that always fails. Bytes-to-bytes codecs (base64, zlib, rot13, ...) fail the trial below.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode",
                           "undefined"})


def _codec(charset: str | None, fallback: str = "utf-8") -> str:
    name = (charset or fallback).strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        codec = codecs.lookup(name).name
        b"x".decode(codec, "replace")    # LookupError: not a text encoding (base64, ...)
    except (LookupError, ValueError):   # ValueError: a NUL in the name, UnicodeError
        return fallback
    return fallback if codec in _NOT_CHARSETS else codec


def _latin1_byte(exc: UnicodeError) -> tuple[str, int]:
    """Error handler: a byte Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D)
    is read as Latin-1, so that the Windows-1252 reading never fails."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start:exc.end].decode("latin-1"), exc.end


codecs.register_error("deskgate-latin1", _latin1_byte)


def _windows_1252(data: bytes) -> str:
    """8-bit text as Windows-1252: what mail labelled ISO-8859-1 (or US-ASCII, or nothing)
    from Windows is, and how browsers (WHATWG) and Thunderbird read that label: 0x80-0x9F
    are quotes, dashes and the euro sign, never the C1 controls of ISO-8859-1."""
    return data.decode("cp1252", "deskgate-latin1")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; fall back to UTF-8, then Windows-1252 (a superset
    of Latin-1's printable characters), never fail."""
    codec = _codec(charset)
    if codec == "iso8859-1":
        return _windows_1252(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec in ("utf-8", "ascii"):
        return _windows_1252(data)
    return data.decode(codec, errors="replace")


def decode_header_value(value: object) -> str:
    """RFC 2047 words → text; raw 8-bit headers are taken as UTF-8 (else Latin-1)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        # email.header.Header for 8-bit values under compat32
        value = str(value)
    if "=?" not in value:
        if not value.isascii() and any(0xDC80 <= ord(c) <= 0xDCFF for c in value):
            raw = value.encode("ascii", "surrogateescape")
            return decode_bytes(raw, "utf-8")
        return _unfold(value)
    if not value.isascii():
        # 8-bit bytes next to encoded words: decode_header hands Latin-1 characters back
        # as the same bytes (decoded below), a surrogate as the text '\\udcxx'
        value = value.encode("utf-8", "surrogateescape").decode("latin-1")
    try:
        parts = decode_words(value)
    except Exception:
        return _unfold(decode_bytes(value.encode("latin-1"), "utf-8"))
    out: list[str] = []
    prev_encoded = False
    for chunk, cs in parts:
        if isinstance(chunk, bytes):
            text = decode_bytes(chunk, cs or "ascii")
            encoded = cs is not None
        else:
            text, encoded = chunk, False
        if out and not (encoded and prev_encoded) and not text.startswith(" ") \
                and not out[-1].endswith(" "):
            out.append(" ")
        out.append(text)
        prev_encoded = encoded
    return _unfold("".join(out))


# An RFC 2047 encoded word, as email.header reads it (its ecre, which is not public API)
_ENCODED_WORD = re.compile(r"""
  =\?                   # literal =?
  (?P<charset>[^?]*?)   # non-greedy up to the next ? is the charset
  \?                    # literal ?
  (?P<encoding>[qQbB])  # either a "q" or a "b", case insensitive
  \?                    # literal ?
  (?P<encoded>.*?)      # non-greedy up to the next ?= is the encoded string
  \?=                   # literal ?=
  """, re.VERBOSE | re.MULTILINE)


def decode_words(header: str) -> list[tuple[bytes | str, str | None]]:
    """email.header.decode_header for a str, in linear time: that one pops the front of
    a list for every word and joins bytes by +=, so a Subject of 100,000 encoded words
    took half a minute. Same splitting, joining and errors (HeaderParseError)."""
    if not _ENCODED_WORD.search(header):
        return [(header, None)]
    words: list[tuple[str, str | None, str | None]] = []
    for line in header.splitlines():
        # after the last '?=' no encoded word can end: the pattern would look for one from
        # every '=?' there to the end of the line
        cut = line.rfind("?=") + 2
        parts = _ENCODED_WORD.split(line[:cut]) if cut >= 2 else [line]
        parts[-1] += line[cut:] if cut >= 2 else ""
        unencoded = parts[0].lstrip()
        if unencoded:
            words.append((unencoded, None, None))
        for i in range(1, len(parts), 4):
            words.append((parts[i + 2], parts[i + 1].lower(), parts[i].lower()))
            if parts[i + 3]:
                words.append((parts[i + 3], None, None))
    # whitespace between two encoded words is dropped
    kept = [w for n, w in enumerate(words)
            if not (0 < n < len(words) - 1 and words[n + 1][1] and words[n - 1][1]
                    and w[0].isspace())]
    collapsed: list[tuple[bytes | str, str | None]] = []
    run: list[bytes] = []
    run_charset: str | None = None
    for text, encoding, charset in kept:
        if encoding is None:
            word = bytes(text, "raw-unicode-escape")
        elif encoding == "q":
            word = bytes(email.quoprimime.header_decode(text), "raw-unicode-escape")
        elif encoding == "b":
            paderr = len(text) % 4
            if paderr:
                text += "==="[:4 - paderr]
            try:
                word = email.base64mime.decode(text)
            except binascii.Error:
                raise HeaderParseError("Base64 decoding error") from None
        else:
            raise AssertionError("Unexpected encoding: " + encoding)
        if run and charset != run_charset:
            collapsed.append((b"".join(run), run_charset))
            run = []
        if run and charset is None:
            run.append(b" ")
        run.append(word)
        run_charset = charset
    collapsed.append((b"".join(run), run_charset))
    return collapsed


# A fold: the line break and the white space that starts the next line.
_FOLD = re.compile(r"\n[ \t]*")


def _unfold(value: str) -> str:
    """The header's text on one line: each fold reads as one space (as mail programs
    show a folded Subject and OTOBO's parser unfolds it), not as a space and the
    next line's indentation."""
    if "\n" not in value:
        return value.strip()
    return _FOLD.sub(" ", value.replace("\r", "")).strip()
