"""The failure notice the real sender sends when the smarthost (an SMTP server on
127.0.0.1) refuses a reply: the reply comes back whole, as it was queued, so that its
writer can send it again, or only its headers when it is larger than
relay.bounce_size_limit."""

from __future__ import annotations

from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from sqlalchemy import select

from gateway.store.tables import OutboundMessage
from tests.integration.outbound.test_outbound_reply_text import Smarthost, attempt


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    """Refuses a@customer.test at RCPT TO, takes the DSN."""
    host = Smarthost({"a@customer.test": "550 5.1.1 <a@customer.test>: no such user"})
    yield host
    host.stop()


@pytest.mark.parametrize(("limit", "whole"), [("", True), ('bounce_size_limit = "100"', False),
                                              ("bounce_size_limit = 0", False)])
def test_failure_notice_returns_the_message_or_its_headers(smarthost, outbound_config,
                                                           limit, whole):
    cfg = outbound_config(smarthost.port, submission=False, retry="1h*5", extra_relay=limit)
    engine, oid = attempt(cfg, ("a@customer.test",), until="dsn")
    with engine.connect() as conn:
        queued = conn.execute(select(OutboundMessage.data)
                              .where(OutboundMessage.id == oid)).scalar_one()
    engine.dispose()
    assert len(queued) > 100
    dsns = [(rcpts, data) for rcpts, data in smarthost.received if b"multipart/report" in data]
    assert len(dsns) == 1
    msg = BytesParser(policy=default_policy).parsebytes(dsns[0][1])
    assert all(not p.defects for p in msg.walk()), [p.defects for p in msg.walk()]
    ps = msg.get_payload()
    assert isinstance(ps, list)
    text = ps[0].get_content()
    if whole:
        assert ps[2].get_content_type() == "message/rfc822"
        (returned,) = ps[2].get_payload()
        assert returned["Subject"] is not None and "Hello" in returned["Subject"]
        assert returned.get_content().strip() == "body"
        assert queued in dsns[0][1]          # byte for byte as it was queued and sent
        assert "The message is attached below." in text
    else:
        assert ps[2].get_content_type() == "text/rfc822-headers"
        assert "Subject:" in ps[2].get_content()
        assert "Its headers are attached below." in text
        assert b"\r\n\r\nbody\r\n" not in dsns[0][1]
