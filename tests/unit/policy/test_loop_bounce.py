"""Loop signals and DSN recognition (prepare stages, no database)."""

from __future__ import annotations

import pytest

from gateway.inbound.bounce import parse_dsn
from gateway.inbound.followup import message_ids, strip_number, subject_numbers
from gateway.inbound.parse import parse_message
from tests.unit.policy.mails import dsn, mail

LOOP_HEADERS = [
    ("Precedence", "bulk"), ("Precedence", "junk"), ("Precedence", "list"),
    ("X-Loop", "helpdesk@example.org"), ("X-No-Loop", "yes"),
    ("Auto-Submitted", "auto-generated"), ("Auto-Submitted", "auto-replied"),
    ("Auto-Submitted", "auto-notified; owner-email=x@y.test"),
    ("List-Id", "<users.lists.customer.test>"), ("Mailing-List", "list users@customer.test"),
    ("List-Unsubscribe", "<mailto:leave@news.customer.test>"),
    ("X-Auto-Response-Suppress", "All"), ("X-Auto-Response-Suppress", "OOF, AutoReply"),
]


class TestLoop:
    @pytest.mark.parametrize(("name", "value"), LOOP_HEADERS)
    def test_each_loop_header_sets_loop(self, run_policy, name, value):
        """Every loop header marks the message as looping."""
        ctx = run_policy("", mail(headers=[(name, value)]))
        assert ctx.loop is True
        assert any(t.startswith("loop:") for t in ctx.trace)

    @pytest.mark.parametrize(("name", "value"), [("Auto-Submitted", "no"),
                                                 ("Precedence", "first-class"),
                                                 ("Auto-Submitted", "No "),
                                                 ("X-Auto-Response-Suppress", "DR, NDR, RN")])
    def test_non_loop_values(self, run_policy, name, value):
        """Auto-Submitted: no, other Precedence values and an X-Auto-Response-Suppress
        that only suppresses receipts are not loops."""
        assert run_policy("", mail(headers=[(name, value)])).loop is False

    def test_plain_mail_is_no_loop(self, run_policy):
        """A message without loop headers is not a loop."""
        assert run_policy("", mail()).loop is False

    def test_filter_can_clear_and_set_loop(self, run_policy):
        """A filter setting Loop = no clears a detected loop; Loop = yes sets one."""
        clear = """
            [[filter]]
            name = "010-our-list"
            match = [{ header = "List-Id", value = "users\\\\.lists" }]
            set = { "X-Deskgate-Loop" = "no" }
        """
        ctx = run_policy(clear, mail(headers=[("List-Id", "<users.lists.customer.test>")]))
        assert ctx.loop is False
        force = """
            [[filter]]
            name = "010-robot"
            match = [{ header = "From", email = "robot@.*" }]
            set = { "X-OTOBO-Loop" = "yes" }
        """
        assert run_policy(force, mail(frm="robot@customer.test")).loop is True


class TestBounce:
    @pytest.mark.parametrize("returned", ["message", "headers"])
    def test_dsn_original_message_id(self, returned):
        """The original Message-ID comes from the returned message or its headers."""
        info = parse_dsn(parse_message(dsn("<out1@example.org>", returned=returned)).msg)
        assert info is not None
        assert info.original_message_id == "<out1@example.org>"
        assert info.action == "failed" and info.status == "5.1.1"
        assert "Recipient address rejected" in info.diagnostic
        assert "gone@customer.test" in info.error and "5.1.1" in info.error

    def test_original_message_id_field(self):
        """Without a returned part, the Original-Message-ID field is used."""
        raw = dsn("<x@y>", returned="none", extra_fields="Original-Message-ID: <out2@example.org>")
        info = parse_dsn(parse_message(raw).msg)
        assert info is not None and info.original_message_id == "<out2@example.org>"

    def test_global_dsn_rfc6533(self):
        """A DSN as Postfix writes it for an SMTPUTF8 message (RFC 6533): the recipient
        blocks of its message/global-delivery-status part are read, a `utf-8;` address
        (\\x{..} escapes decoded) is the recipient, and the Message-ID comes from the
        message/global-headers part."""
        raw = ("MIME-Version: 1.0\r\nSubject: Undelivered Mail Returned to Sender\r\n"
               'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
               "\r\n--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n"
               "--b\r\nContent-Type: message/global-delivery-status\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n"
               "Reporting-MTA: dns; mx.customer.test\r\n\r\n"
               "Final-Recipient: utf-8; j\u00f6rg\\x{20}b@b\u00fccher.test\r\nAction: failed\r\n"
               "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\n"
               "--b\r\nContent-Type: message/global-headers\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n"
               "From: J\u00f6rg <support@example.org>\r\nMessage-ID: <out5@example.org>\r\n"
               "\r\n--b--\r\n").encode()
        info = parse_dsn(parse_message(raw).msg)
        assert info is not None
        assert (info.action, info.status, info.recipient, info.original_message_id) == (
            "failed", "5.1.1", "j\u00f6rg b@b\u00fccher.test", "<out5@example.org>")

    def test_not_a_dsn(self):
        """A plain message and a multipart/report of another type are no DSN."""
        assert parse_dsn(parse_message(mail()).msg) is None
        raw = dsn("<x@y>").replace(b"report-type=delivery-status",
                                   b"report-type=disposition-notification")
        assert parse_dsn(parse_message(raw).msg) is None

    def test_bounce_stage_marks_loop(self, run_policy):
        """A DSN is a bounce and a loop, so it never gets an auto-response."""
        ctx = run_policy("", dsn("<out3@example.org>"))
        assert ctx.is_bounce and ctx.loop
        assert ctx.bounced_message_id == "<out3@example.org>"

    def test_filter_cannot_clear_bounce_loop(self, run_policy):
        """Loop = no from a filter does not make a DSN eligible for auto-responses."""
        pol = """
            [[filter]]
            name = "010"
            match = [{ header = "Subject", value = "." }]
            set = { "X-Deskgate-Loop" = "no" }
        """
        assert run_policy(pol, dsn("<out4@example.org>")).loop is True


