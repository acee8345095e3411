"""The attachment file name a helpdesk gets.

A customer names attachments as they like: `../../etc/x`, `C:\\temp\\x.exe`,
control characters, a right-to-left override that turns `exe.txt` around, nothing
at all or hundreds of characters. deskgate stores the name as sent (it is
evidence); every hand-off gives the helpdesk this safe form, which a helpdesk can
store as a file name and an agent can read.
"""

from __future__ import annotations

import re
import unicodedata

# Most file systems take 255 bytes per name; leave room for a helpdesk's own suffix.
MAX_BYTES = 200
# A suffix up to this long is an extension, kept when the name is cut.
MAX_EXTENSION_BYTES = 16

# Cc: C0/C1 controls, NUL, DEL; Cf: format characters (bidi overrides, zero-width);
# Cs: lone surrogates (undecodable bytes); Zl/Zp: line and paragraph separators.
_DROPPED = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_filename(name: str, position: int) -> str:
    """The name without directories, drive letter and control characters, at most
    MAX_BYTES in UTF-8 (the extension kept); `attachment-<position>` when nothing is
    left. Applying it again changes nothing."""
    text = "".join(c for c in name if unicodedata.category(c) not in _DROPPED)
    text = re.split(r"[/\\]", text)[-1]
    text = _DRIVE.sub("", text).strip().rstrip(". ")
    if not text.strip("."):
        return f"attachment-{position}"
    return _bounded(text)


def _bounded(text: str) -> str:
    if len(text.encode()) <= MAX_BYTES:
        return text
    stem, dot, ext = text.rpartition(".")
    suffix = dot + ext
    if not stem or len(suffix.encode()) > MAX_EXTENSION_BYTES or " " in ext:
        stem, suffix = text, ""
    room = MAX_BYTES - len(suffix.encode())
    cut = stem.encode()[:room].decode("utf-8", "ignore").rstrip(". ")
    return cut + suffix
