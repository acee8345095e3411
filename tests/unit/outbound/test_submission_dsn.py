"""The DSN extension (RFC 3461) of the submission listener: EHLO lists DSN, MAIL takes
RET and ENVID, RCPT takes NOTIFY and ORCPT (xtext decoded, RFC 3461 4), bad or repeated
values get Postfix's smtpd replies, and what was given reaches the pipeline."""

from __future__ import annotations

import pytest

from gateway.outbound.dsn_params import (
    MessageDsn,
    RecipientDsn,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    xtext_decode,
    xtext_encode,
)
from tests.unit.outbound.test_submission_syntax import session  # noqa: F401 (fixture)

BAD_RET = "501 5.5.4 Bad RET parameter syntax"
BAD_ENVID = "501 5.5.4 Bad ENVID parameter syntax"
BAD_NOTIFY = "501 5.5.4 Error: Bad NOTIFY parameter syntax"
BAD_ORCPT = "501 5.5.4 Error: Bad ORCPT parameter syntax"


class TestXtext:
    @pytest.mark.parametrize(("text", "decoded"), [
        ("abc", "abc"), ("a+2Bb", "a+b"), ("a+3Db", "a=b"), ("+20x", " x"), ("", ""),
        ("a+2bb", "a+b"),        # lower-case hex, as Postfix's xtext_unquote takes it
        ("QQ+40example.org", "QQ@example.org"),
    ])
    def test_decoded(self, text, decoded):
        """'+' and two hex digits stand for that byte; other characters for themselves."""
        assert xtext_decode(text) == decoded

    @pytest.mark.parametrize("text", ["a+", "a+2", "a+zz", "a=b", "a b", "a\x01", "zö",
                                      "a+G0"])
    def test_malformed(self, text):
        """A '+' without two hex digits, '=', blanks, controls and non-ASCII are no xtext."""
        assert xtext_decode(text) is None

    @pytest.mark.parametrize("text", ["a+b=c", "plain", "with space", "x@y.test"])
    def test_encode_round_trips(self, text):
        """What is encoded decodes back; '+', '=' and blanks are hex-encoded."""
        encoded = xtext_encode(text)
        assert xtext_decode(encoded) == text
        assert not set("= ") & set(encoded.replace("+2B", "").replace("+3D", ""))
        assert "+" not in text or "+2B" in encoded


class TestValues:
    @pytest.mark.parametrize(("value", "ret"), [("FULL", "FULL"), ("hdrs", "HDRS"),
                                                ("Full", "FULL")])
    def test_ret(self, value, ret):
        """RET=FULL or HDRS, in any case."""
        assert parse_ret(value) == ret

    @pytest.mark.parametrize("value", ["", "ALL", "FULL,HDRS", "HEADERS"])
    def test_bad_ret(self, value):
        assert parse_ret(value) is None

    @pytest.mark.parametrize(("value", "notify"), [
        ("NEVER", "NEVER"), ("never", "NEVER"), ("SUCCESS", "SUCCESS"),
        ("delay,failure", "FAILURE,DELAY"), ("SUCCESS,FAILURE,DELAY", "SUCCESS,FAILURE,DELAY"),
        ("FAILURE,FAILURE", "FAILURE"),
    ])
    def test_notify(self, value, notify):
        """NEVER alone, or a comma list of SUCCESS, FAILURE and DELAY (any case, kept in
        that order)."""
        assert parse_notify(value) == notify

    @pytest.mark.parametrize("value", ["", "NEVER,SUCCESS", "FAILURE,NEVER", "SOMETIMES",
                                       "SUCCESS;DELAY", "SUCCESS,", ",DELAY"])
    def test_bad_notify(self, value):
        """NEVER with anything else, unknown words and empty list members are refused."""
        assert parse_notify(value) is None

    @pytest.mark.parametrize(("value", "orcpt"), [
        ("rfc822;a@customer.test", "rfc822;a@customer.test"),
        ("RFC822;a+2Bb@customer.test", "RFC822;a+b@customer.test"),
        ("x-local;some+20one", "x-local;some one"),
    ])
    def test_orcpt(self, value, orcpt):
        """ORCPT=addr-type;xtext: the address decoded, the type kept as given."""
        assert parse_orcpt(value) == orcpt

    @pytest.mark.parametrize("value", ["a@customer.test", ";a@customer.test", "rfc822;",
                                       "rfc822;a+zz", "rfc 822;a@b", "rfc822;a+0Ab",
                                       "rfc822;" + "a" * 500])
    def test_bad_orcpt(self, value):
        """No ';', an empty type or address, bad xtext, a control character once decoded,
        or longer than RFC 3461's 500 characters."""
        assert parse_orcpt(value) is None

    @pytest.mark.parametrize(("value", "envid"), [("QQ314159", "QQ314159"),
                                                  ("a+2Bb+3Dc", "a+b=c")])
    def test_envid(self, value, envid):
        assert parse_envid(value) == envid

    @pytest.mark.parametrize("value", ["a+0Db", "a+zz", "a" * 101, "a=b"])
    def test_bad_envid(self, value):
        """Bad xtext, a control character once decoded (Postfix's allprint) or over the 100
        characters of RFC 3461 4.4."""
        assert parse_envid(value) is None