class TestSubjectNumbers:
    @pytest.mark.parametrize("subject", [
        "Ticket#2026112610000017", "Ticket#: 2026112610000017", "Ticket#:2026112610000017",
        "RE: [Ticket#2026112610000017] printer", "AW: Re: [ticket# 2026112610000017] x",
    ])
    def test_hook_forms(self, subject):
        """Every documented way of writing the hook and number is found."""
        assert subject_numbers(subject, "Ticket#") == ["2026112610000017"]

    def test_other_hook_and_no_number(self):
        """A configured hook is used literally; no hook, no number."""
        assert subject_numbers("Re: [Req-123456] x", "Req-") == ["123456"]
        assert subject_numbers("Re: Ticket 2026112610000017", "Ticket#") == []

    def test_system_id_that_is_not_digits(self):
        """With system_id "HD" our numbers (YYYYMMDD + HD + counter) are found whole;
        a number of digits only (a helpdesk's) still is."""
        assert subject_numbers("Re: [Ticket#20261206HD00017] x", "Ticket#", "HD") == [
            "20261206HD00017"]
        assert subject_numbers("Re: [ticket#20261206hd00017] x", "Ticket#", "HD") == [
            "20261206HD00017"]
        assert subject_numbers("Re: [Ticket#1234567] x", "Ticket#", "HD") == ["1234567"]
        assert subject_numbers("Re: [Ticket#2026112610000017] x", "Ticket#", "10") == [
            "2026112610000017"]

    def test_strip_number(self):
        """The old number is removed from the title of a linked new ticket."""
        assert strip_number("RE: [Ticket#2026112610000017] printer", "2026112610000017",
                            "Ticket#") == "RE: printer"

    def test_white_space_runs_are_linear(self):
        """A Subject with long runs of white space (after the hook, or anywhere for the
        title) is searched in linear time: the patterns tried every split of a run between
        two \\s*, and every start in it (100 KB: minutes)."""
        import time

        n = 200_000
        for subject in ("Ticket#" + " " * n + "x", "Ticket#:" + " " * n + "x",
                        "x" + " " * n + "Ticket#", ("Ticket#" + " " * 50) * (n // 57)):
            start = time.perf_counter()
            subject_numbers(subject, "Ticket#")
            strip_number(subject, "2026112610000017", "Ticket#")
            assert time.perf_counter() - start < 1, subject[:20]

    def test_same_matches_as_before(self):
        """The linear patterns find and remove what the plain ones did."""
        import random
        import re

        def numbers(subject: str) -> list[str]:
            return [m.group(1) for m in re.finditer(r"Ticket\#\s*:?\s*(\d{4,})", subject,
                                                     re.IGNORECASE)]

        def strip(title: str, number: str) -> str:
            rx = re.compile(r"\[?\s*Ticket\#\s*:?\s*" + number + r"\s*\]?", re.IGNORECASE)
            return re.sub(r"\s{2,}", " ", rx.sub("", title)).strip() or title

        pieces = ["Ticket#", "ticket#", " ", "\t", ":", "[", "]", "1234", "2026", "x", "\n"]
        rnd = random.Random(5)
        for _ in range(20000):
            subject = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
            assert subject_numbers(subject, "Ticket#") == list(dict.fromkeys(numbers(subject)))
            assert strip_number(subject, "1234", "Ticket#") == strip(subject, "1234"), subject

    def test_message_ids(self):
        """References lists are split into Message-IDs."""
        assert message_ids("<a@x> <b@y>\r\n <c@z>") == ["<a@x>", "<b@y>", "<c@z>"]
        assert message_ids("bare@x") == ["<bare@x>"]
