"""Sample messages for the policy tests (written for deskgate; no third-party corpus)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

_n = itertools.count(1)


def mail(subject: str = "Printer on floor 3 is jammed", *,
         frm: str = "Carla Customer <carla@customer.test>",
         to: str = "support@example.org", cc: str = "",
         body: str = "Hello,\nthe printer is jammed again.\nCarla\n",
         headers: Iterable[tuple[str, str]] | dict[str, str] = (),
         mid: str | None = None, in_reply_to: str = "", references: str = "") -> bytes:
    """A plain text message; headers go after the standard ones."""
    mid = mid or f"<m{next(_n)}.policy@customer.test>"
    lines = [f"From: {frm}", f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}", f"Message-ID: {mid}",
              "Date: Thu, 26 Nov 2026 10:00:00 +0000"]
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append(f"References: {references}")
    items = headers.items() if isinstance(headers, dict) else headers
    lines += [f"{k}: {v}" for k, v in items]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", ""]
    return ("\r\n".join(lines) + "\r\n" + body.replace("\n", "\r\n")).encode()


def with_attachments(names: Sequence[str], *, subject: str = "files attached",
                     frm: str = "carla@customer.test", to: str = "support@example.org",
                     body: str = "see attached\n") -> bytes:
    boundary = "=_b0undary"
    parts = [f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             f"{body}\r\n"]
    for name in names:
        parts.append(f"--{boundary}\r\nContent-Type: application/pdf; name=\"{name}\"\r\n"
                     f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
                     "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n")
    head = (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <a{next(_n)}.policy@customer.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n")
    return (head + "".join(parts) + f"--{boundary}--\r\n").encode()


def dsn(original_mid: str, *, returned: str = "message", status: str = "5.1.1",
        action: str = "failed", recipient: str = "gone@customer.test",
        diagnostic: str = "smtp; 550 5.1.1 <gone@customer.test>: Recipient address rejected",
        extra_fields: str = "") -> bytes:
    """An RFC 3464 DSN as Postfix writes it; returned = message | headers | none."""
    b = "=_dsn"
    original_headers = (f"From: Example Support <support@example.org>\r\nTo: {recipient}\r\n"
                        f"Subject: [Ticket#1] your request\r\nMessage-ID: {original_mid}\r\n")
    original = original_headers + "\r\nWe are on it.\r\n"
    if returned == "message":
        tail = f"--{b}\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n"
    elif returned == "headers":
        tail = (f"--{b}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
                f"{original_headers}\r\n")
    else:
        tail = ""
    text = (f"From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)\r\n"
            f"To: support@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <dsn{next(_n)}@mx.customer.test>\r\nAuto-Submitted: auto-replied\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
            f"report-type=delivery-status; boundary=\"{b}\"\r\n\r\n"
            f"--{b}\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that "
            "your message could not be delivered.\r\n\r\n"
            f"--{b}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.customer.test\r\n{extra_fields}\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
            f"Action: {action}\r\nStatus: {status}\r\nDiagnostic-Code: {diagnostic}\r\n\r\n"
            f"{tail}--{b}--\r\n")
    return text.encode()
