"""The message the PostMaster pipe hands over carries what the postmaster filters set
(gateway.helpdesk.setfields): headers written once and encoded, a set Body as the text
body in well-formed MIME, everything else as it came."""

from __future__ import annotations

import email
from email.policy import compat32

from gateway.helpdesk.setfields import (
    replace_body,
    replace_headers,
    set_body,
    set_headers,
    with_set_values,
)
from gateway.inbound.parse import parse_message
from gateway.inbound.parse import set_header as filter_set

RAW = (b"From: =?utf-8?q?Doe=2C_John?= <jd@customer.test>\r\n"
       b"To: support@example.org\r\n"
       b"Subject: =?utf-8?q?Dr=C3=BCcker?= broken\r\n"
       b"Subject: a second subject\r\n"
       b"Message-ID: <m1@customer.test>\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n"
       b"\r\n"
       b"It is broken.\x00\r\n")

ALTERNATIVE = (b"From: a@customer.test\r\nTo: support@example.org\r\nSubject: x\r\n"
               b"MIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="out"\r\n\r\n'
               b"--out\r\n"
               b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
               b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\noriginal text\r\n"
               b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
               b"<p>original html</p>\r\n"
               b"--alt--\r\n"
               b"--out\r\nContent-Type: application/pdf\r\n"
               b'Content-Disposition: attachment; filename="a.pdf"\r\n'
               b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
               b"--out--\r\n")


def stored_after(raw: bytes, sets: dict[str, str]) -> tuple[list[tuple[str, str]], str,
                                                          str | None]:
    """The article's header list, body and HTML body as deskgate stores them after
    filters set `sets`."""
    p = parse_message(raw)
    for name, value in sets.items():
        filter_set(p, name, value)
    return p.headers, p.body, p.body_html


def header_values(mime: bytes, name: str) -> list[str]:
    msg = email.message_from_bytes(mime, policy=compat32)
    return [str(v) for k, v in msg.raw_items() if k.lower() == name.lower()]


class TestWhatFiltersSet:
    """Set values are found by comparing the stored article with the raw message."""

    def test_nothing_set_leaves_the_message_byte_for_byte(self) -> None:
        """Encoded headers, duplicate Subjects and a NUL in the body are no 'set'."""
        headers, body, html = stored_after(RAW, {})
        article = {"headers": headers, "body": body.replace("\x00", "\ufffd"),
                   "body_html": html}
        assert set_headers(RAW, headers) == {}
        assert set_body(RAW, article, {}, True) is None
        assert with_set_values(RAW, {}, None) == RAW

    def test_set_headers_are_the_ones_found(self) -> None:
        """Subject, From and In-Reply-To set by a filter are found with their values."""
        headers, _b, _h = stored_after(RAW, {"Subject": "Re: [Ticket#2026120610000011] x",
                                             "From": "Web <dora@customer.test>",
                                             "In-Reply-To": "<a@b.test>"})
        assert set_headers(RAW, headers) == {"Subject": "Re: [Ticket#2026120610000011] x",
                                             "From": "Web <dora@customer.test>",
                                             "In-Reply-To": "<a@b.test>"}

    def test_set_body_is_found_and_not_for_unstored_text(self) -> None:
        """A set Body differs from the message's text; an article that does not hold the
        decrypted text says nothing."""
        headers, body, html = stored_after(ALTERNATIVE, {"Body": "new text"})
        article = {"headers": headers, "body": body, "body_html": html}
        assert set_body(ALTERNATIVE, article, {}, True) == "new text"
        assert set_body(ALTERNATIVE, article, {"decrypted": True}, False) is None
        _h, body, html = stored_after(ALTERNATIVE, {})
        assert set_body(ALTERNATIVE, {"body": body, "body_html": html}, {}, True) is None


class TestHeadersWritten:
    """Set headers are written once, where they were, as a message carries them."""

    def test_subject_once_encoded_at_its_place(self) -> None:
        """Both Subject lines become one RFC 2047 line at the first one's place."""
        out = replace_headers(RAW, {"Subject": "Drücker kaputt [Ticket#1] ok"})
        assert header_values(out, "Subject") == [
            "=?utf-8?q?Dr=C3=BCcker_kaputt_=5BTicket=231=5D_ok?="]
        p = parse_message(out)
        assert p.subject == "Drücker kaputt [Ticket#1] ok"
        assert [k for k, _v in p.headers][:4] == ["From", "To", "Subject", "Message-ID"]
        assert out.endswith(b"\r\n\r\nIt is broken.\x00\r\n")

    def test_address_headers_keep_addresses_readable(self) -> None:
        """Only display names are encoded; a comma in a name stays one mailbox."""
        out = replace_headers(RAW, {"From": '"Müller, Dora" <dora@customer.test>',
                                    "Reply-To": "help@customer.test"})
        [frm] = header_values(out, "From")
        assert frm.endswith(" <dora@customer.test>") and "=?utf-8?" in frm
        p = parse_message(out)
        assert p.from_email == "dora@customer.test"
        assert p.from_addr == '"Müller, Dora" <dora@customer.test>'
        assert p.reply_to == "help@customer.test"

    def test_no_line_break_gets_in(self) -> None:
        """A value with CR/LF cannot add a header."""
        out = replace_headers(RAW, {"References": "<a@b.test>\r\nBcc: x@evil.test"})
        assert header_values(out, "Bcc") == []
        assert header_values(out, "References") == ["<a@b.test> Bcc: x@evil.test"]


class TestBodyReplaced:
    """A set Body is the text body of well-formed MIME; attachments stay."""

    def test_multipart_text_replaced_html_dropped(self) -> None:
        """multipart/alternative: text/plain gets the set text, text/html goes."""
        out = replace_body(ALTERNATIVE, "The customer wants a printer. €")
        p = parse_message(out)
        assert p.body.strip() == "The customer wants a printer. €"
        assert p.body_html is None
        assert [a.filename for a in p.attachments] == ["a.pdf"]
        assert b"original" not in out

    def test_single_part_html_becomes_text(self) -> None:
        """A text/html message becomes text/plain with the set text."""
        raw = (b"From: a@customer.test\r\nSubject: x\r\n"
               b"Content-Type: text/html; charset=utf-8\r\n\r\n<b>old</b>\r\n")
        out = replace_body(raw, "new")
        msg = email.message_from_bytes(out, policy=compat32)
        assert msg.get_content_type() == "text/plain" and msg["MIME-Version"] == "1.0"
        assert parse_message(out).body.strip() == "new"

    def test_message_without_text_is_wrapped(self) -> None:
        """A message that is only an attachment becomes multipart/mixed: text, then it."""
        raw = (b"From: a@customer.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/pdf\r\n"
               b'Content-Disposition: attachment; filename="a.pdf"\r\n'
               b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n")
        out = replace_body(raw, "new")
        msg = email.message_from_bytes(out, policy=compat32)
        assert msg.get_content_type() == "multipart/mixed"
        assert header_values(out, "MIME-Version") == ["1.0"]
        p = parse_message(out)
        assert p.body.strip() == "new"
        assert [(a.filename, a.content) for a in p.attachments] == [("a.pdf", b"%PDF-")]
