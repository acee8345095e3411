"""A corpus of broken and unusual but real-world messages through the whole inbound path
(every prepare and commit stage, on gateway.testing's fakes): each one becomes a ticket
with one article, nothing raises, and the article is what a reader expects: body text,
subject and sender decoded, attachments kept with sensible file names."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.inbound import pipeline
from gateway.inbound.parse import html_to_text, parse_message
from gateway.inbound.stages import build_stages
from gateway.store.tables import Article, Attachment, Quarantine, RawMessage, Ticket
from gateway.testing import FakeStore, context, runtime

HEAD = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
        b"Subject: corpus\r\nMessage-ID: <corpus@customer.test>\r\nMIME-Version: 1.0\r\n")


def typed(ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return HEAD + b"Content-Type: " + ctype + b"\r\n" + extra + b"\r\n" + body


def text(charset: bytes, body: bytes, cte: bytes = b"8bit") -> bytes:
    return typed(b"text/plain; charset=" + charset, body,
                 b"Content-Transfer-Encoding: " + cte + b"\r\n")


def mixed(*parts: bytes, boundary: bytes = b"B", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p for p in parts)
    if close:
        body += b"--" + boundary + b"--\r\n"
    return typed(b'multipart/mixed; boundary="' + boundary + b'"', body)


PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"


def attached(headers: bytes, b64: bytes = b"AAECAw==") -> bytes:
    """A text part and one base64 attachment with these part headers."""
    return mixed(PLAIN, headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"\r\n")


def nested(depth: int) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\ndeep down\r\n"
    for i in range(depth):
        inner = (b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                 + inner + b"--b%d--\r\n" % i)
    return HEAD + inner


def forwarded(depth: int) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for i in range(depth):
        inner = b"Content-Type: message/rfc822\r\n\r\nSubject: level %d\r\n" % i + inner
    return mixed(PLAIN, inner)


@dataclass
class Case:
    raw: bytes
    body: str | None = None              # the article body (stripped), when checked
    subject: str = "corpus"
    from_addr: str = "Carla <carla@customer.test>"
    # (file name, content type, content) of every attachment, in order, when checked
    attachments: list[tuple[str, str, bytes]] | None = field(default_factory=list)


CORPUS: dict[str, Case] = {
    "plain": Case(text(b"utf-8", b"Hello\r\n"), body="Hello"),
    "missing-closing-boundary": Case(mixed(
        PLAIN, b"Content-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n", close=False),
        body="See attached.", attachments=[("a.pdf", "application/pdf", b"%PDF")]),
    "boundary-not-declared": Case(
        typed(b"multipart/mixed", b"--XyZ\r\n" + PLAIN + b"--XyZ\r\n"
              b"Content-Type: application/pdf; name=a.pdf\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--XyZ--\r\n"),
        body="See attached.", attachments=[("a.pdf", "application/pdf", b"%PDF")]),
    "wrong-boundary": Case(
        typed(b'multipart/mixed; boundary="declared"', b"This is MIME.\r\n\r\n--used\r\n"
              + PLAIN + b"--used--\r\n"),
        body="See attached.", attachments=[]),
    "multipart-without-any-delimiter": Case(
        typed(b'multipart/mixed; boundary="B"', b"Just words, no parts.\r\n"),
        body="Just words, no parts.", attachments=[]),
    "forwarded-message": Case(mixed(
        PLAIN, b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n"),
        body="See attached.", attachments=None),
    "digest": Case(typed(b"multipart/digest; boundary=D",
                         b"--D\r\n\r\nSubject: one\r\n\r\nfirst\r\n--D\r\n\r\nSubject: two\r\n\r\n"
                         b"second\r\n--D--\r\n"),
                   body="", attachments=None),
    "unknown-8bit-utf8-bytes": Case(text(b'"unknown-8bit"', "Grüße €\r\n".encode()),
                                    body="Grüße €"),
    "unknown-8bit-latin1-bytes": Case(text(b'"unknown-8bit"', "Grüße\r\n".encode("latin-1")),
                                      body="Grüße"),
    "x-user-defined-utf8-bytes": Case(text(b'"x-user-defined"', "Grüße\r\n".encode()),
                                      body="Grüße"),
    "utf8-without-dash": Case(text(b"utf8", "Grüße\r\n".encode()), body="Grüße"),
    # Outlook's Windows-1252 labelled ISO-8859-1: 0x80-0x9F are its quotes and euro sign
    # (never the C1 controls of ISO-8859-1), as browsers and Thunderbird read them
    "windows-1252-labelled-latin1": Case(text(b"iso-8859-1", b"don\x92t pay \x80 5\r\n"),
                                         body="don\u2019t pay \u20ac 5"),
    "windows-1252-labelled-ascii": Case(text(b"us-ascii", b"\x93quoted\x94\r\n"),
                                        body="\u201cquoted\u201d"),
    "windows-1252-undeclared-html": Case(typed(
        b"text/html", b'<meta charset="windows-1252"><p>K\xf6ln \x80</p>\r\n'),
        body="K\xf6ln \u20ac"),
    "latin1-bytes-labelled-utf8": Case(text(b"utf-8", "Grüße\r\n".encode("latin-1")),
                                       body="Grüße"),
    "base64-with-garbage-and-spaces": Case(
        text(b"utf-8", b"SGVs bG8g\r\n d29y*bGQ=\r\n", cte=b"base64"), body="Hello world"),
    "base64-missing-padding": Case(text(b"utf-8", b"SGVsbG8gd29ybGQ\r\n", cte=b"base64"),
                                   body="Hello world"),
    "quoted-printable-invalid-escapes": Case(
        text(b"utf-8", b"a=ZZb =3D=C3=A4 soft=\r\nbreak=\r\n", cte=b"quoted-printable"),
        body="a=ZZb =ä softbreak"),
    "rfc2231-continuations": Case(attached(
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment;\r\n"
        b" filename*0*=utf-8''Rech; filename*1*=nung%20M%C3%A4; filename*2=rz.pdf\r\n"),
        body="See attached.", attachments=[("Rechnung März.pdf", "application/pdf",
                                            b"\x00\x01\x02\x03")]),
    "rfc2231-language": Case(attached(
        b"Content-Type: text/csv\r\n"
        b"Content-Disposition: attachment; filename*=iso-8859-1'de'K%F6ln.csv\r\n"),
        body="See attached.", attachments=[("Köln.csv", "text/csv", b"\x00\x01\x02\x03")]),
    "rfc2231-without-charset": Case(attached(
        b"Content-Type: text/csv\r\n"
        b"Content-Disposition: attachment; filename*=''K%C3%B6ln%20%E2%82%AC.csv\r\n"),
        body="See attached.", attachments=[("Köln €.csv", "text/csv", b"\x00\x01\x02\x03")]),
    "encoded-word-file-name": Case(attached(
        b"Content-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="=?UTF-8?B?w6RwZmVs?= '
        b'=?UTF-8?B?LnBkZg==?="\r\n'),
        body="See attached.", attachments=[("äpfel.pdf", "application/pdf",
                                            b"\x00\x01\x02\x03")]),
    # the name is stored as sent (evidence); hand-offs give helpdesks its safe form
    "file-name-with-directories": Case(attached(
        b'Content-Type: application/octet-stream\r\n'
        b'Content-Disposition: attachment; filename="../../etc/passwd"\r\n'),
        body="See attached.", attachments=[("../../etc/passwd", "application/octet-stream",
                                            b"\x00\x01\x02\x03")]),
    "file-name-with-nul": Case(attached(
        b'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="a\x00b.txt"\r\n'),
        body="See attached.", attachments=[("a\ufffdb.txt", "text/plain", b"\x00\x01\x02\x03")]),
    "pdf-without-file-name": Case(attached(
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment\r\n", b"JVBERg=="),
        body="See attached.", attachments=[("file-1.pdf", "application/pdf", b"%PDF")]),
    "inline-image-without-file-name": Case(attached(
        b"Content-Type: image/png\r\nContent-Disposition: inline\r\n", b"iVBORw=="),
        body="See attached.", attachments=[("file-1.png", "image/png", b"\x89PNG")]),
    "tnef-winmail-dat": Case(attached(
        b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b'Content-Disposition: attachment; filename="winmail.dat"\r\n', b"eJ8+IgAA"),
        body="See attached.",
        attachments=[("winmail.dat", "application/ms-tnef", b"\x78\x9f\x3e\x22\x00\x00")]),
    # uuencode inside text stays text, as in OTOBO (MIME::Parser without extract_uuencode)
    "uuencoded-in-text": Case(text(b"us-ascii", b"The file:\r\n\r\nbegin 644 t.txt\r\n"
                                   b"+:&5L;&\\@=V]R;&0*\r\n`\r\nend\r\n", cte=b"7bit"),
                              body="The file:\n\nbegin 644 t.txt\n+:&5L;&\\@=V]R;&0*\n`\nend"),
    "uuencoded-part": Case(typed(
        b"application/octet-stream; name=t.txt",
        b"begin 644 t.txt\r\n+:&5L;&\\@=V]R;&0*\r\n`\r\nend\r\n",
        b"Content-Transfer-Encoding: x-uuencode\r\n"),
        body="", attachments=[("t.txt", "application/octet-stream", b"hello world")]),
    "100k-header": Case(HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\nbody\r\n", body="body"),
    "10000-header-lines": Case(
        HEAD + b"".join(b"X-H: %d\r\n" % i for i in range(10_000)) + b"\r\nbody\r\n",
        body="body"),
    # a line that is no header ends the header, as Postfix and Python's parser read it:
    # it and what follows are the body, nothing is dropped
    "header-line-without-colon": Case(
        HEAD + b"This line has no colon\r\nX-After: 1\r\n\r\nbody\r\n",
        body="This line has no colon\nX-After: 1\n\nbody"),
    "bare-lf": Case(HEAD.replace(b"\r\n", b"\n") + b"\nline one\nline two\n",
                    body="line one\nline two"),
    "bare-cr-everywhere": Case(
        b"From: Carla <carla@customer.test>\rSubject: corpus\r\rline one\rline two\r",
        body="line one\nline two"),
    "bare-cr-in-body": Case(HEAD + b"\r\nline one\rline two\rline three\r\n",
                            body="line one\nline two\nline three"),
    "8bit-subject-and-from": Case(
        "From: Jürgen Müller <jm@customer.test>\r\nSubject: Grüße \u2013 bitte\r\n\r\nx\r\n"
        .encode(), body="x", subject="Grüße \u2013 bitte",
        from_addr="Jürgen Müller <jm@customer.test>"),
    # the store keeps no NUL in text columns (PostgreSQL refuses them): U+FFFD stands for it
    "nul-in-body": Case(text(b"utf-8", b"before\x00after\r\n"), body="before\ufffdafter"),
    "base64-labelled-8bit": Case(text(b"utf-8", b"SGVsbG8=\r\n"), body="SGVsbG8="),
    "8bit-labelled-base64": Case(text(b"utf-8", "hello wörld\r\n".encode(), cte=b"base64"),
                                 body="hello wörld"),
    "headers-only": Case(HEAD, body=""),
    "no-headers": Case(b"just a line of text\r\n", body="just a line of text", subject="",
                       from_addr=""),
    "html-only": Case(typed(b"text/html; charset=utf-8", b"<p>Hello <b>you</b></p>\r\n"),
                      body="Hello you"),
    "html-only-crlf-lines": Case(typed(b"text/html; charset=utf-8",
                                       b"<p>line one</p>\r\n<p>line\r\ntwo</p>\r\n"),
                                 body="line one\n\nline\ntwo"),
    "alternative-with-only-html": Case(typed(
        b"multipart/alternative; boundary=A",
        b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>only html</p>\r\n--A--\r\n"),
        body="only html"),
    "alternative-with-empty-text-part": Case(typed(
        b"multipart/alternative; boundary=A",
        b"--A\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\r\n"
        b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>the real text</p>\r\n--A--\r\n"),
        body="the real text"),
    "message-partial-second-fragment": Case(typed(
        b'message/partial; id="frag@customer.test"; number=2; total=2',
        b"continued: the second half\r\nof the message\r\n"),
        body="", attachments=[("file-1.bin", "message/partial",
                               b"continued: the second half\r\nof the message\r\n")]),
    "1000-parts": Case(mixed(PLAIN, *(b"Content-Type: text/csv; name=f%d.csv\r\n\r\nx%d\r\n"
                                      % (i, i) for i in range(1000))),
                       body="See attached.", attachments=[
                           (f"f{i}.csv", "text/csv", b"x%d" % i) for i in range(1000)]),
    "100-nested-multiparts": Case(nested(100), body="deep down"),
    "1000-nested-multiparts": Case(nested(1000), body=None, attachments=None),
    "300-nested-forwards": Case(forwarded(300), body="See attached.", attachments=None),
}


@pytest.fixture(scope="module")
def stages():
    return build_stages()


def deliver(raw: bytes, stages) -> FakeStore:
    """raw through every prepare and commit stage, as the pipeline runs them."""
    store, rt = FakeStore(), runtime()
    ctx = context(raw, parsed=False)
    pipeline.prepare(ctx, rt, stages.prepare)
    with store.transaction() as (conn, later):
        ctx.deferred = later
        pipeline.commit(ctx, rt, conn, stages.commit)
    return store


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_message_becomes_a_readable_article(name, stages):
    case = CORPUS[name]
    store = deliver(case.raw, stages)
    try:
        assert store.count(Ticket) == 1
        assert store.count(Quarantine) == 0
        (article,) = store.rows(Article)
        (raw,) = store.rows(RawMessage)
        assert bytes(raw.data) == case.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert article.subject == case.subject
        assert article.from_addr == case.from_addr
        if case.body is not None:
            assert article.body.strip() == case.body
        if case.attachments is not None:
            got = [(a.filename, a.content_type, bytes(a.content))
                   for a in store.rows(Attachment)]
            assert got == case.attachments
    finally:
        store.close()


class TestDetails:
    def test_deep_nesting_keeps_the_text(self):
        """Nested deeper than the parser recurses: the body is the message's text as sent,
        with a defect recorded, instead of an exception (the message went to the
        quarantine)."""
        p = parse_message(nested(1000))
        assert "deep down" in p.body
        assert "NestingTooDeep" in p.defects

    def test_deep_forwards_keep_the_text(self):
        """Forwards nested 300 deep: the outer text is the body, the rest is kept."""
        p = parse_message(forwarded(300))
        assert p.body.strip() == "See attached."
        assert b"innermost" in b"".join(a.content for a in p.attachments)

    def test_multiparts_without_boundary_in_each_other_are_linear(self):
        """Thousands of multiparts without a boundary parameter in each other: splitting
        each at the boundary its body uses stops once the text re-read reaches twice the
        body; the rest is text. Each split re-read the rest of the message, so 4,000 of
        them (160 KB) took a minute."""
        import time

        def chain(depth: int) -> bytes:
            return typed(b"multipart/mixed", b"".join(
                b"--b%d\r\nContent-Type: multipart/mixed\r\n\r\n" % i for i in range(depth))
                + b"--z\r\nContent-Type: text/plain\r\n\r\nthe end\r\n")

        def took(raw: bytes) -> float:
            start = time.perf_counter()
            p = parse_message(raw)
            assert "the end" in p.body
            return time.perf_counter() - start

        plain = text(b"utf-8", b"x" * len(chain(4000)))
        start = time.perf_counter()
        parse_message(plain)
        budget = 50 * (time.perf_counter() - start) + 0.5
        assert took(chain(4000)) < budget

    def test_long_delimiter_like_lines_are_linear(self):
        """A multipart without a usable boundary whose body has a '--' line of a megabyte
        of spaces: looking for its delimiter takes about the time of reading it (it took
        seventy times that, a second per megabyte)."""
        import time

        def took(body: bytes) -> float:
            start = time.perf_counter()
            parse_message(typed(b"multipart/mixed", body))
            return time.perf_counter() - start

        size = 1_000_000
        budget = 10 * took(b"x" * size + b"\r\n") + 0.1
        assert took(b"--x" + b" " * size + b"y\r\n") < budget

    def test_attached_message_is_named_after_its_subject(self):
        """An attached message without a file name is named after its Subject, as OTOBO
        names it (characters no file name may hold become '_'); file-N.eml without one."""
        p = parse_message(mixed(
            PLAIN, b"Content-Type: message/rfc822\r\n\r\n"
            b"Subject: =?utf-8?q?Re:_Drucker_kaputt_/_Gr=C3=BC=C3=9Fe?=\r\n\r\nfirst\r\n",
            b"Content-Type: message/rfc822\r\n\r\nFrom: a@b.test\r\n\r\nsecond\r\n",
            b"Content-Type: message/rfc822\r\n"
            b"Content-Disposition: attachment; filename=given.eml\r\n\r\n"
            b"Subject: not this\r\n\r\nthird\r\n"))
        assert [a.filename for a in p.attachments] == [
            "Re_ Drucker kaputt _ Grüße.eml", "file-2.eml", "given.eml"]

    def test_digest_parts_are_messages(self):
        """Parts of a multipart/digest default to message/rfc822 and are kept as .eml."""
        p = parse_message(CORPUS["digest"].raw)
        assert [(a.filename, a.content_type) for a in p.attachments] == [
            ("one.eml", "message/rfc822"), ("two.eml", "message/rfc822")]
        assert b"second" in p.attachments[1].content

    def test_html_title_and_comments_are_no_text(self):
        """The text of an HTML-only mail leaves out the title, styles and comments (as
        OTOBO's ToAscii does with comments; Outlook's conditional comments hold markup
        such as <xml>settings</xml>); &nbsp; stays a no-break space, as in OTOBO."""
        html = ("<html><head><title>Mail title</title><style>p {}</style></head>"
                "<body><!--[if gte mso 9]><xml>settings</xml><![endif]-->"
                "<p>Hello&nbsp;you</p><!-- a > b --></body></html>")
        assert html_to_text(html) == "Hello\xa0you"
