"""What a postmaster filter set, in the message a helpdesk gets whole (the PostMaster pipe).

A filter's `set` of Subject, From, To, Cc, Reply-To, In-Reply-To, References or Body
changes what deskgate makes the ticket and article from (gateway.inbound.parse.set_header);
the raw message is stored as it came. The pipe hands OTOBO a message, and OTOBO makes its
article from that message's headers and text and runs its own follow-up detection on its
Subject, so the copy it gets carries the set values:

- a set header is written once, at its first occurrence (the others dropped; appended
  when the message had none), RFC 2047-encoded where it is not ASCII; address headers
  keep their addresses readable (only display names are encoded);
- a set Body replaces the text body: the first text/plain body part gets the set text
  (text/plain; charset=utf-8, quoted-printable) and the HTML body part is dropped, as
  deskgate's article drops it; a single-part message becomes that text/plain; a message
  without a text or HTML body part is wrapped in multipart/mixed with the text first.
  Attachments stay. A multipart/signed part whose body was replaced no longer verifies
  in the helpdesk; deskgate's verdict travels in the X-OTOBO-Signed headers.

Which values a filter set is read from the store: the article's header list (written by
the filters) against the raw message's, and the article's text against the handed MIME's.
Every other byte of the message is left as it was.
"""

from __future__ import annotations

import email
import email.charset
import email.utils
from collections.abc import Mapping, Sequence
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from typing import Any

import structlog

from gateway.helpdesk.mime import header_lines, split_head
from gateway.inbound.parse import parse_message, part_filename

SET_HEADERS = ("Subject", "From", "To", "Cc", "Reply-To", "In-Reply-To", "References")
_ADDRESS = frozenset({"from", "to", "cc", "reply-to"})

log = structlog.get_logger(__name__)


def set_headers(raw: bytes, stored: Sequence[Sequence[str]] | None) -> dict[str, str]:
    """{name: value} of the SET_HEADERS whose stored value (the article's header list)
    is not what the raw message has: the ones a filter set."""
    if not stored or not raw:
        return {}
    theirs = parse_message(raw, with_attachments=False).headers
    out: dict[str, str] = {}
    for name in SET_HEADERS:
        lname = name.lower()
        mine = [_norm(str(h[1])) for h in stored
                if len(h) == 2 and str(h[0]).lower() == lname]
        if mine and mine != [_norm(v) for k, v in theirs if k.lower() == lname]:
            out[name] = mine[0]
    return out


def set_body(mime: bytes, article: Mapping[str, Any], crypto: Mapping[str, Any],
             store_decrypted_body: bool) -> str | None:
    """The article's text when it is not the text of `mime` (a filter set Body); None
    when it is, or when the article cannot tell (its text not stored, inline PGP: the
    stored text is deskgate's reading of the armored text, not a filter's)."""
    body = article.get("body")
    if body is None or not mime:
        return None
    if crypto.get("decrypted") and not store_decrypted_body:
        return None
    p = parse_message(mime, with_attachments=False)
    if (crypto.get("encrypted") or crypto.get("signed")) and "-----BEGIN PGP" in p.body:
        return None
    if _norm(str(body)) != _norm(p.body) \
            or (article.get("body_html") is None and p.body_html is not None):
        return str(body)
    return None


