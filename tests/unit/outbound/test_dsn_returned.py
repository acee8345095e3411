"""What a DSN returns of the message, as Postfix's bounce_size_limit decides it: a
failure notice carries the whole message (message/rfc822, or message/global when its
headers are UTF-8, RFC 6533) when it is not larger than relay.bounce_size_limit, else
only its headers (text/rfc822-headers); a delay notice and a limit of 0 always only
the headers. The readable part says which. Read with the email package as a mail
client reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.parser import BytesParser
from email.policy import default as default_policy

from gateway.config import load_config
from gateway.inbound.bounce import parse_dsn
from gateway.outbound import queue as oq
from gateway.outbound.dsn import build_dsn

HEADERS = (b"From: support@helpdesk.test\r\nTo: a@customer.test\r\n"
           b"Subject: Re: [Ticket#2026030210000001] printer\r\n"
           b"Message-ID: <reply1@helpdesk.test>")
BODY = b"Dear customer,\r\n\r\nthe printer is fixed.\r\n"
MESSAGE = HEADERS + b"\r\n\r\n" + BODY
REFUSED = oq.RcptResult(1, "a@customer.test", 550, "5.1.1 <a@customer.test>: no such user",
                        host="mx.customer.test[192.0.2.1]", command="RCPT TO")
WHOLE = "The message is attached below."
HEADERS_ONLY = "Its headers are attached below."


def dsn(original: bytes, limit: int, *, action: str = "failed") -> bytes:
    return build_dsn(action=action, reporting_mta="helpdesk.test",  # type: ignore[arg-type]
                     to="support@helpdesk.test",
                     original_headers=original.split(b"\r\n\r\n", 1)[0],
                     original=original, bounce_size_limit=limit,
                     original_message_id="<reply1@helpdesk.test>", results=[REFUSED],
                     arrival=datetime(2026, 3, 2, 9, 30, tzinfo=UTC))


def parts(data: bytes) -> list[Message]:
    msg = BytesParser(policy=default_policy).parsebytes(data)
    assert msg.get_content_type() == "multipart/report"
    assert all(not p.defects for p in msg.walk()), [p.defects for p in msg.walk()]
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def readable(data: bytes) -> str:
    text = parts(data)[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    return text.decode()


class TestWholeMessage:
    def test_a_small_message_comes_back_whole(self):
        """A failed message not larger than the limit is the third part as
        message/rfc822, its headers and body as they were queued; the readable part
        says the message is attached."""
        data = dsn(MESSAGE, 50000)
        ps = parts(data)
        assert [p.get_content_type() for p in ps] == [
            "text/plain", "message/delivery-status", "message/rfc822"]
        (returned,) = ps[2].get_payload()
        assert returned["Message-ID"] == "<reply1@helpdesk.test>"
        assert returned["Subject"] == "Re: [Ticket#2026030210000001] printer"
        assert returned.get_payload(decode=True) == BODY
        assert MESSAGE + b"\r\n" in data
        text = readable(data)
        assert WHOLE in text and HEADERS_ONLY not in text

    def test_a_message_of_exactly_the_limit_comes_back_whole(self):
        """'not larger than': a message of bounce_size_limit bytes is returned whole, one
        byte more and only its headers are."""
        assert parts(dsn(MESSAGE, len(MESSAGE)))[2].get_content_type() == "message/rfc822"
        assert parts(dsn(MESSAGE, len(MESSAGE) - 1))[2].get_content_type() == \
            "text/rfc822-headers"

    def test_the_bounce_parser_finds_the_message_id_in_the_returned_message(self):
        info = parse_dsn(message_from_bytes(dsn(MESSAGE, 50000)))
        assert info is not None
        assert (info.action, info.status, info.original_message_id) == \
            ("failed", "5.1.1", "<reply1@helpdesk.test>")

    def test_utf8_headers_come_back_as_message_global(self):
        """Headers in UTF-8 (RFC 6532): the whole message as message/global (RFC 6533),
        marked 8bit, its bytes unchanged."""
        original = ("From: J\u00f6rg <support@helpdesk.test>\r\nSubject: Gr\u00fc\u00dfe\r\n"
                    "Message-ID: <reply1@helpdesk.test>\r\n\r\nHallo J\u00f6rg\r\n").encode()
        data = dsn(original, 50000)
        ps = parts(data)
        assert ps[2].get_content_type() == "message/global"
        assert ps[2]["Content-Transfer-Encoding"] == "8bit"
        assert original in data
        assert not [p for p in ps if p.get_content_type() in (
            "message/rfc822", "text/rfc822-headers", "message/global-headers")]

    def test_an_8bit_body_under_ascii_headers_is_message_rfc822_8bit(self):
        """An 8-bit body with ASCII headers: message/rfc822 (RFC 6532 needs global only
        for UTF-8 headers), marked 8bit, the body's bytes as they were."""
        original = HEADERS + b"\r\nContent-Type: text/plain; charset=utf-8\r\n" \
            b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        data = dsn(original, 50000)
        ps = parts(data)
        assert ps[2].get_content_type() == "message/rfc822"
        assert ps[2]["Content-Transfer-Encoding"] == "8bit"
        assert original in data


class TestHeadersOnly:
    def test_a_message_over_the_limit_comes_back_as_its_headers(self):
        big = HEADERS + b"\r\n\r\n" + b"x" * 100 + b"\r\n"
        data = dsn(big, 50)
        ps = parts(data)
        assert ps[2].get_content_type() == "text/rfc822-headers"
        returned = ps[2].get_payload()
        assert "Message-ID: <reply1@helpdesk.test>" in returned
        assert b"x" * 100 not in data
        text = readable(data)
        assert HEADERS_ONLY in text and WHOLE not in text

    def test_a_limit_of_0_always_returns_the_headers(self):
        data = dsn(MESSAGE, 0)
        assert parts(data)[2].get_content_type() == "text/rfc822-headers"
        assert b"the printer is fixed" not in data
        assert HEADERS_ONLY in readable(data)

    def test_a_delay_notice_returns_only_the_headers(self):
        """As Postfix's delay warning: the message is still being delivered, nothing
        to resend."""
        data = dsn(MESSAGE, 50000, action="delayed")
        assert parts(data)[2].get_content_type() == "text/rfc822-headers"
        assert b"the printer is fixed" not in data
        assert HEADERS_ONLY in readable(data)


class TestSetting:
    def test_relay_bounce_size_limit_defaults_to_50000_bytes(self, make_confdir):
        """Postfix's bounce_size_limit default; written as a size like the other size
        keys."""
        assert load_config(make_confdir()).relay.bounce_size_limit == 50000
        conf = make_confdir({"40-relay.toml": '[relay]\nbounce_size_limit = "100KiB"\n'})
        assert load_config(conf).relay.bounce_size_limit == 100 * 1024
