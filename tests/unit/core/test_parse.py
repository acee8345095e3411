"""Parsing: charsets, encoded words, attachments, malformed MIME."""

from __future__ import annotations

import pytest

from gateway.inbound.parse import decode_header_value, parse_message


class TestHeaders:
    def test_rfc2047_words(self):
        """Encoded words in any charset are decoded and joined."""
        assert decode_header_value("=?utf-8?q?Dr=C3=BCcker?= =?iso-8859-1?q?_kaputt?=") \
            == "Drücker kaputt"
        assert decode_header_value("=?koi8-r?b?8NLJ18XU?=") == "Привет"

    def test_unknown_charset_does_not_fail(self):
        """An unknown charset falls back instead of raising."""
        assert "abc" in decode_header_value("=?x-nonsense?q?abc?=")

    def test_raw_utf8_header(self):
        """8-bit UTF-8 in a header (no encoded words) is read as UTF-8."""
        p = parse_message("Subject: Grüße\r\nFrom: a@b.test\r\n\r\nx\r\n".encode())
        assert p.subject == "Grüße"

    def test_raw_latin1_header(self):
        """8-bit Latin-1 in a header is read as Latin-1 when it is not UTF-8."""
        p = parse_message("Subject: Grüße\r\n\r\nx\r\n".encode("latin-1"))
        assert p.subject == "Grüße"


    def test_raw_8bit_next_to_encoded_words(self):
        """8-bit bytes in a header that also has encoded words are read as UTF-8 (else
        Latin-1), not stored as the text '\\udcc3'."""
        p = parse_message(b"Subject: =?utf-8?q?Re:?= Gr\xc3\xbc\xc3\x9fe\r\n"
                          b"From: =?utf-8?q?J=C3=BCrgen?= <j\xc3\xbcrgen@x.test>\r\n"
                          b"Reply-To: =?iso-8859-1?q?K=F6ln?= caf\xe9 <k@x.test>\r\n\r\nx\r\n")
        assert p.subject == "Re: Grüße"
        assert (p.from_addr, p.from_email) == ("Jürgen <jürgen@x.test>", "jürgen@x.test")
        assert p.reply_to == "Köln café <k@x.test>"


    def test_many_encoded_words_decode_in_linear_time(self):
        """A Subject of 100,000 encoded words (or unclosed ones) decodes in about the time
        of plain text of that size: the standard library's decode_header is quadratic in
        the number of words (seconds; a few MiB: minutes)."""
        import time

        def took(subject: bytes) -> float:
            raw = b"From: a@b.test\r\nSubject: " + subject + b"\r\n\r\nx\r\n"
            start = time.perf_counter()
            parse_message(raw)
            return time.perf_counter() - start

        n = 100_000
        budget = 20 * took(b"plain words " * n) + 3
        for subject in (b"=?utf-8?q?a?= " * n, b"=?utf-8?b?w6Q=?= x " * n,
                        b"=?u?q?" * n, b"=?utf-8?q?a?= \xc3\xa4 " * n):
            assert took(subject) < budget, subject[:20]

    def test_encoded_words_as_the_standard_library_reads_them(self):
        """The linear decoder splits, joins and decodes words as email.header does."""
        import email.header
        import random

        from gateway.inbound.parse import decode_words

        pieces = ["=?utf-8?q?a=C3?=", "=?UTF-8?Q?=A4_b?=", "=?iso-8859-1?b?5A==?=",
                  "=?utf-8?b?w6Q?=", "=?x?q?", "?=", " ", "  ", "\n", "\r\n ", "\t", "plain",
                  "=?", "=?koi8-r?B?8NLJ?=", "=?utf-8?b?!!?=", "=?utf-8?x?a?=",
                  "=?utf-8?q??=", "?", "="]
        rnd = random.Random(11)
        for _ in range(20000):
            value = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 10)))
            try:
                want = email.header.decode_header(value)
            except email.errors.HeaderParseError:
                want = None
            try:
                got = decode_words(value)
            except email.errors.HeaderParseError:
                got = None
            assert got == want, repr(value)


