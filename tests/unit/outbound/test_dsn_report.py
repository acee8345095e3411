"""The DSN deskgate sends back, read with the email package as a mail client or a
bounce processor reads it: RFC 6522's multipart/report with its three parts, RFC
3464's per-message and per-recipient fields, and the reason in the readable part as
Postfix writes it (the server and the command its reply answered)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.utils import parsedate_to_datetime

from gateway.inbound.bounce import parse_dsn
from gateway.outbound import queue as oq
from gateway.outbound.dsn import build_dsn

ARRIVAL = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
LAST = ARRIVAL + timedelta(hours=1)
REFUSED = oq.RcptResult(1, "a@customer.test", 550, "5.1.1 <a@customer.test>: no such user",
                        host="mx.customer.test[192.0.2.1]", command="RCPT TO")


def report(results: list[oq.RcptResult], *, action: str = "failed", **kw: object) -> Message:
    data = build_dsn(action=action, reporting_mta="helpdesk.test",  # type: ignore[arg-type]
                     to="app@internal.test",
                     original_headers=b"From: app@internal.test\r\nSubject: hi\r\n"
                                      b"Message-ID: <m1@internal.test>",
                     original_message_id="<m1@internal.test>", results=results,
                     arrival=ARRIVAL, last_attempt=LAST, **kw)  # type: ignore[arg-type]
    return message_from_bytes(data)


def blocks(msg: Message) -> list[Message]:
    part = msg.get_payload()[1]
    payload = part.get_payload()
    assert isinstance(payload, list)
    return payload


def unfolded(value: str) -> str:
    """A field's value unfolded as RFC 5322 unfolds it (its line breaks removed)."""
    return value.replace("\r", "").replace("\n", "")


def readable(msg: Message) -> str:
    text = msg.get_payload()[0].get_payload(decode=True).decode()
    lines: list[str] = []
    for ln in text.splitlines():
        if ln.startswith("    ") and lines:
            lines[-1] += " " + ln.strip()
        else:
            lines.append(ln)
    return "\n".join(lines)