def _norm(text: str) -> str:
    """As the store keeps text (gateway.store.repo.fit): NUL as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def with_set_values(mime: bytes, headers: Mapping[str, str], body: str | None) -> bytes:
    """`mime` with the set body and headers (see the module's docstring)."""
    if body is not None:
        try:
            mime = replace_body(mime, body)
        except Exception:       # a MIME tree the email package cannot write back
            log.exception("hand-off: replacing the text body with the one a filter set "
                          "failed; the message keeps its own")
    if headers:
        mime = replace_headers(mime, headers)
    return mime


def replace_headers(mime: bytes, headers: Mapping[str, str]) -> bytes:
    """Each of `headers` written once, where its first occurrence was (else appended);
    every other header line byte for byte."""
    head, sep, rest = split_head(mime)
    eol = "\r\n" if b"\r\n" in head[:4096] else "\n"
    want = {k.lower(): (k, v) for k, v in headers.items()}
    done: set[str] = set()
    out: list[bytes] = []
    for line in header_lines(head):
        lname = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        if lname not in want:
            # the last line of the head comes without its line end (split_head)
            out.append(line if line.endswith(b"\n") else line + eol.encode())
        elif lname not in done:
            done.add(lname)
            out.append((header_line(*want[lname], eol) + eol).encode("ascii"))
    for lname, (name, value) in want.items():
        if lname not in done:
            out.append((header_line(name, value, eol) + eol).encode("ascii"))
    if not sep:
        sep = eol.encode()
    return b"".join(out).rstrip(b"\r\n") + sep + rest


def header_line(name: str, value: str, eol: str = "\n") -> str:
    """'Name: value' (no line end) as a message carries it: ASCII, folded, no CR/LF from
    the value; for address headers display names encoded, addresses as they are."""
    from gateway.helpdesk.otobo_pipe import encode_header

    value = " ".join(value.split())
    if name.lower() in _ADDRESS:
        pairs = email.utils.getaddresses([value])
        if pairs and all(addr and "@" in addr for _n, addr in pairs):
            shown = [email.utils.formataddr((n, a), charset="utf-8") for n, a in pairs]
            line = f"{name}: " + ", ".join(shown)
            return line if len(line) <= 78 else f"{name}: " + ("," + eol + " ").join(shown)
    return encode_header(name, value, eol)


def replace_body(mime: bytes, body: str) -> bytes:
    """The message with `body` as its text body (see the module's docstring)."""
    from gateway.outbound.rewrite import serialize

    msg = email.message_from_bytes(mime, policy=compat32)
    if msg["MIME-Version"] is None:
        msg["MIME-Version"] = "1.0"
    text = _text_part(body)
    found = _body_parts(msg)
    plain = next(((part, parent) for part, parent, ctype in found if ctype == "text/plain"),
                 None)
    html = next(((part, parent) for part, parent, ctype in found if ctype == "text/html"),
                None)
    if plain is None and html is not None:
        plain, html = html, None
    if plain is None:
        return serialize(_wrapped(msg, text))
    _become(plain[0], text)
    if html is not None:
        part, parent = html
        siblings = parent.get_payload() if parent is not None else None
        if isinstance(siblings, list) and len(siblings) > 1:
            siblings.remove(part)
        else:
            _become(part, _text_part(body))
    return serialize(msg)


def _text_part(body: str) -> Message:
    """text/plain; charset=utf-8, quoted-printable (readable where it is ASCII)."""
    cs = email.charset.Charset("utf-8")
    cs.body_encoding = email.charset.QP
    part = MIMENonMultipart("text", "plain", charset="utf-8")
    part.set_payload(body, cs)
    return part


def _become(part: Message, text: Message) -> None:
    """Turn `part` into `text` in place: its Content-* headers and payload."""
    for k in {k for k in part if k.lower().startswith("content-")}:
        del part[k]
    for k, v in text.items():
        if k.lower() != "mime-version":
            part[k] = v
    part.set_payload(text.get_payload())
    part.preamble = part.epilogue = None


def _wrapped(msg: Message, text: Message) -> Message:
    """multipart/mixed of the text and the message's old content (its Content-* headers
    and payload), under the message's other headers."""
    old = Message(policy=compat32)
    for k, v in msg.items():
        if k.lower().startswith("content-"):
            old[k] = v
    old.set_payload(msg.get_payload())
    old.preamble, old.epilogue = msg.preamble, msg.epilogue
    new = MIMEMultipart("mixed")
    del new["MIME-Version"]
    for k, v in msg.items():
        if not k.lower().startswith("content-") and k.lower() != "mime-version":
            new[k] = v
    new["MIME-Version"] = "1.0"
    del text["MIME-Version"]
    new.attach(text)
    new.attach(old)
    return new


def _body_parts(msg: Message) -> list[tuple[Message, Message | None, str]]:
    """(part, parent, content type) of the leaves deskgate reads as the text or HTML body
    (as gateway.inbound.parse.extract_bodies does), in its order."""
    out: list[tuple[Message, Message | None, str]] = []
    stack: list[tuple[Message, Message | None]] = [(msg, None)]
    while stack:
        part, parent = stack.pop()
        ctype = part.get_content_type()
        if part is not msg and ctype.split("/")[0] == "message":
            continue
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, part) for p in reversed(payload) if isinstance(p, Message))
            continue
        if ctype not in ("text/plain", "text/html"):
            continue
        disp_value = part.get("Content-Disposition") or ""
        disp = str(disp_value).split(";")[0].strip().lower()
        if disp == "attachment" or (part_filename(part) and disp != "inline"):
            continue
        out.append((part, parent, ctype))
    return out