class TestBodies:
    def test_quoted_printable_latin1(self):
        """A QP body is decoded with its declared charset; CRLF becomes LF."""
        p = parse_message(b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                          b"Content-Transfer-Encoding: quoted-printable\r\n\r\nS=FC=DF\r\nx\r\n")
        assert p.body == "Süß\nx\n"

    @pytest.mark.parametrize("charset", [
        "base64", "hex", "zlib", "bz2", "rot13", "uu", "quopri", "idna", "punycode",
        "undefined", "unicode_escape", "raw_unicode_escape"])
    def test_charset_label_of_a_python_only_codec(self, charset):
        """A charset label that names one of Python's codecs that is no MIME charset
        (bytes-to-bytes, IDNA, Python escapes) is an unknown charset: the message is
        read as UTF-8. It raised, and the message went to the quarantine."""
        cs = charset.encode()
        p = parse_message(b"From: a@b.test\r\nSubject: =?" + cs + b"?q?caf=C3=A9_=5CN?=\r\n"
                          b"Content-Type: text/plain; charset=" + cs + b"\r\n"
                          b"Content-Transfer-Encoding: 8bit\r\n\r\n"
                          b"caf\xc3\xa9 \\N{x} \\u00e9\r\n")
        assert p.subject == "caf\u00e9 \\N"
        assert p.body == "caf\u00e9 \\N{x} \\u00e9\n"

    def test_wrong_declared_charset(self):
        """Bytes that do not fit the declared charset still decode (never raise)."""
        p = parse_message(b"Content-Type: text/plain; charset=us-ascii\r\n\r\n\xc3\xa4\xff\r\n")
        assert p.body.startswith("\u00e4") or "\ufffd" in p.body or "\xff" in p.body

    def test_html_only_gets_text_rendering(self):
        """An HTML-only mail keeps the HTML and gets a text body."""
        p = parse_message(b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                          b"<p>Hello <b>world</b></p><script>x()</script>\r\n")
        assert p.body_html is not None and "Hello world" in p.body and "x()" not in p.body

    def test_hostile_html_renders_in_linear_time(self):
        """An HTML-only body of unclosed '<', '<script' or '<style' renders in about the
        time of ordinary HTML of that size (each '<' used to scan to the end: minutes)."""
        import time

        size = 400_000
        ordinary = ("<p>Hello <b>world</b></p>\n" * (size // 27 + 1))[:size]
        hostile = ["<" * size, "<a " * (size // 3), "<script>" * (size // 8),
                   "<style" * (size // 6), "<br" * (size // 3),
                   "<!--" * (size // 4), "<title>" * (size // 7)]

        def render(html: str) -> float:
            raw = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
            start = time.perf_counter()
            parse_message(raw)
            return time.perf_counter() - start

        budget = 20 * render(ordinary) + 0.5
        for html in hostile:
            assert render(html) < budget, html[:20]

    def test_html_rendering_unchanged(self):
        """The linear rendering gives what the plain regular expressions give."""
        import html as htmlmod
        import random
        import re

        from gateway.inbound.parse import html_to_text

        def slow(html: str) -> str:
            text = re.sub(r"(?is)<!--.*?-->|<(script|style|title)\b.*?</\1>", "", html)
            text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</h[1-6]>|</li>", "\n", text)
            text = re.sub(r"<[^>]+>", "", text)
            text = htmlmod.unescape(text)
            text = re.sub(r"[ \t]+", " ", text)
            return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()

        pieces = ["<", ">", "<p>", "</p>", "<script>", "</script>", "<SCRIPT a=1>",
                  "</Script>", "<style>", "</style>", "<styles>", "<br/>", "<br", "x",
                  " ", "\n", "&amp;", "<b>", "</div>", "<a <b>", "\u0130", "<!--", "-->",
                  "<!-- a -->", "<title>", "</TITLE>", "--", "!"]
        rnd = random.Random(7)
        for _ in range(20000):
            html = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
            assert html_to_text(html) == slow(html), repr(html)

    def test_attachments_with_rfc2231_and_rfc2047_names(self):
        """Attachment names in RFC 2231 and (non-standard) RFC 2047 form are decoded."""
        raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               b"Content-Type: text/plain\r\n\r\nbody\r\n--B\r\n"
               b"Content-Type: application/pdf\r\n"
               b"Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--B\r\n"
               b"Content-Type: image/png; name=\"=?utf-8?q?Bild_=C3=BC.png?=\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n--B--\r\n")
        p = parse_message(raw)
        assert p.body.strip() == "body"
        assert [(a.filename, a.content_type, a.content) for a in p.attachments] == [
            ("Rechnung März.pdf", "application/pdf", b"%PDF"),
            ("Bild ü.png", "image/png", b"\x89PNG")]

    def test_broken_boundary_is_tolerated(self):
        """A multipart without its closing boundary parses with defects, not an exception."""
        raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               b"Content-Type: text/plain\r\n\r\nstill here\r\n")
        p = parse_message(raw)
        assert "still here" in p.body
        assert p.defects

    def test_missing_boundary_parameter(self):
        """multipart without a boundary is treated as text with a defect."""
        p = parse_message(b"Content-Type: multipart/mixed\r\n\r\nplain words\r\n")
        assert p.defects

    def test_forwarded_message_is_an_attachment(self):
        """message/rfc822 parts become .eml attachments."""
        raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               b"Content-Type: text/plain\r\n\r\nsee below\r\n--B\r\n"
               b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--B--\r\n")
        p = parse_message(raw)
        assert p.attachments[0].filename.endswith(".eml")
        assert b"inner body" in p.attachments[0].content

    def test_addresses(self):
        """From and the first address are extracted, lowercased."""
        p = parse_message(b'From: "Doe, Jane" <Jane.Doe@Example.ORG>\r\nTo: a@x, b@y\r\n\r\n')
        assert p.from_email == "jane.doe@example.org"
        assert p.to_addr == "a@x, b@y"


class TestFirstAddress:
    """The fast path for plain `Name <a@b>` / `a@b` gives what getaddresses gives."""

    @staticmethod
    def slow(value: str) -> str:
        import email.utils

        for _n, a in email.utils.getaddresses([value]):
            if "@" in a:
                return a.strip().lower()
        return ""

    def test_agrees_with_getaddresses(self) -> None:
        import random

        from gateway.inbound.parse import first_address

        spaces = [" ", "\t", "\x0b", "\x85", "\xa0", "\u3000", "\u2028", ""]
        words = ["Foo", "B\u00e4r", "J.", "o'neil", "x-y", "=?utf-8?q?x?=", '"Q, R"', "(c)"]
        locals_ = ["a", "a.b", "x+y", "\u00fc", "a-b_c"]
        domains = ["example.org", "b", "\u00fc.de", "[1.2.3.4]", "d."]
        rnd = random.Random(1)
        for _ in range(20000):
            addr = rnd.choice(locals_) + "@" + rnd.choice(domains)
            name = rnd.choice(spaces).join(rnd.choice(words) for _ in range(rnd.randint(0, 3)))
            value = rnd.choice([addr, f"{name} <{addr}>", f"{name}<{addr}>", f"{addr}, x@y"])
            value = rnd.choice(spaces) + value + rnd.choice(spaces)
            assert first_address(value) == self.slow(value), repr(value)

    def test_hostile_header_does_not_backtrack(self) -> None:
        """Long runs of words without an address end quickly (possessive loops)."""
        from gateway.inbound.parse import first_address

        assert first_address("a " * 50000 + "b") == self.slow("a " * 50000 + "b")
        assert first_address("x" * 200000) == ""


class TestEncodedAddresses:
    """Addresses are read from an address header as it came, before RFC 2047 display
    names are decoded; the fields show the names decoded."""

    @staticmethod
    def parse(**headers: str) -> object:
        head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        return parse_message(head.encode() + b"Subject: x\r\n\r\nbody\r\n")

    def test_encoded_name_that_reads_as_an_address(self):
        """`=?utf-8?q?boss=40example.org?= <mallory@evil.test>` is from mallory, with the
        display name boss@example.org: the field keeps it quoted, so it reads the same
        when the stored From is parsed again (follow-up participants, auto-responses)."""
        import email.utils

        from gateway.inbound.parse import addresses

        p = self.parse(From="=?utf-8?q?boss=40example.org?= <mallory@evil.test>",
                       Reply_To="=?utf-8?q?boss=40example.org?= <mallory@evil.test>")
        assert p.from_email == "mallory@evil.test"
        assert p.from_addr == '"boss@example.org" <mallory@evil.test>'
        assert addresses(p.from_addr) == addresses(p.reply_to) == ["mallory@evil.test"]
        assert email.utils.parseaddr(p.from_addr) == ("boss@example.org", "mallory@evil.test")

    def test_encoded_name_with_a_comma(self):
        """`=?utf-8?q?Doe=2C_John?= <jd@x.test>` is one mailbox, not `Doe` and John's."""
        import email.utils

        from gateway.inbound.parse import addresses

        p = self.parse(From="=?utf-8?q?Doe=2C_John?= <jd@x.test>",
                       To="=?utf-8?q?Doe=2C_John?= <jd@x.test>, =?utf-8?q?Ann?= <a@x.test>",
                       Cc="=?utf-8?q?Smith=2C_Ann?= <as@x.test>")
        assert (p.from_email, p.from_addr) == ("jd@x.test", '"Doe, John" <jd@x.test>')
        assert p.to_addr == '"Doe, John" <jd@x.test>, Ann <a@x.test>'
        assert p.cc_addr == '"Smith, Ann" <as@x.test>'
        assert email.utils.getaddresses([p.to_addr, p.cc_addr]) == [
            ("Doe, John", "jd@x.test"), ("Ann", "a@x.test"), ("Smith, Ann", "as@x.test")]
        assert addresses(p.to_addr) == ["jd@x.test", "a@x.test"]

    def test_encoded_name_with_a_quote_and_a_backslash(self):
        """A decoded name with `"` or `\\` in it is quoted with those escaped."""
        import email.utils

        p = self.parse(From="=?utf-8?q?Jo_=22JJ=22_a=5Cb=2C?= <jj@x.test>")
        assert email.utils.parseaddr(p.from_addr) == ('Jo "JJ" a\\b,', "jj@x.test")
        assert p.from_email == "jj@x.test"

    def test_plain_ascii_from_is_as_written(self):
        """A From without encoded words is unchanged, its address lowercased."""
        p = self.parse(From="Carla Customer <Carla@Customer.TEST>", To="a@x, B <b@y>")
        assert (p.from_addr, p.from_email) == ("Carla Customer <Carla@Customer.TEST>",
                                               "carla@customer.test")
        assert p.to_addr == "a@x, B <b@y>"

    def test_raw_utf8_display_name(self):
        """A display name in raw 8-bit UTF-8 is read as UTF-8, the address as written."""
        p = parse_message("From: Jörg Müller <joerg@customer.test>\r\n"
                          "To: Åsa <åsa@bücher.test>\r\n\r\nx\r\n".encode())
        assert (p.from_addr, p.from_email) == ("Jörg Müller <joerg@customer.test>",
                                               "joerg@customer.test")
        assert p.to_addr == "Åsa <åsa@bücher.test>"

    def test_encoded_name_without_specials_is_not_quoted(self):
        """An encoded name that needs no quotes reads as before: `Jörg Müller <j@x>`,
        also next to raw 8-bit bytes."""
        p = parse_message(b"From: =?iso-8859-1?q?J=F6rg_M=FCller?= <j@x.test>\r\n"
                          b"To: =?utf-8?q?J=C3=BCrgen?= <j\xc3\xbcrgen@x.test>\r\n\r\nx\r\n")
        assert (p.from_addr, p.from_email) == ("Jörg Müller <j@x.test>", "j@x.test")
        assert p.to_addr == "Jürgen <jürgen@x.test>"

    def test_encoded_word_in_the_address_stays_as_written(self):
        """RFC 2047 forbids encoded words in an addr-spec: such an address is not decoded,
        and an encoded word that only decodes to an address is no address."""
        p = self.parse(From="=?utf-8?q?boss?=@example.org",
                       To="=?utf-8?q?boss=40example.org?=")
        assert (p.from_addr, p.from_email) == ("=?utf-8?q?boss?=@example.org",
                                               "=?utf-8?q?boss?=@example.org")
        assert p.to_addr == "=?utf-8?q?boss=40example.org?="
        from gateway.inbound.parse import addresses

        assert addresses(p.to_addr) == []

    def test_encoded_comment_and_header_list(self):
        """A comment in encoded words names the mailbox; Parsed.headers keeps every
        header decoded as written (what the filters' value conditions see)."""
        p = self.parse(From="jd@x.test (=?utf-8?q?Doe=2C_John?=)")
        assert (p.from_addr, p.from_email) == ('"Doe, John" <jd@x.test>', "jd@x.test")
        raw = "jd@x.test (=?utf-8?q?Doe=2C_John?=)"
        assert ("From", decode_header_value(raw)) in p.headers


class TestHeaderBlock:
    """Header blocks read without the feed parser give what the feed parser gives."""

    def test_agrees_with_the_feed_parser(self) -> None:
        """Random header blocks (continuations, CRLF/LF/CR, odd names, 8-bit) parse to the
        same headers, defects and unix-from as email's compat32 parser."""
        import random
        from email import message_from_bytes
        from email.policy import compat32

        from gateway.inbound.parse import _message

        pieces = [b"A", b"b", b":", b" ", b"\t", b"\r\n", b"\n", b"\r", b"From ", b"Subject",
                  b"To", b"Content-Type", b": text/plain; charset=utf-8", b": message/rfc822",
                  b": multipart/mixed", b"\xff", b"=?utf-8?q?x?=", b"x@y", b"\x0b", b"\x1c"]
        rnd = random.Random(7)
        for _ in range(5000):
            raw = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 25))) \
                + rnd.choice([b"\r\n\r\n", b"\n\n", b"\r\n\n"]) + b"body\r\nline\r\n"
            fast, slow = _message(raw), message_from_bytes(raw, policy=compat32)
            assert fast.items() == slow.items(), raw
            assert fast.get_unixfrom() == slow.get_unixfrom(), raw
            assert [type(d) for d in fast.defects] == [type(d) for d in slow.defects], raw

    def test_space_before_the_colon(self) -> None:
        """'Subject : x' (RFC 5322 obsolete syntax, still sent by old mailers) is a header:
        the parser took it for the start of the body, which lost it and every header
        after it (Message-ID, In-Reply-To, Content-Type) into the body."""
        p = parse_message(b"From: a@b.test\r\nSubject : Hello\r\nIn-Reply-To\t: <r@x>\r\n"
                          b"Message-ID: <m@x>\r\nMIME-Version: 1.0\r\n"
                          b"Content-Type : multipart/mixed; boundary=B\r\n\r\n"
                          b"--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
                          b"--B\r\nContent-Type: application/pdf\r\n\r\npdf\r\n--B--\r\n")
        assert (p.subject, p.in_reply_to, p.message_id) == ("Hello", "<r@x>", "<m@x>")
        assert [k for k, _v in p.headers] == ["From", "Subject", "In-Reply-To", "Message-ID",
                                              "MIME-Version", "Content-Type"]
        assert p.body == "body" and [a.content for a in p.attachments] == [b"pdf"]
        plain = parse_message(b"Subject : Hello\nTo: c@d.test\n\nbody : text\n")
        assert (plain.subject, plain.to_addr, plain.body) == ("Hello", "c@d.test", "body : text\n")

    def test_folded_header_keeps_its_line_breaks(self) -> None:
        """A folded Subject is unfolded in the parsed fields, raw in the Message."""
        p = parse_message(b"Subject: a long\r\n\tsubject\r\nTo: x@y\r\n\r\nbody\r\n")
        assert p.subject == "a long subject"
        assert p.msg["Subject"] == "a long\r\n\tsubject"

    @pytest.mark.parametrize("folded", [b"Re: your\r\n order", b"Re: your\r\n\torder",
                                        b"Re: your\r\n  \t order", b"Re: your\n order",
                                        b"=?utf-8?q?Re=3A_your?=\r\n order"])
    def test_a_fold_is_one_space(self, folded: bytes) -> None:
        """A fold (line break and the white space that starts the next line) reads as
        one space, as mail programs show it and OTOBO's parser unfolds it: the Subject
        and the ticket title were 'Re: your  order' (two spaces) or held a tab."""
        p = parse_message(b"Subject: " + folded + b"\r\nTo: a@b.test\r\n\r\nbody\r\n")
        assert p.subject == "Re: your order"
        assert decode_header_value(folded.decode()) == "Re: your order"

    def test_nul_in_charset_does_not_raise(self) -> None:
        """A charset name with a NUL byte falls back to UTF-8 instead of raising."""
        p = parse_message(b"Content-Type: text/plain; charset=\"ab\x00c\"\r\n\r\nhi\r\n")
        assert p.body == "hi\n"


class TestEightBitPartHeaders:
    """Raw UTF-8 in MIME part headers (common without SMTPUTF8): compat32 hands such
    a header out as an email.header.Header, not a str."""

    @staticmethod
    def mixed(part_headers: bytes) -> bytes:
        return (b"From: a@b.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                b"Content-Type: text/plain\r\n\r\nbody\r\n--B\r\n" + part_headers
                + b"\r\ndata\r\n--B--\r\n")

    def test_8bit_disposition_filename(self):
        """A raw UTF-8 filename in Content-Disposition is read as UTF-8 (it used to raise,
        sending an ordinary message to the quarantine)."""
        p = parse_message(self.mixed(
            b"Content-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename=\"Rechnung M\xc3\xa4rz.pdf\"\r\n"))
        assert p.body.strip() == "body"
        assert [(a.filename, a.disposition, a.content) for a in p.attachments] == [
            ("Rechnung März.pdf", "attachment", b"data")]

    def test_8bit_content_type_name(self):
        """A raw UTF-8 name= in Content-Type keeps its letters (not U+FFFD)."""
        p = parse_message(self.mixed(b"Content-Type: image/png; name=\"Bild \xc3\xbc.png\"\r\n"))
        assert [a.filename for a in p.attachments] == ["Bild ü.png"]

    def test_latin1_filename(self):
        """A raw Latin-1 filename (not UTF-8) is read as Latin-1."""
        p = parse_message(self.mixed(
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=caf\xe9.txt\r\n"))
        assert [a.filename for a in p.attachments] == ["café.txt"]

    def test_8bit_content_id_and_disposition(self):
        """8-bit bytes in Content-ID or in the disposition word do not raise."""
        p = parse_message(self.mixed(b"Content-Type: image/png\r\n"
                                     b"Content-ID: <bild-\xc3\xbc@x>\r\n"
                                     b"Content-Disposition: inl\xe9ne\r\n"))
        [a] = p.attachments
        assert a.content_id == "bild-ü@x" and a.content == b"data"


class TestTransferEncodingSpelling:
    """A Content-Transfer-Encoding with blanks around it, in quotes or in capitals is
    still the encoding it names (RFC 2045's value is a token; mailers add the rest):
    the part is decoded, not shown as base64 or quoted-printable text."""

    @pytest.mark.parametrize("cte", ["base64 ", " base64", '"base64"', "BASE64\t", "'base64'"])
    def test_base64_spellings(self, cte):
        raw = (f"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n"
               f"Content-Transfer-Encoding: {cte}\r\n\r\n"
               "R3LDvMOfZSBhdXMgS8O2bG4=\r\n").encode()
        assert parse_message(raw).body.strip() == "Grüße aus Köln"

    @pytest.mark.parametrize("cte", ['"quoted-printable"', "quoted-printable ",
                                     "Quoted-Printable"])
    def test_quoted_printable_spellings(self, cte):
        raw = (f"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n"
               f"Content-Transfer-Encoding: {cte}\r\n\r\n"
               "Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n").encode()
        assert parse_message(raw).body.strip() == "Grüße aus Köln"

    def test_attachment_with_quoted_base64(self):
        raw = (b"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
               b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
               b"--b\r\nContent-Type: application/pdf; name=a.pdf\r\n"
               b"Content-Disposition: attachment; filename=a.pdf\r\n"
               b"Content-Transfer-Encoding: \"base64\" \r\n\r\n"
               b"JVBERi0xLjQK\r\n--b--\r\n")
        p = parse_message(raw)
        assert [a.content for a in p.attachments] == [b"%PDF-1.4\n"]
