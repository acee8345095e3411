"""Bounces: recognise a DSN (RFC 3464 multipart/report; report-type=delivery-status,
internationalized ones of RFC 6533 too) and find the Message-ID of the message it
reports on.

The prepare stage only reads the message: it marks ctx.is_bounce, ctx.loop (a DSN
never gets an auto-response) and ctx.bounced_message_id. The follow-up stage
matches that id to a stored outgoing article and records the failure on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from gateway.inbound.parse import decode_header_value
from gateway.model import Hit, MessageContext
from gateway.runtime import Runtime
from gateway.textsafe import shown


@dataclass(frozen=True)
class DsnInfo:
    original_message_id: str     # "<id@host>" or "" when the DSN does not say
    action: str                  # failed | delayed | delivered | relayed | expanded | ""
    status: str                  # "5.1.1"
    diagnostic: str              # Diagnostic-Code text
    recipient: str               # Final-Recipient / Original-Recipient

    @property
    def error(self) -> str:
        """The recipient, Status and Diagnostic-Code on one line (the article's
        transmission error, the log): control characters written as deskgate's own
        DSNs and queue write them (textsafe.shown)."""
        parts = [x for x in (self.status, self.diagnostic) if x]
        text = " ".join(parts) or "delivery failed (no status given)"
        return shown(f"{self.recipient}: {text}" if self.recipient else text)


def is_dsn(msg: Message) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    return str(msg.get_param("report-type", "") or "").lower() == "delivery-status"


def _text_blocks(text: str) -> list[Message]:
    return [HeaderParser().parsestr(chunk.strip() + "\n")
            for chunk in text.replace("\r\n", "\n").split("\n\n") if chunk.strip()]


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a message/(global-)delivery-status part.

    The email package splits message/delivery-status into blocks; a
    message/global-delivery-status part (RFC 6533) it parses as one embedded message
    whose header is the first block and whose body holds the others.
    """
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
        if part.get_content_type() == "message/global-delivery-status" and len(blocks) == 1:
            body = blocks[0].get_payload(decode=True)     # the bytes as they came
            if isinstance(body, bytes):
                blocks += _text_blocks(body.decode("utf-8", "replace"))
        return blocks
    if isinstance(payload, str):
        return _text_blocks(payload)
    return []


_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
# A fold: the line break before a continuation line's white space (RFC 5322 2.2.3).
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _field(value: object) -> str:
    """'rfc822; user@x' → 'user@x'; 'smtp; 550 5.1.1 no' → '550 5.1.1 no';
    'utf-8; j\\x{F6}rg@x' → 'jörg@x' (RFC 6533's escapes decoded). A folded value is
    unfolded as RFC 5322 unfolds it: the line break goes, the white space after it
    stays (one space where a reply was folded at a space)."""
    if isinstance(value, str):
        value = _FOLD.sub("", value)
    text = decode_header_value(value).strip()
    kind, sep, rest = text.partition(";")
    kind = kind.strip()
    if not (sep and kind.replace("-", "").isalnum()):
        return text
    rest = rest.strip()
    if kind.lower() == "utf-8" and "\\x{" in rest:
        rest = _EMBEDDED.sub(_code_point, rest)
    return rest


def _code_point(m: re.Match[str]) -> str:
    """The character of a \\x{HEX} escape; the escape itself when it names none."""
    cp = int(m[1], 16)
    return chr(cp) if cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF else m[0]


def _message_id(value: object) -> str:
    text = decode_header_value(value).strip()
    if text and not text.startswith("<") and "@" in text:
        return f"<{text}>"
    return text


def parse_dsn(msg: Message) -> DsnInfo | None:
    """Read a DSN; None when msg is not one."""
    if not is_dsn(msg):
        return None
    mid = action = status = diagnostic = recipient = ""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            for block in _blocks(part):
                if not mid and block.get("Original-Message-ID"):
                    mid = _message_id(block.get("Original-Message-ID"))
                if block.get("Action") and not action:
                    action = _field(block.get("Action")).lower()
                    status = _field(block.get("Status", ""))
                    diagnostic = _field(block.get("Diagnostic-Code", ""))
                    recipient = _field(block.get("Original-Recipient", "")
                                       or block.get("Final-Recipient", ""))
        elif ctype in ("message/rfc822", "message/global", "message/global-headers") \
                and not mid:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                mid = _message_id(inner[0].get("Message-ID", ""))
        elif ctype == "text/rfc822-headers" and not mid:
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            mid = _message_id(HeaderParser().parsestr(text).get("Message-ID", ""))
    if not mid and msg.get("Original-Message-ID"):
        mid = _message_id(msg.get("Original-Message-ID"))
    return DsnInfo(original_message_id=mid, action=action, status=status,
                   diagnostic=diagnostic, recipient=recipient)


def detect_bounce(ctx: MessageContext, rt: Runtime) -> None:
    p = ctx.parsed
    if p is None:
        return
    info = parse_dsn(p.msg)
    if info is None:
        ctx.hits.append(Hit("bounce", "", False, "not a delivery status notification"))
        return
    ctx.is_bounce = True
    ctx.loop = True
    ctx.bounced_message_id = info.original_message_id
    ctx.record_hit(Hit("bounce", "", True, f"delivery status notification "
                       f"({info.action or '?'}) for "
                       f"{info.original_message_id or 'an unknown message'}: {info.error}"))

