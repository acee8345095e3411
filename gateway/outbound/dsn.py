"""RFC 3464 delivery status notifications (failed, delayed, and relayed or delivered
for NOTIFY=SUCCESS) for the submitter.

A failure notice returns the message whole (message/rfc822) when it is not larger
than `relay.bounce_size_limit`, else only its headers (text/rfc822-headers), as
Postfix's bounce_size_limit decides; a delay notice returns the headers only. What
comes back is the message as deskgate queued and sent it (the copy for the failed
recipients), the original of RFC 6522 as Postfix returns its queue file's content.
A message submitted with RET=HDRS gets its headers only in a failure notice too; a
success notice returns the headers (RET=FULL is for failure notices, RFC 3461 4.3).
ENVID and ORCPT (RFC 3461) are reported as Original-Envelope-Id and
Original-Recipient (RFC 3464 2.2.1, 2.3.1).

A DSN goes out through the same queue with the null envelope sender (or
`relay.bounce_sender`), so it can itself never cause another DSN.

A non-ASCII recipient is reported as RFC 6533 asks: `Final-Recipient: utf-8;
<address>`, raw UTF-8, in a message/global-delivery-status part; ASCII ones keep
`rfc822;` (in a message/delivery-status part when every address, the envelope
sender's too, is ASCII).
Original headers in UTF-8 come back as message/global-headers, a whole message with
UTF-8 headers as message/global. A non-ASCII return
path is written in To: as raw UTF-8 (RFC 6532), and the DSN, whose recipient it is,
goes out with SMTPUTF8 (gateway.outbound.transport).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Literal

from gateway.outbound.headers import FOLD_AT, header_safe, ids_that_fit, raw_utf8
from gateway.outbound.queue import RcptResult
from gateway.outbound.transport import failure_status, host_name
from gateway.textsafe import reply_line, shown

# A reply is reported whole, every line of a multi-line one (as Postfix's bounce
# does), up to REPLY_MAX characters; a word is cut to WORD_MAX, so that a folded line
# stays within RFC 5322's 998 octets.
REPLY_MAX = 2000
WORD_MAX = 900
_LONG_WORD = re.compile(rf"\S{{{WORD_MAX + 1},}}")


def _cut(text: str) -> str:
    return _LONG_WORD.sub(lambda m: m.group()[:WORD_MAX], text)[:REPLY_MAX]


def _reply(r: RcptResult) -> str:
    """The recipient's reply on one line (reply_line), for the Diagnostic-Code."""
    return _cut(reply_line(r.code, r.reply) if r.code else shown(r.reply))


def _reason(r: RcptResult) -> str:
    """Why, as Postfix's bounce says it in its readable part: the reply with the server
    and the command it answered (RcptResult.reason)."""
    return _cut(r.reason)


def _wrapped(line: str, indent: str) -> list[str]:
    """`line` folded at its spaces into lines of at most FOLD_AT characters (a longer
    word stays whole), each after the first starting with `indent`."""
    return textwrap.wrap(line, width=FOLD_AT, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [line]


def _enhanced(r: RcptResult, action: str) -> str:
    """The Status: the enhanced code the server gave at the start of its reply, else
    X.0.0 from the reply's class. A 5xx that is retried (RcptResult.temporary) is
    reported in class 4, as Postfix's soft bounce reports it."""
    head = r.reply.split(" ", 1)[0] if r.reply else ""
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] in "245":
        return "4" + head[1:] if r.temporary and head[0] == "5" else head
    if action in ("relayed", "delivered"):
        return "2.0.0"
    detail = "0.0" if r.code else failure_status(r.reply)
    if action == "delayed" or r.temporary:
        return f"4.{detail}"
    return f"5.{detail}" if r.code >= 500 or r.code == 0 else f"4.{detail}"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _RawParts:
    """8-bit bodies of message/* parts, written as they are.

    The generator writes a message/* part given as text only when it is ASCII, so such
    a part holds a placeholder until the report is generated; the boundary is chosen
    here so that it cannot occur in what replaces the placeholders.
    """

    def __init__(self) -> None:
        self.parts: dict[bytes, bytes] = {}

    def put(self, part: MIMEBase, body: bytes, cte: str = "8bit") -> None:
        token = f"deskgate-raw-part-{len(self.parts)}-{secrets.token_hex(8)}"
        part.set_payload(token)
        part["Content-Transfer-Encoding"] = cte
        self.parts[token.encode()] = body

    def fill(self, report: MIMEMultipart) -> bytes:
        """The report as bytes with every placeholder replaced by its body."""
        if not self.parts:
            return report.as_bytes()
        bodies = b"\n".join(self.parts.values())
        boundary = f"=_deskgate_{secrets.token_hex(12)}"
        while boundary.encode() in bodies:         # as good as never
            boundary = f"=_deskgate_{secrets.token_hex(12)}"
        report.set_boundary(boundary)
        data = report.as_bytes()
        for token, body in self.parts.items():
            data = data.replace(token, body)
        return data


