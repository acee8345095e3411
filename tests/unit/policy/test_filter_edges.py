"""Edge cases of the filter semantics a PostMaster administrator relies on: header
names in any case, encoded words, repeated headers, repeated `set` keys."""

from __future__ import annotations

import pytest

from tests.unit.policy.mails import mail, with_attachments


def one(match: str, set_: str = '{ "X-Deskgate-Queue" = "Junk" }', extra: str = "") -> str:
    return f'[[filter]]\nname = "010"\nmatch = {match}\nset = {set_}\n{extra}\n'


class TestHeaderNameCase:
    @pytest.mark.parametrize("name", ["subject", "SUBJECT", "sUbJeCt"])
    def test_mail_header_name_in_any_case(self, run_policy, name):
        """`header = "subject"` tests the Subject header, whatever the case of either."""
        ctx = run_policy(one(f'[{{ header = "{name}", value = "printer" }}]'), mail())
        assert ctx.params["Queue"] == "Junk"

    def test_header_in_the_message_in_other_case(self, run_policy):
        """A header written `X-SPAM-FLAG` in the message is found by `X-Spam-Flag`."""
        raw = mail(headers=[("X-SPAM-FLAG", "YES")])
        ctx = run_policy(one('[{ header = "X-Spam-Flag", value = "^yes$" }]'), raw)
        assert ctx.params["Queue"] == "Junk"

    @pytest.mark.parametrize("name", ["body", "BODY"])
    def test_body_in_any_case(self, run_policy, name):
        """The Body pseudo-header is recognised in any case."""
        ctx = run_policy(one(f'[{{ header = "{name}", value = "jammed again" }}]'), mail())
        assert ctx.params["Queue"] == "Junk"

    def test_x_header_and_computed_names_in_any_case(self, run_policy):
        """`x-otobo-queue` reads the value an earlier filter set, `X-DESKGATE-ATTACHMENTCOUNT`
        the computed count."""
        pol = """
            [[filter]]
            name = "010"
            match = [{ header = "Subject", value = "files" }]
            set = { "X-Deskgate-Queue" = "Sales" }
            [[filter]]
            name = "020"
            match = [{ header = "x-otobo-queue", value = "^sales$" },
                     { header = "X-DESKGATE-ATTACHMENTCOUNT", value = "^1$" }]
            set = { "x-otrs-priority" = "5 very high" }
        """
        ctx = run_policy(pol, with_attachments(["a.pdf"]))
        assert ctx.params["Priority"] == "5 very high"


class TestEncodedWords:
    def test_subject_is_matched_decoded(self, run_policy):
        """An RFC 2047 Subject is matched as its decoded text, not as the encoded word."""
        raw = mail("=?utf-8?b?U3TDtnJ1bmc=?= im Netz")
        assert run_policy(one('[{ header = "Subject", value = "störung im netz" }]'),
                          raw).params["Queue"] == "Junk"
        assert "Queue" not in run_policy(one('[{ header = "Subject", value = "utf-8" }]'),
                                         raw).params

    def test_display_name_is_matched_decoded(self, run_policy):
        """A value condition on From sees the decoded display name."""
        raw = mail(frm="=?iso-8859-1?q?J=F6rg_M=FCller?= <joerg@customer.test>")
        ctx = run_policy(one('[{ header = "From", value = "jörg müller" }]'), raw)
        assert ctx.params["Queue"] == "Junk"

    def test_email_condition_is_not_fooled_by_an_encoded_display_name(self, run_policy):
        """An `email` condition tests the addresses of the header, not words of an encoded
        display name: `=?utf-8?q?boss=40example.org?= <x@evil.test>` has one address,
        x@evil.test, and `Doe, John` encoded is one name, not an address `Doe`."""
        boss = one('[{ header = "From", email = "boss@example\\\\.org" }]')
        raw = mail(frm="=?utf-8?q?boss=40example.org?= <mallory@evil.test>")
        assert "Queue" not in run_policy(boss, raw).params
        anything = one('[{ header = "From", email = "[^@]*" }]')
        raw = mail(frm="=?utf-8?q?Doe=2C_John?= <john@customer.test>")
        assert "Queue" not in run_policy(anything, raw).params

    def test_email_condition_on_an_encoded_display_name_still_finds_the_address(
            self, run_policy):
        """The real address next to an encoded display name is matched."""
        pol = one('[{ header = "From", email = "john@customer\\\\.test" }]')
        raw = mail(frm="=?utf-8?q?Doe=2C_John?= <john@customer.test>")
        assert run_policy(pol, raw).params["Queue"] == "Junk"