class TestWants:
    @pytest.mark.parametrize(("notify", "success", "failure", "delay"), [
        ("", False, True, True),          # not given: as without DSN
        ("NEVER", False, False, False),
        ("SUCCESS", True, False, False),
        ("FAILURE", False, True, False),
        ("SUCCESS,DELAY", True, False, True),
    ])
    def test_notices_wanted(self, notify, success, failure, delay):
        r = RecipientDsn(notify=notify)
        assert (r.wants("SUCCESS"), r.wants("FAILURE"), r.wants("DELAY")) == (
            success, failure, delay)


async def _to_data(c, mail: bytes, rcpts: list[bytes]) -> None:
    assert await c.cmd(b"MAIL FROM:<app@internal.test>" + mail) == "250 2.1.0 OK"
    for r in rcpts:
        assert await c.cmd(b"RCPT TO:" + r) == "250 2.1.5 OK"
    assert await c.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
    assert (await c.cmd(b"Subject: x\r\n\r\nbody\r\n.")).startswith("250 ")


class TestSession:
    async def test_ehlo_lists_dsn(self, session):  # noqa: F811
        """DSN is among the EHLO keywords, after ENHANCEDSTATUSCODES as in Postfix."""
        c, _ = await session()
        lines = await c.lines(b"EHLO app.test")
        keywords = [line[4:].split(" ")[0] for line in lines[1:]]
        assert "DSN" in keywords
        assert keywords.index("DSN") > keywords.index("ENHANCEDSTATUSCODES")

    async def test_parameters_reach_the_pipeline(self, session):  # noqa: F811
        """RET, ENVID, NOTIFY and ORCPT are taken, decoded, and handed to the pipeline
        with the message and each recipient."""
        c, pipeline = await session()
        await _to_data(c, b" RET=HDRS ENVID=QQ+2B1", [
            b"<a@customer.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bx@customer.test",
            b"<b@customer.test> notify=never",
            b"<c@customer.test>"])
        (ctx,) = pipeline.ctxs
        assert ctx.dsn == MessageDsn(ret="HDRS", envid="QQ+1")
        assert ctx.dsn_rcpt == {
            "a@customer.test": RecipientDsn("SUCCESS,DELAY", "rfc822;A+x@customer.test"),
            "b@customer.test": RecipientDsn("NEVER", "")}

    async def test_without_parameters_nothing_is_kept(self, session):  # noqa: F811
        """A transaction without DSN parameters hands none over; one with them does not
        leave them to the next transaction."""
        c, pipeline = await session()
        await _to_data(c, b" RET=FULL", [b"<a@customer.test> NOTIFY=NEVER"])
        await _to_data(c, b"", [b"<a@customer.test>"])
        assert pipeline.ctxs[1].dsn == MessageDsn()
        assert pipeline.ctxs[1].dsn_rcpt == {}

    @pytest.mark.parametrize(("arg", "reply"), [
        (b" RET=ALL", BAD_RET), (b" RET=", BAD_RET), (b" RET=FULL RET=HDRS", BAD_RET),
        (b" RET=FULL ret=FULL", BAD_RET), (b" ENVID=a+zz", BAD_ENVID),
        (b" ENVID=a+0Db", BAD_ENVID), (b" ENVID=x ENVID=y", BAD_ENVID),
        (b" ENVID=" + b"a" * 101, BAD_ENVID),
    ])
    async def test_bad_mail_parameters(self, session, arg, reply):  # noqa: F811
        """Bad or repeated RET/ENVID get Postfix's 501 5.5.4 replies; the client may try
        again in the same session."""
        c, _ = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>" + arg) == reply
        assert await c.cmd(b"MAIL FROM:<app@internal.test> RET=FULL") == "250 2.1.0 OK"

    @pytest.mark.parametrize(("arg", "reply"), [
        (b" NOTIFY=NEVER,SUCCESS", BAD_NOTIFY), (b" NOTIFY=", BAD_NOTIFY),
        (b" NOTIFY=SOMETIMES", BAD_NOTIFY), (b" NOTIFY=DELAY NOTIFY=FAILURE", BAD_NOTIFY),
        (b" ORCPT=a@customer.test", BAD_ORCPT), (b" ORCPT=rfc822;a+zz", BAD_ORCPT),
        (b" ORCPT=rfc822;a@x ORCPT=rfc822;b@x", BAD_ORCPT),
    ])
    async def test_bad_rcpt_parameters(self, session, arg, reply):  # noqa: F811
        """Bad or repeated NOTIFY/ORCPT get Postfix's 501 5.5.4 Error: replies; the
        transaction goes on."""
        c, pipeline = await session()
        assert await c.cmd(b"MAIL FROM:<app@internal.test>") == "250 2.1.0 OK"
        assert await c.cmd(b"RCPT TO:<a@customer.test>" + arg) == reply
        assert await c.cmd(b"RCPT TO:<b@customer.test>") == "250 2.1.5 OK"
        assert await c.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
        assert (await c.cmd(b"x\r\n.")).startswith("250 ")
        assert pipeline.ctxs[0].recipients == ["b@customer.test"]

    async def test_helo_session_refuses_them(self, session):  # noqa: F811
        """After HELO no extension is advertised: DSN parameters are 555 as any other."""
        c, _ = await session()
        assert (await c.cmd(b"HELO app.test")).startswith("250 ")
        assert await c.cmd(b"MAIL FROM:<app@internal.test> RET=FULL") == (
            "555 5.5.4 Unsupported option: RET=FULL")
