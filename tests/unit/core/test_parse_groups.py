"""Address headers with group syntax (RFC 5322 `name: a@x, b@x;`): the article's
to_addr/cc_addr keep the group whether or not the header holds encoded words."""

from __future__ import annotations

import email.utils

import pytest

from gateway.inbound.parse import address_header_text, addresses, parse_message, set_header


def parsed(to: str, cc: str = "") -> object:
    head = f"From: carla@customer.test\r\nTo: {to}\r\n"
    if cc:
        head += f"Cc: {cc}\r\n"
    return parse_message(head.encode() + b"Subject: x\r\n\r\nbody\r\n")


class TestGroups:
    def test_encoded_group_name_keeps_the_group(self):
        """`=?utf-8?q?Team?=: a@x.test, b@x.test;` reads as the plain `Team: ...;` does."""
        plain = parsed("Team: a@x.test, b@x.test;", cc="Team: a@x.test, b@x.test;")
        encoded = parsed("=?utf-8?q?Team?=: a@x.test, b@x.test;",
                         cc="=?utf-8?q?Team?=: a@x.test, b@x.test;")
        assert plain.to_addr == plain.cc_addr == "Team: a@x.test, b@x.test;"
        assert (encoded.to_addr, encoded.cc_addr) == (plain.to_addr, plain.cc_addr)

    def test_encoded_member_names_inside_a_group(self):
        """A group of mailboxes with encoded names keeps its name and its members, names
        decoded (and quoted where they hold a special character)."""
        p = parsed("=?utf-8?q?T=C3=A9am?=: =?utf-8?q?Doe=2C_John?= <jd@x.test>, "
                   "b@x.test;")
        assert p.to_addr == 'Téam: "Doe, John" <jd@x.test>, b@x.test;'
        assert addresses(p.to_addr) == ["jd@x.test", "b@x.test"]

    @pytest.mark.parametrize("raw", ["undisclosed-recipients:;",
                                     "=?utf-8?q?undisclosed-recipients?=:;"])
    def test_empty_group(self, raw):
        """An empty group (`undisclosed-recipients:;`) is kept as written, with or without
        encoded words, and names no address."""
        p = parsed(raw)
        assert p.to_addr == "undisclosed-recipients:;"
        assert addresses(p.to_addr) == []

    def test_group_between_mailboxes(self):
        """Mailboxes before and after a group stay outside it, in order."""
        raw = ("=?utf-8?q?Ann?= <a@x.test>, =?utf-8?q?Team?=: b@x.test, "
               "=?utf-8?q?Bea?= <c@x.test>;, d@x.test")
        text, found = address_header_text(raw)
        assert text == "Ann <a@x.test>, Team: b@x.test, Bea <c@x.test>;, d@x.test"
        assert found == ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
        assert addresses(text) == found

    def test_group_name_with_a_special_is_quoted(self):
        """A decoded group name holding a special character is quoted, so the stored text
        reads as the same group again."""
        text, found = address_header_text("=?utf-8?q?Sales=2C_EU?=: a@x.test, b@x.test;")
        assert text == '"Sales, EU": a@x.test, b@x.test;'
        assert email.utils.getaddresses([text]) == [("", "a@x.test"), ("", "b@x.test")]
        assert found == ["a@x.test", "b@x.test"]

    def test_colon_inside_quotes_comments_and_brackets_is_no_group(self):
        """A colon in a quoted name, a comment or an angle address starts no group."""
        raw = ('"a: b" <a@x.test>, =?utf-8?q?C?= <c@x.test> (note: x), '
               "=?utf-8?q?R?= <@relay.test:r@x.test>")
        text, found = address_header_text(raw)
        assert text == '"a: b" <a@x.test>, C <c@x.test>, R <r@x.test>'
        assert found == ["a@x.test", "c@x.test", "r@x.test"]

    def test_missing_semicolon_closes_the_group_at_the_end(self):
        """A group without its `;` ends with the header."""
        text, found = address_header_text("=?utf-8?q?Team?=: a@x.test, b@x.test")
        assert text == "Team: a@x.test, b@x.test;"
        assert found == ["a@x.test", "b@x.test"]

    def test_filter_set_of_an_encoded_group(self):
        """A filter's set of To with an encoded group name keeps the group as well."""
        p = parsed("a@x.test")
        stored = set_header(p, "To", "=?utf-8?q?Team?=: a@x.test, b@x.test;")
        assert stored == p.to_addr == "Team: a@x.test, b@x.test;"

    def test_hostile_header_is_linear(self):
        """Thousands of colons, semicolons and quotes are read in linear time."""
        import time

        raw = "=?utf-8?q?x?= " + ':"(<;' * 20000
        start = time.perf_counter()
        address_header_text(raw)
        assert time.perf_counter() - start < 2.0