class TestRepeatedHeader:
    RAW = mail(headers=[("X-Tag", "alpha"), ("X-Tag", "beta")])

    def test_not_fails_when_any_occurrence_matches(self, run_policy):
        """`not` on a header present twice holds only when no occurrence matches."""
        assert "Queue" not in run_policy(
            one('[{ header = "X-Tag", value = "^beta$", not = true }]'), self.RAW).params
        assert run_policy(one('[{ header = "X-Tag", value = "^gamma$", not = true }]'),
                          self.RAW).params["Queue"] == "Junk"

    def test_capture_comes_from_the_occurrence_that_matched(self, run_policy):
        """[***] is taken from the occurrence that matched, not from the first one."""
        pol = one('[{ header = "X-Tag", value = "^b(.*)" }]', '{ "X-Deskgate-Title" = "[***]" }')
        assert run_policy(pol, self.RAW).params["Title"] == "eta"

    def test_set_replaces_every_occurrence(self, run_policy):
        """Setting a header present twice leaves one occurrence with the new value."""
        pol = one('[{ header = "Subject", value = "." }]', '{ "X-Tag" = "gamma" }')
        ctx = run_policy(pol, self.RAW)
        assert [v for k, v in ctx.parsed.headers if k.lower() == "x-tag"] == ["gamma"]


class TestSetSameKey:
    def test_later_filter_wins(self, run_policy):
        """Two matching filters set the same X-header: the later one (name order) wins,
        whatever the prefix each uses."""
        pol = """
            [[filter]]
            name = "020-later"
            match = [{ header = "Subject", value = "printer" }]
            set = { "X-OTRS-Queue" = "Sales" }
            [[filter]]
            name = "010-earlier"
            match = [{ header = "Subject", value = "printer" }]
            set = { "X-Deskgate-Queue" = "Junk" }
        """
        ctx = run_policy(pol, mail())
        assert ctx.params["Queue"] == "Sales"


class TestSetParsedFields:
    def test_set_from_with_encoded_name_is_one_mailbox(self, run_policy):
        """A From set with an encoded 'Doe, John' is one address to the fields and to a later
        filter's `email` condition."""
        pol = one('[{ header = "Subject", value = "printer" }]',
                  '{ "From" = "=?utf-8?q?Doe=2C_John?= <jd@customer.test>" }') + one(
            '[{ header = "From", email = "jd@customer\\\\.test" }]').replace('"010"', '"020"')
        ctx = run_policy(pol, mail())
        p = ctx.parsed
        assert p is not None
        assert p.from_addr == '"Doe, John" <jd@customer.test>'
        assert p.from_email == "jd@customer.test"
        assert p.header_all("From") == [p.from_addr]
        assert ctx.params["Queue"] == "Junk"

    def test_set_to_replaces_every_to_header(self, run_policy):
        """A message with two To headers keeps one, the set value, in the list and the field."""
        raw = mail(headers=[("To", "second@example.org")])
        ctx = run_policy(one('[{ header = "Subject", value = "printer" }]',
                             '{ "To" = "sales@example.org" }'), raw)
        p = ctx.parsed
        assert p is not None
        assert p.header_all("To") == ["sales@example.org"]
        assert p.to_addr == "sales@example.org"

    def test_set_body_is_seen_by_a_later_body_condition(self, run_policy):
        """Body set by a filter is the body later filters test; no Body header appears."""
        pol = one('[{ header = "Body", value = "jammed" }]', '{ "Body" = "redacted" }') + one(
            '[{ header = "Body", value = "^redacted$" }]').replace('"010"', '"020"')
        ctx = run_policy(pol, mail())
        p = ctx.parsed
        assert p is not None
        assert p.body == "redacted"
        assert p.header_all("Body") == []
        assert ctx.params["Queue"] == "Junk"

    def test_set_message_id_changes_the_field_too(self, run_policy):
        """A set Message-ID is the header and the field the article and duplicate
        detection read, as a set Subject or In-Reply-To is."""
        ctx = run_policy(one('[{ header = "Subject", value = "printer" }]',
                             '{ "Message-ID" = " <other@x.test> " }'), mail(mid="<own@x.test>"))
        p = ctx.parsed
        assert p is not None
        assert p.message_id == "<other@x.test>"
        assert p.header_all("Message-ID") == [" <other@x.test> "]
