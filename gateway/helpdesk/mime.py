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

from gateway.model import AttachmentData
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


_MSGID = re.compile(r"<[^<>\s]+>")
_MSGID_B = re.compile(rb"<[^<>\s]+>")
FOLD_AT = 78


def is_message_id(value: str) -> bool:
    """`value` is one `<id>`, as a helpdesk looks a Message-ID up (no spaces, no text)."""
    return bool(_MSGID.fullmatch(value))


def add_reference(raw: bytes, message_id: str) -> bytes:
    """The message with `message_id` appended to its References header (after the ones
    it has, on a continuation line); a message without References gets one, its
    In-Reply-To ids first (RFC 5322 3.6.4). `raw` itself when References or In-Reply-To
    already name it. The other header lines and the body are kept byte for byte."""
    head, sep, body = split_head(raw)
    eol = b"\r\n" if b"\r\n" in head[:4096] else b"\n"
    mid = message_id.encode("ascii")
    lines = header_lines(head)

    def named(name: bytes) -> list[int]:
        return [i for i, line in enumerate(lines)
                if line.split(b":", 1)[0].strip().lower() == name]

    refs, irt = named(b"references"), named(b"in-reply-to")
    seen = [m for i in refs + irt for m in _MSGID_B.findall(lines[i].split(b":", 1)[1])]
    if mid in seen:
        return raw
    if not sep:
        sep = eol + eol
    if refs:
        # OTOBO (Mail::Internet) reads the first References header
        first = refs[0]
        lines[first] = lines[first].rstrip(b"\r\n") + eol + b" " + mid + eol
        return b"".join(lines).rstrip(b"\r\n") + sep + body
    ids = [*dict.fromkeys(m for i in irt for m in _MSGID_B.findall(
        lines[i].split(b":", 1)[1])), mid]
    return head.rstrip(b"\r\n") + eol + _folded(b"References:", ids, eol) + sep + body


def _folded(name: bytes, words: list[bytes], eol: bytes) -> bytes:
    """'Name: w1 w2 ...' folded before a word that would pass FOLD_AT characters."""
    out, line = [], name
    for w in words:
        if line != name and len(line) + 1 + len(w) > FOLD_AT:
            out.append(line)
            line = b""
        line += b" " + w
    return eol.join([*out, line])


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


def _read_as(data: bytes, declared: str | None) -> str | None:
    """The charset deskgate read a text part's bytes as (gateway.inbound.decoding), when
    a helpdesk reading the declared label would read other text; None when it reads
    the same. ISO-8859-1 (and US-ASCII) from Windows is Windows-1252: 0x80-0x9F are its
    quotes and euro sign, which OTOBO shows as C1 controls; bytes the label cannot hold
    are UTF-8 when they are valid UTF-8, else Windows-1252."""
    import codecs

    if data.isascii():
        return None
    label = (declared or "").strip().strip('"').lower()
    try:
        codec = codecs.lookup(label).name if label else ""
    except LookupError:
        codec = ""
    if codec == "iso8859-1":
        return "windows-1252" if any(0x80 <= b <= 0x9F for b in data) else None
    if codec:
        try:
            data.decode(codec)
            return None
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        data.decode("utf-8")
        return None if codec == "utf-8" else "utf-8"
    except UnicodeDecodeError:
        return "windows-1252"


