"""Hand-built HandoffItems, as the hand-off worker would load them from the store."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

from gateway.helpdesk.base import HandoffItem
from gateway.model import AttachmentData

_ids = itertools.count(1)


def mail(subject: str, body: str = "Hello helpdesk.\n", *, sender: str = "alice@example.com",
         to: str = "support@example.org", message_id: str = "", in_reply_to: str = "",
         headers: dict[str, str] | None = None,
         attachments: list[AttachmentData] | None = None) -> bytes:
    """A customer's message as bytes (CRLF-free, as deskgate keeps it)."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@example.com>"
    m["Date"] = "Thu, 03 Dec 2026 08:00:00 +0000"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
        m["References"] = in_reply_to
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    for a in attachments or ():
        maintype, subtype = a.content_type.split("/", 1)
        m.add_attachment(a.content, maintype=maintype, subtype=subtype, filename=a.filename)
    return m.as_bytes(policy=policy.SMTP.clone(linesep="\n"))


def item(mime: bytes, *, kind: Literal["create", "followup"] = "create", queue: str = "Raw",
         decisions: dict[str, str] | None = None, attempts: int = 0,
         helpdesk_ticket_id: str = "", helpdesk_ticket_number: str = "",
         crypto: dict[str, Any] | None = None, key: str = "",
         sender_type: str = "customer", **ticket: Any) -> HandoffItem:
    """A HandoffItem for `mime`; article fields are read from the message."""
    msg = message_from_bytes(mime, policy=policy.default)
    n = next(_ids)
    body_part = msg.get_body(("plain",))
    body = body_part.get_content() if body_part is not None else ""
    attachments = [AttachmentData(filename=p.get_filename() or "",
                                  content_type=p.get_content_type(),
                                  content=p.get_payload(decode=True) or b"")
                   for p in msg.iter_attachments()]
    d = {"Queue": queue, "Priority": "3 normal", "State": "new", "Title": str(msg["Subject"]),
         "CustomerUser": str(msg["From"]).split("<")[-1].rstrip(">")}
    d.update(decisions or {})
    return HandoffItem(
        id=n, kind=kind, key=key or f"dg-{uuid.uuid4().hex}", attempts=attempts,
        ticket_id=n, article_id=n, helpdesk_ticket_id=helpdesk_ticket_id,
        helpdesk_ticket_number=helpdesk_ticket_number, queue=d["Queue"] if kind == "create"
        else queue, decisions=d,
        ticket={"number": "", "title": d["Title"], "queue": d["Queue"], "state": d["State"],
                "priority": d["Priority"], "type": "", "customer_user": d["CustomerUser"],
                "customer_no": "", "dynamic_fields": {}, **ticket},
        article={"from": str(msg["From"]), "to": str(msg["To"]), "cc": str(msg["Cc"] or ""),
                 "reply_to": "", "subject": str(msg["Subject"]),
                 "message_id": str(msg["Message-ID"]),
                 "in_reply_to": str(msg["In-Reply-To"] or ""),
                 "references": str(msg["References"] or ""),
                 "content_type": "text/plain; charset=utf-8", "body": body, "body_html": "",
                 "sender_type": sender_type, "is_visible_for_customer": True},
        attachments=attachments, crypto=crypto or {}, mime=mime,
        created=datetime.now(UTC).isoformat())