class TestStructure:
    def test_multipart_report_with_its_three_parts(self):
        """multipart/report; report-type=delivery-status: a text/plain part, the
        message/delivery-status part, the returned headers as text/rfc822-headers."""
        msg = report([REFUSED])
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        assert [p.get_content_type() for p in msg.get_payload()] == [
            "text/plain", "message/delivery-status", "text/rfc822-headers"]
        returned = msg.get_payload()[2].get_payload()
        assert "Message-ID: <m1@internal.test>" in returned

    def test_per_message_fields(self):
        """Reporting-MTA as 'dns; name', Arrival-Date the message's arrival, and the
        queue id and envelope sender as Postfix's X-Postfix-Queue-ID and X-Postfix-Sender
        give them (X-Deskgate-Queue-ID, X-Deskgate-Sender)."""
        msg = report([REFUSED], queue_id=42, sender="app@internal.test")
        per_msg = blocks(msg)[0]
        assert per_msg["Reporting-MTA"] == "dns; helpdesk.test"
        assert parsedate_to_datetime(per_msg["Arrival-Date"]) == ARRIVAL
        assert per_msg["X-Deskgate-Queue-ID"] == "42"
        assert per_msg["X-Deskgate-Sender"] == "rfc822; app@internal.test"
        assert per_msg["Final-Recipient"] is None

    def test_fields_in_the_order_of_rfc_3464(self):
        """RFC 3464 2.2 and 2.3 give the fields in order, extension fields (X-) last:
        Reporting-MTA, Arrival-Date, then the queue id and the sender; Final-Recipient,
        Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date,
        Will-Retry-Until."""
        msg = report([REFUSED], action="delayed", queue_id=42, sender="app@internal.test",
                     retry_until=LAST + timedelta(days=4))
        per_msg, rcpt = blocks(msg)
        assert per_msg.keys() == ["Reporting-MTA", "Arrival-Date", "X-Deskgate-Queue-ID",
                                  "X-Deskgate-Sender"]
        assert rcpt.keys() == ["Final-Recipient", "Action", "Status", "Remote-MTA",
                               "Diagnostic-Code", "Last-Attempt-Date", "Will-Retry-Until"]

    def test_a_utf8_sender_makes_the_status_part_global(self):
        """A UTF-8 envelope sender is 'utf-8; jörg@kunde.test' raw, which only a
        message/global-delivery-status part may hold (RFC 6533), not an RFC 2047
        encoded word in a message/delivery-status part."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test",
                         to="j\u00f6rg@kunde.test", original_headers=b"From: a@b.test",
                         original_message_id="", results=[REFUSED], arrival=ARRIVAL,
                         sender="j\u00f6rg@kunde.test")
        assert b"Content-Type: message/global-delivery-status" in data
        assert "X-Deskgate-Sender: utf-8; j\u00f6rg@kunde.test\r\n".encode() in data

    def test_per_recipient_fields_of_a_refusal(self):
        """A refusal at RCPT TO: Final-Recipient, Action, Status from the reply,
        Remote-MTA the server that refused (by name), Diagnostic-Code the reply alone,
        Last-Attempt-Date; one block per recipient."""
        (rcpt,) = blocks(report([REFUSED]))[1:]
        assert rcpt["Final-Recipient"] == "rfc822; a@customer.test"
        assert (rcpt["Action"], rcpt["Status"]) == ("failed", "5.1.1")
        assert rcpt["Remote-MTA"] == "dns; mx.customer.test"
        assert unfolded(rcpt["Diagnostic-Code"]) == (
            "smtp; 550 5.1.1 <a@customer.test>: no such user")
        assert parsedate_to_datetime(rcpt["Last-Attempt-Date"]) == LAST

    def test_a_failure_without_a_reply_has_no_remote_mta(self):
        """A connection that failed (code 0): no Remote-MTA (no server answered), the
        failure in a Diagnostic-Code of deskgate's own type, as Postfix writes
        'X-Postfix; connect to ...'; Status 4.4.1 as Postfix gives a failed connect."""
        failed = oq.RcptResult(1, "a@customer.test", 0,
                               "connect to mx.customer.test[192.0.2.1]:25: Connection "
                               "refused")
        (rcpt,) = blocks(report([failed], action="delayed"))[1:]
        assert rcpt["Remote-MTA"] is None
        assert unfolded(rcpt["Diagnostic-Code"]) == ("X-Deskgate; connect to mx.customer.test"
                                           "[192.0.2.1]:25: Connection refused")
        assert rcpt["Status"] == "4.4.1"

    def test_deskgates_own_refusal_has_no_remote_mta(self):
        """An address deskgate refused itself (553 5.1.3, no server involved): no
        Remote-MTA (before, every recipient named the relay)."""
        own = oq.RcptResult(1, "a@customer.test", 553, "5.1.3 address contains a line break")
        data = build_dsn(action="failed", reporting_mta="helpdesk.test",
                         to="app@internal.test", original_headers=b"From: a@b.test",
                         original_message_id="", results=[own],
                         arrival=ARRIVAL)
        (rcpt,) = blocks(message_from_bytes(data))[1:]
        assert rcpt["Remote-MTA"] is None
        assert rcpt["Diagnostic-Code"] == "smtp; 553 5.1.3 address contains a line break"


class TestReadablePart:
    def test_the_reason_names_the_host_and_the_command(self):
        """'<a@customer.test>: host mx.customer.test[192.0.2.1] said: 550 5.1.1 ... (in
        reply to RCPT TO command)', as Postfix's bounce writes it."""
        text = readable(report([REFUSED]))
        assert ("<a@customer.test>: host mx.customer.test[192.0.2.1] said: 550 5.1.1 "
                "<a@customer.test>: no such user (in reply to RCPT TO command)") in text

    def test_a_blank_line_after_each_recipient(self):
        """Each recipient's entry is followed by a blank line, as in Postfix's bounce,
        so that wrapped entries stay apart."""
        other = oq.RcptResult(2, "b@customer.test", 0, "connect to mx.customer.test"
                              "[192.0.2.1]:25: Connection timed out")
        msg = report([REFUSED, other])
        entries = readable(msg).rstrip("\n").split("\n\n")
        assert entries[-2].startswith("<a@customer.test>: host ")
        assert entries[-1].startswith("<b@customer.test>: connect to ")
        assert msg.get_payload()[0].get_payload(decode=True).endswith(b"out\r\n\r\n")

    def test_a_bounce_processor_still_reads_the_reply(self):
        """parse_dsn (as a helpdesk reads a bounce) gets the Status and the reply itself
        from the Diagnostic-Code, without the host."""
        info = parse_dsn(report([REFUSED]))
        assert info is not None
        assert (info.status, info.diagnostic) == (
            "5.1.1", "550 5.1.1 <a@customer.test>: no such user")