Action = Literal["failed", "delayed", "relayed", "delivered"]


def build_dsn(*, action: Action, reporting_mta: str, to: str,
              original_headers: bytes, original_message_id: str, results: Sequence[RcptResult],
              arrival: datetime, last_attempt: datetime | None = None,
              retry_until: datetime | None = None, queue_id: int | None = None,
              sender: str | None = None, original: bytes | None = None,
              bounce_size_limit: int = 0, ret: str = "", envid: str = "",
              orcpts: Mapping[int, str] | None = None) -> bytes:
    """The DSN message as CRLF bytes. Each result names the server that answered
    (RcptResult.host, its Remote-MTA); `queue_id` and `sender` (the message's envelope
    sender) are reported as Postfix's X-Postfix-Queue-ID and X-Postfix-Sender are.
    A failure notice returns `original` (the whole message) when it is given and not
    larger than `bounce_size_limit` (0: never); otherwise `original_headers` come
    back. `ret` (RET=HDRS: headers only), `envid` and `orcpts` (ORCPT by the results'
    row_id) are the message's DSN parameters ('' / None: not given)."""
    whole = (action == "failed" and original is not None and ret != "HDRS"
             and bounce_size_limit > 0 and len(original) <= bounce_size_limit)
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    # A UTF-8 address stays raw UTF-8 (RFC 6532; the DSN goes with SMTPUTF8 because its
    # recipient is not ASCII): an RFC 2047 encoded word is no address. As surrogates, the
    # generator writes the bytes as they are.
    report["To"] = raw_utf8(header_safe(to))
    if action == "failed":
        report["Subject"] = "Undelivered Mail Returned to Sender"
    elif action == "delayed":
        report["Subject"] = "Delayed Mail (still being retried)"
    else:
        report["Subject"] = "Successful Mail Delivery Report"
    report["Date"] = email.utils.format_datetime(datetime.now(UTC))
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    # A Message-ID too long for a line (RFC 5322 2.1.1) is left out: it must not be
    # encoded, not even when it is UTF-8 (RFC 6532: written raw, like To:).
    in_reply_to = raw_utf8(ids_that_fit(header_safe(original_message_id)))
    if in_reply_to:
        report["In-Reply-To"] = in_reply_to
        report["References"] = in_reply_to

    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if action == "failed":
        lines.append("Your message could not be delivered to one or more recipients. "
                     "It has been given up on.")
    elif action in ("relayed", "delivered"):
        # Postfix's success notice, on one line
        lines.append("Your message was successfully delivered to the destination(s) "
                     "listed below. If the message was delivered to mailbox you will "
                     "receive no further notifications. Otherwise you may still receive "
                     "notifications of mail delivery errors from other systems.")
    else:
        lines.append("Your message has not been delivered yet to one or more recipients. "
                     "Delivery will be retried; no action is needed.")
    lines += ["The message is attached below." if whole else "Its headers are attached below.",
              ""]
    for r in results:
        # The address as its own text only (the status fields below keep it readable by
        # programs): a line break in it would start a line of its own here. Wrapped as
        # Postfix wraps it, the continuation lines indented, a blank line after it.
        lines += [*_wrapped(f"<{shown(r.address)}>: {_reason(r)}".rstrip(), "    "), ""]
    text = "\n".join(lines) + "\n"
    report.attach(MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8"))

    raw = _RawParts()
    per_msg = Message()
    if envid:
        # RFC 3464 2.2.1: first, as the sender gave it (printable ASCII, xtext decoded)
        per_msg["Original-Envelope-Id"] = envid
    per_msg["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_msg["Arrival-Date"] = email.utils.format_datetime(arrival)
    # Extension fields come last (RFC 3464 2.2).
    if queue_id is not None:
        per_msg["X-Deskgate-Queue-ID"] = str(queue_id)
    if sender is not None:
        per_msg["X-Deskgate-Sender"] = header_safe(
            f"{'rfc822' if sender.isascii() else 'utf-8'}; {sender}")
    blocks = [per_msg]
    for r in results:
        b = Message()
        orcpt = (orcpts or {}).get(r.row_id, "")
        if orcpt:
            # RFC 3464 2.3.1: ORCPT's addr-type and address, xtext decoded
            b["Original-Recipient"] = header_safe(orcpt)
        kind = "rfc822" if r.address.isascii() else "utf-8"
        b["Final-Recipient"] = header_safe(f"{kind}; {r.address}")
        b["Action"] = action
        b["Status"] = _enhanced(r, action)
        if r.host and r.code:
            # Only a server that answered is named (Postfix names none for a failed
            # connection); deskgate's own refusals (no host) name none either.
            b["Remote-MTA"] = f"dns; {host_name(r.host)}"
        # A failure without a reply in a diagnostic type of deskgate's own, as
        # Postfix writes "X-Postfix; connect to ...".
        b["Diagnostic-Code"] = f"smtp; {_reply(r)}" if r.code else f"X-Deskgate; {_reply(r)}"
        if last_attempt:
            b["Last-Attempt-Date"] = email.utils.format_datetime(last_attempt)
        if action == "delayed" and retry_until:
            b["Will-Retry-Until"] = email.utils.format_datetime(retry_until)
        blocks.append(b)
    if all(r.address.isascii() for r in results) and (sender or "").isascii():
        status_part = MIMEBase("message", "delivery-status")
        status_part.set_payload(blocks)  # type: ignore[arg-type]
    else:
        # The fields as written, UTF-8 unencoded (the generator would apply RFC 2047 to
        # header blocks), carried as surrogates like the headers part below.
        status_part = MIMEBase("message", "global-delivery-status")
        # Folded here, as the generator folds the ASCII ones.
        fields = "\r\n\r\n".join("\r\n".join("\r\n".join(_wrapped(f"{k}: {v}", " "))
                                               for k, v in b.items())
                                   for b in blocks) + "\r\n"
        raw.put(status_part, fields.encode("utf-8", "surrogateescape"))
    report.attach(status_part)

    if whole:
        assert original is not None
        report.attach(_whole_message(original, raw))
        return _crlf(raw.fill(report))
    # The header bytes as they were sent, in a part marked 8bit when they are not ASCII:
    # UTF-8 ones (RFC 6532) as message/global-headers, other 8-bit bytes (which pass the
    # generator as surrogates) as text/rfc822-headers.
    returned = original_headers.rstrip(b"\r\n") + b"\r\n"
    if original_headers.isascii() or not _is_utf8(original_headers):
        headers_part = MIMEBase("text", "rfc822-headers")
        headers_part.set_payload(returned.decode("ascii", "surrogateescape"))
        if not original_headers.isascii():
            headers_part["Content-Transfer-Encoding"] = "8bit"
    else:
        headers_part = MIMEBase("message", "global-headers")
        raw.put(headers_part, returned)
    report.attach(headers_part)
    return _crlf(raw.fill(report))


def _whole_message(original: bytes, raw: _RawParts) -> MIMEBase:
    """The message's bytes as they were sent: message/global when its headers are UTF-8
    (RFC 6532, RFC 6533 section 3), else message/rfc822; marked 8bit when any byte of it
    is (7bit otherwise)."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    if headers.isascii() or not _is_utf8(headers):
        part = MIMEBase("message", "rfc822")
    else:
        part = MIMEBase("message", "global")
    body = original if original.endswith(b"\r\n") else original + b"\r\n"
    raw.put(part, body, "7bit" if original.isascii() else "8bit")
    return part


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
