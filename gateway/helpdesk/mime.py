"""The MIME a helpdesk gets: the original bytes without anybody's X-headers, or the
decrypted message (with `store_decrypted_body`), built at hand-off time."""

from __future__ import annotations

import email
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32
from typing import Any

import structlog

from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def split_head(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, separator, body) without touching a byte of either."""
    m = _HEADER_END.search(raw)
    if m is None:
        return raw, b"", b""
    return raw[:m.start()], raw[m.start():m.end()], raw[m.end():]


def header_lines(head: bytes) -> list[bytes]:
    """Logical header lines, each with its continuation lines (and line ends)."""
    out: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def strip_prefixed(raw: bytes, prefixes: Sequence[str]) -> bytes:
    """Remove every header whose name starts with one of `prefixes` (case-insensitive).

    Whatever the sender wrote as X-OTOBO-Queue must not reach the helpdesk; only
    deskgate's decisions do, rendered by the connector.
    """
    head, sep, body = split_head(raw)
    low = tuple(p.lower().encode() for p in prefixes)
    kept = [line for line in header_lines(head) if not line.lower().startswith(low)]
    # The separator starts with the last header's line end: keep exactly one.
    return b"".join(kept).rstrip(b"\r\n") + sep + body


_NAME_PARAM = re.compile(rb"name\*?(\d+\*?)?\s*=", re.IGNORECASE)


def safe_mime_filenames(raw: bytes) -> bytes:
    """The message with the filename= and name= parameters of every part replaced by
    their safe form (gateway.helpdesk.filenames); `raw` itself when all are safe.

    A message with a multipart/signed part is returned unchanged: rewriting it would
    touch signed bytes (or re-fold signed headers) and break the signature.
    """
    from gateway.helpdesk.filenames import safe_filename
    from gateway.inbound.parse import decode_header_value

    if not _NAME_PARAM.search(raw):
        return raw
    msg = email.message_from_bytes(raw, policy=compat32)
    parts = list(msg.walk())
    if any(p.get_content_type() == "multipart/signed" for p in parts):
        return raw
    changed, position = False, 0
    for part in parts:
        if part.is_multipart():
            continue
        for header, param in (("Content-Disposition", "filename"), ("Content-Type", "name")):
            value = _param(part, param, header)
            if value is None:
                continue
            if param == "filename" or _param(part, "filename", "Content-Disposition") is None:
                position += 1
            name = decode_header_value(value)
            safe = safe_filename(name, position)
            if safe == name:
                continue
            part.set_param(param, safe, header=header, replace=True,
                           charset=None if safe.isascii() else "utf-8")
            changed = True
    if not changed:
        return raw
    head = split_head(raw)[0]
    return _flatten(msg, "\r\n" if b"\r\n" in head[:4096] else "\n")


def _param(part: Message, param: str, header: str) -> str | None:
    """A parameter's value (RFC 2231 decoded); None when absent or unreadable."""
    try:
        value = part.get_param(param, header=header)
    except Exception:      # a header compat32 cannot split: leave it as sent
        return None
    if isinstance(value, tuple):
        return email.utils.collapse_rfc2231_value(value)
    return None if value is None else str(value)


def _flatten(msg: Message, linesep: str) -> bytes:
    import io
    from email.generator import BytesGenerator

    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, maxheaderlen=0,
                   policy=compat32.clone(linesep=linesep)).flatten(msg)
    return buf.getvalue()


class DecryptLater(Exception):
    """Decrypting the stored message again failed for a reason that may pass: gpg or
    openssl did not answer within its timeout, could not be started, or gpg could not
    reach its agent. The text says why."""


# What the crypto layer says (gateway.crypto: GpgUnavailable, PgpError, SmimeError, or
# the error text the peeler keeps) when it gave no verdict on the keys or the message.
_TEMPORARY = re.compile(r"did not answer within|cannot run |listing the keys: gpg failed"
                        r"|gpg gave no answer|cannot decrypt now|\(temporary;"
                        r"|no agent running|can't connect to the agent|ipc connect call"
                        r"|ipc call has been cancelled|agent_unavailable", re.IGNORECASE)


def temporary_failure(text: str) -> bool:
    """Whether a decryption's error text says it may work on a later try (not a missing
    key, a wrong passphrase or a damaged message)."""
    return bool(_TEMPORARY.search(text))


@dataclass(frozen=True)
class Rebuilt:
    """The helpdesk's MIME of an encrypted message: `mime` None means the stored form as
    received; `failure` says why decrypting again failed ("" when it did not)."""

    mime: bytes | None
    failure: str = ""
    temporary: bool = False       # the failure may pass (handed over on the last attempt)


def decrypted_mime(raw: bytes, rt: Runtime, recipients: list[str], from_email: str,
                   article: dict[str, Any], *, later: bool = False) -> Rebuilt:
    """The message with its encrypted layers replaced by the plaintext entity (mime None
    when there is nothing to replace).

    When decrypting again fails: with `later` a temporary failure raises DecryptLater
    (the hand-off is tried again); otherwise, and for a permanent failure (no key, wrong
    passphrase, damaged message), the fallback: the stored text of the article as
    text/plain when the article holds it, else the stored form, with `failure` set.
    """
    from gateway.crypto.inbound import unwrap
    from gateway.crypto.pgpkeyring import GpgUnavailable
    from gateway.outbound.rewrite import serialize

    msg = email.message_from_bytes(raw, policy=compat32)
    failure, temporary = "", False
    try:
        out = unwrap(raw, msg, rt, recipients, from_email)
    except Exception as exc:
        failure = str(exc) or type(exc).__name__
        temporary = (isinstance(exc, GpgUnavailable) or bool(getattr(exc, "temporary", False))
                     or temporary_failure(failure))
        inner = None
    else:
        c = out.crypto
        if c.encrypted and not c.decrypted:
            failure = c.error or "the message could not be decrypted"
            temporary = temporary_failure(failure)
        inner = out.inner
    if failure:
        if temporary and later:
            raise DecryptLater(failure)
        log.warning("hand-off: decrypting again failed; handing over the stored form",
                    error=failure, temporary=temporary)
        return Rebuilt(_stored_text(msg, article), failure, temporary)
    if inner is None:
        return Rebuilt(_stored_text(msg, article))    # inline PGP: nothing to peel
    new = Message(policy=compat32)
    for k, v in msg.items():
        if not k.lower().startswith("content-") and k.lower() != "mime-version":
            new[k] = v
    new["MIME-Version"] = "1.0"
    for k, v in inner.items():
        if k.lower().startswith("content-"):
            new[k] = v
    new.set_payload(inner.get_payload())
    if inner.preamble is not None:
        new.preamble = inner.preamble
    if inner.epilogue is not None:
        new.epilogue = inner.epilogue
    return Rebuilt(serialize(new))


def _stored_text(msg: Message, article: dict[str, Any]) -> bytes | None:
    """The stored (decrypted) text of the article as text/plain; None (the stored form)
    when the article holds no plaintext."""
    body = article.get("body") or ""
    if not body or "-----BEGIN PGP MESSAGE" in body:
        return None
    return _with_body(msg, article)


def _with_body(msg: Message, article: dict[str, Any]) -> bytes:
    from email.mime.text import MIMEText

    from gateway.outbound.rewrite import serialize

    text = MIMEText(article.get("body") or "", "plain", "utf-8")
    for k, v in msg.items():
        if not k.lower().startswith("content-") and k.lower() != "mime-version":
            text[k] = v
    return serialize(text)
