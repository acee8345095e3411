"""A smarthost's reply in the DSN: every line of a multi-line reply (smtplib joins their
texts with LF), on one line as Postfix writes it, in a Diagnostic-Code folded as a header
field must be, for an ASCII and for a UTF-8 (message/global-delivery-status) recipient."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default as default_policy

from gateway.inbound.bounce import parse_dsn
from gateway.outbound import queue as oq
from gateway.outbound.dsn import build_dsn
from gateway.textsafe import reply_line, reply_text

# As smtplib gives Gmail's unknown-user reply: the lines' texts, without their codes.
GMAIL = ("5.1.1 The email account that you tried to reach does not exist. Please try\n"
         "5.1.1 double-checking the recipient's email address for typos or\n"
         "5.1.1 unnecessary spaces. Learn more at\n"
         "5.1.1 https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp")
GMAIL_LINE = ("550-5.1.1 The email account that you tried to reach does not exist. Please "
              "try 550-5.1.1 double-checking the recipient's email address for typos or "
              "550-5.1.1 unnecessary spaces. Learn more at 550 5.1.1 "
              "https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp")


def dsn(address: str, code: int, reply: str) -> bytes:
    return build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                     original_headers=b"From: s@example.org",
                     original_message_id="<m1@example.org>",
                     results=[oq.RcptResult(1, address, code, reply)],
                     arrival=datetime.now(UTC))


def status_lines(data: bytes) -> list[bytes]:
    """The lines of the delivery-status part (global or not), as written."""
    part = data.split(b"delivery-status", 2)[-1]
    return part.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0].split(b"\r\n")


def diagnostic(data: bytes) -> tuple[str, list[bytes]]:
    """The Diagnostic-Code's value unfolded as RFC 5322 unfolds (the CR LF before each
    continuation line removed), and the field's lines as written."""
    lines = status_lines(data)
    at = next(i for i, ln in enumerate(lines) if ln.startswith(b"Diagnostic-Code:"))
    field = [lines[at]]
    for ln in lines[at + 1:]:
        if ln[:1] not in (b" ", b"\t"):
            break
        field.append(ln)
    return b"".join(field).decode().partition(": ")[2], field


class TestReplyLine:
    def test_a_multiline_reply_is_one_line_as_postfix_writes_it(self):
        """Three lines: 'code-' before each line but the last, 'code ' before the last."""
        assert reply_line(550, "5.1.1 a\n5.1.1 b\n5.1.1 c") == \
            "550-5.1.1 a 550-5.1.1 b 550 5.1.1 c"
        assert reply_text(550, "5.1.1 a\n5.1.1 b\n5.1.1 c") == "5.1.1 a 550-5.1.1 b 550 5.1.1 c"

    def test_a_one_line_reply_is_as_it_was(self):
        """One line, and a text without a code (a connection failure), stay as they are
        but for their control characters."""
        assert reply_line(250, "2.0.0 ok") == "250 2.0.0 ok"
        assert reply_line(0, "timed out\nx\x1b") == "0 timed out\\nx\\x1b"


class TestDiagnosticCode:
    def test_a_long_multiline_reply_is_folded_whole(self):
        """Gmail's four-line refusal: the Diagnostic-Code, unfolded, is the whole reply as
        Postfix writes it, its folded lines within 78 characters and each continuation
        starting with a space; the DSN parses without defects."""
        data = dsn("a@customer.test", 550, GMAIL)
        msg = BytesParser(policy=default_policy).parsebytes(data)
        assert all(not p.defects for p in msg.walk())
        info = parse_dsn(message_from_bytes(data))
        assert info is not None and info.status == "5.1.1"
        value, field = diagnostic(data)
        assert value == f"smtp; {GMAIL_LINE}"
        assert len(field) > 1 and all(len(ln) <= 78 for ln in field), field

    def test_the_last_line_of_a_reply_longer_than_900_characters_is_kept(self):
        """Six lines of 150 characters: the last line is in the Diagnostic-Code and the
        readable part (before, the Diagnostic-Code was cut at 900 characters)."""
        reply = "\n".join(f"5.7.1 line{i} " + "x" * 60 + " " + "y" * 70 for i in range(6))
        data = dsn("a@customer.test", 554, reply)
        value, _ = diagnostic(data)
        assert value.startswith("smtp; 554-5.7.1 line0 ")
        assert value.endswith("554 5.7.1 line5 " + "x" * 60 + " " + "y" * 70)
        msg = BytesParser(policy=default_policy).parsebytes(data)
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        assert f"554-5.7.1 line4 {'x' * 60} {'y' * 70} 554 5.7.1 line5" \
            in " ".join(text.get_content().split())

    def test_utf8_recipient_gets_a_folded_diagnostic_code(self):
        """A UTF-8 recipient (message/global-delivery-status, written by deskgate, not the
        generator): the multi-line reply is one folded field too, no line of the part
        longer than 78 characters and none without its field name or a leading space."""
        data = dsn("j\u00f6rg@b\u00fccher.test", 550, GMAIL)
        msg = BytesParser(policy=default_policy).parsebytes(data)
        assert all(not p.defects for p in msg.walk())
        lines = [ln for ln in status_lines(data) if ln]
        assert all(len(ln.decode()) <= 78 for ln in lines), lines
        assert all(ln[:1] == b" " or b":" in ln.split(b" ", 1)[0] for ln in lines), lines
        assert diagnostic(data)[0] == f"smtp; {GMAIL_LINE}"
        info = parse_dsn(message_from_bytes(data))
        assert info is not None and info.status == "5.1.1"
        assert info.recipient == "j\u00f6rg@b\u00fccher.test"


class TestStatus:
    def test_a_retried_5xx_is_reported_in_class_4_with_the_servers_reply(self):
        """A relay refusing the connection with 554 5.7.1 (retried, as a refusal of the
        relay is ours to fix): the delay notice says Status 4.7.1 and Diagnostic-Code
        'smtp; 554 5.7.1 no service', as Postfix's soft bounce reports it."""
        data = build_dsn(action="delayed", reporting_mta="helpdesk.test",
                         to="app@internal.test", original_headers=b"From: s@example.org",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "a@x.test", 554, "5.7.1 no service",
                                                temporary=True)],
                         arrival=datetime.now(UTC))
        info = parse_dsn(message_from_bytes(data))
        assert info is not None
        assert (info.status, info.diagnostic) == ("4.7.1", "554 5.7.1 no service")

    def test_a_refusal_without_an_enhanced_code_gets_x00_from_its_class(self):
        """'554 no thanks' (no enhanced code) gives Status 5.0.0."""
        info = parse_dsn(message_from_bytes(dsn("a@x.test", 554, "no thanks")))
        assert info is not None
        assert (info.status, info.diagnostic) == ("5.0.0", "554 no thanks")