def relabel_charsets(raw: bytes) -> bytes:
    """The message with each text part's charset label naming the charset deskgate read
    it as, where the declared one would read other text (see _read_as); `raw` itself
    when none does, or when the message has a multipart/signed part (its bytes are
    signed)."""
    if raw.isascii():
        return raw
    msg = email.message_from_bytes(raw, policy=compat32)
    parts = list(msg.walk())
    if any(p.get_content_type() == "multipart/signed" for p in parts):
        return raw
    changed = False
    for part in parts:
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if (part.get_content_disposition() or "") == "attachment":
            continue                     # a file: its bytes are the helpdesk's to read
        try:
            data = part.get_payload(decode=True)
            declared = part.get_param("charset")
        except Exception:  # noqa: S112 (a part compat32 cannot read: left as sent)
            continue
        if not isinstance(data, bytes) or isinstance(declared, tuple):
            continue
        better = _read_as(data, declared)
        if better is None:
            continue
        part.set_param("charset", better)
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
                   article: dict[str, Any], *, later: bool = False,
                   attachments: Sequence[AttachmentData] = ()) -> Rebuilt:
    """The message with its encrypted layers replaced by the plaintext entity (mime None
    when there is nothing to replace).

    When decrypting again fails: with `later` a temporary failure raises DecryptLater
    (the hand-off is tried again); otherwise, and for a permanent failure (no key, wrong
    passphrase, damaged message), the fallback: the message rebuilt from what the store
    holds for the article (its text, its HTML and `attachments`, the article's stored
    attachments) when the article holds its plaintext, else the stored form, with
    `failure` set.
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
        return Rebuilt(_stored_article(msg, article, attachments), failure, temporary)
    if inner is None:
        # Inline PGP: nothing to peel; the stored text replaces the armored one.
        return Rebuilt(_stored_article(msg, article, html=False))
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


def _stored_article(msg: Message, article: dict[str, Any],
                    attachments: Sequence[AttachmentData] = (), *, html: bool = True
                    ) -> bytes | None:
    """The message as the store holds the article, under its original headers:
    multipart/mixed (with attachments) of the text, or multipart/alternative of text
    and HTML, and the attachments; None (the stored form) when the article holds no
    plaintext."""
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    from gateway.outbound.rewrite import serialize

    body = article.get("body") or ""
    if not body or "-----BEGIN PGP MESSAGE" in body:
        return None
    body_html = (article.get("body_html") or "") if html else ""
    top = _entity(MIMEText(body, "plain", "utf-8"))
    if body_html:
        top = _entity(MIMEMultipart("alternative", _subparts=[
            top, _entity(MIMEText(body_html, "html", "utf-8"))]))
    if attachments:
        top = _entity(MIMEMultipart("mixed", _subparts=[
            top, *(_attachment_part(n, a) for n, a in enumerate(attachments, 1))]))
    _original_headers(msg, top)
    return serialize(top)


def _entity(part: Message) -> Message:
    """A part built by email.mime without its MIME-Version (the message has one)."""
    del part["MIME-Version"]
    return part


def _attachment_part(position: int, a: AttachmentData) -> Message:
    """The `position`th stored attachment as a MIME part: its bytes (base64; a message/*
    part as a message, which may not be encoded), its name (in its safe form), type,
    Content-ID and disposition."""
    from email.encoders import encode_base64
    from email.mime.base import MIMEBase

    from gateway.helpdesk.filenames import safe_filename
    from gateway.outbound.rewrite import serialize

    maintype, _, subtype = (a.content_type or "").lower().partition("/")
    if not (_TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)):
        maintype, subtype = "application", "octet-stream"
    part: Message | None = None
    if maintype == "message":
        # Parsed as the part it was, so each message type is written back its own way
        # (a message may not be base64-encoded).
        part = email.message_from_bytes(
            f"Content-Type: {maintype}/{subtype}\n\n".encode() + a.content, policy=compat32)
        try:
            serialize(part)
        except Exception:       # a part the email package cannot write back: as bytes
            part = None
    if part is None:
        part = _entity(MIMEBase(maintype, subtype))
        part.set_payload(a.content)
        encode_base64(part)
    name = safe_filename(a.filename, position)   # what every hand-off gives the helpdesk
    charset = None if name.isascii() else "utf-8"
    part.set_param("name", name, charset=charset)
    disposition = (a.disposition or "").lower()
    part["Content-Disposition"] = disposition if _TOKEN.fullmatch(disposition) \
        else "attachment"
    part.set_param("filename", name, header="Content-Disposition", charset=charset)
    cid = "".join(c for c in a.content_id if c.isascii() and c.isprintable() and c != " ")
    if cid:
        part["Content-ID"] = f"<{cid}>"
    return part


_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def _original_headers(msg: Message, into: Message) -> None:
    """The original headers but its Content-* ones, before `into`'s, with MIME-Version."""
    own = into.items()
    for k in list(into.keys()):
        del into[k]
    for k, v in msg.items():
        if not k.lower().startswith("content-") and k.lower() != "mime-version":
            into[k] = v
    into["MIME-Version"] = "1.0"
    for k, v in own:
        into[k] = v
