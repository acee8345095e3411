"""Bounces: recognise a DSN (RFC 3464 multipart/report; report-type=delivery-status)
and find the Message-ID of the message it reports on.

The prepare stage only reads the message: it marks ctx.is_bounce, ctx.loop (a DSN
never gets an auto-response) and ctx.bounced_message_id. The follow-up stage
matches that id to a stored outgoing article and records the failure on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from gateway.inbound.parse import decode_header_value
from gateway.model import Hit, MessageContext
from gateway.runtime import Runtime


@dataclass(frozen=True)
class DsnInfo:
    original_message_id: str     # "<id@host>" or "" when the DSN does not say
    action: str                  # failed | delayed | delivered | relayed | expanded | ""
    status: str                  # "5.1.1"
    diagnostic: str              # Diagnostic-Code text
    recipient: str               # Final-Recipient / Original-Recipient

    @property
    def error(self) -> str:
        parts = [x for x in (self.status, self.diagnostic) if x]
        text = " ".join(parts) or "delivery failed (no status given)"
        return f"{self.recipient}: {text}" if self.recipient else text


def is_dsn(msg: Message) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    return str(msg.get_param("report-type", "") or "").lower() == "delivery-status"


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    if isinstance(payload, str):
        return [HeaderParser().parsestr(chunk.strip() + "\n")
                for chunk in payload.replace("\r\n", "\n").split("\n\n") if chunk.strip()]
    return []


def _field(value: object) -> str:
    """'rfc822; user@x' → 'user@x'; 'smtp; 550 5.1.1 no' → '550 5.1.1 no'."""
    text = decode_header_value(value).strip()
    kind, sep, rest = text.partition(";")
    return rest.strip() if sep and kind.strip().isalnum() else text


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
        elif ctype in ("message/rfc822", "message/global") and not mid:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                mid = _message_id(inner[0].get("Message-ID", ""))
        elif ctype in ("text/rfc822-headers", "text/global-headers") and not mid:
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

