"""RFC 3464 delivery status notifications (failed and delayed) for the submitter.

A DSN goes out through the same queue with the null envelope sender (or
`relay.bounce_sender`), so it can itself never cause another DSN.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Literal

from gateway.outbound.headers import header_safe
from gateway.outbound.queue import RcptResult


def _enhanced(code: int, reply: str, action: str) -> str:
    head = reply.split(" ", 1)[0] if reply else ""
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] in "245":
        return head
    if action == "delayed":
        return "4.0.0"
    return "5.0.0" if code >= 500 or code == 0 else "4.0.0"


def build_dsn(*, action: Literal["failed", "delayed"], reporting_mta: str, to: str,
              original_headers: bytes, original_message_id: str, results: Sequence[RcptResult],
              remote_mta: str, arrival: datetime, last_attempt: datetime | None = None,
              retry_until: datetime | None = None) -> bytes:
    """The DSN message as CRLF bytes."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = header_safe(to)
    if action == "failed":
        report["Subject"] = "Undelivered Mail Returned to Sender"
    else:
        report["Subject"] = "Delayed Mail (still being retried)"
    report["Date"] = email.utils.format_datetime(datetime.now(UTC))
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    if original_message_id:
        report["In-Reply-To"] = header_safe(original_message_id)
        report["References"] = header_safe(original_message_id)

    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if action == "failed":
        lines.append("Your message could not be delivered to one or more recipients. "
                     "It has been given up on.")
    else:
        lines.append("Your message has not been delivered yet to one or more recipients. "
                     "Delivery will be retried; no action is needed.")
    lines.append("")
    for r in results:
        lines.append(f"<{r.address}>: {r.code or ''} {r.reply}".rstrip())
    text = "\n".join(lines) + "\n"
    report.attach(MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8"))

    per_msg = Message()
    per_msg["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_msg["Arrival-Date"] = email.utils.format_datetime(arrival)
    blocks = [per_msg]
    for r in results:
        b = Message()
        b["Final-Recipient"] = header_safe(f"rfc822; {r.address}")
        b["Action"] = action
        b["Status"] = _enhanced(r.code, r.reply, action)
        if remote_mta:
            b["Remote-MTA"] = f"dns; {remote_mta}"
        if r.code:
            b["Diagnostic-Code"] = header_safe(f"smtp; {r.code} {r.reply}")[:900]
        if last_attempt:
            b["Last-Attempt-Date"] = email.utils.format_datetime(last_attempt)
        if action == "delayed" and retry_until:
            b["Will-Retry-Until"] = email.utils.format_datetime(retry_until)
        blocks.append(b)
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload(blocks)  # type: ignore[arg-type]
    report.attach(status_part)

    # The header bytes as they were sent: 8-bit ones (a raw UTF-8 Subject) pass through
    # the generator unchanged as surrogates, in a part marked 8bit.
    headers_part = MIMEBase("text", "rfc822-headers")
    headers_part.set_payload(original_headers.rstrip(b"\r\n").decode("ascii", "surrogateescape")
                             + "\r\n")
    if not original_headers.isascii():
        headers_part["Content-Transfer-Encoding"] = "8bit"
    report.attach(headers_part)
    data = report.as_bytes()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
