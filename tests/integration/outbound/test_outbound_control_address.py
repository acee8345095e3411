"""Queued envelope addresses holding a control character other than CR or LF (NUL, TAB,
ESC, DEL, a C1 control such as NEL): like one with a line break, such an address is no
address any SMTP command may carry, so it fails at once with 553 5.1.3 (5.1.7 for the
sender) and a DSN, shown escaped, and the message's other recipients are still sent (a
real smtplib client against a small SMTP server on 127.0.0.1, and the Maildir
transport)."""

from __future__ import annotations

from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.inbound.bounce import parse_dsn
from gateway.store.tables import CommEntry, OutboundMessage, OutboundRecipient
from tests.conftest import free_port
from tests.integration.outbound.test_outbound_reply_text import (
    Smarthost,
    attempt,
    the_dsn,
    unwrapped,
)

REFUSED = (553, "553 5.1.3 address contains a control character")
# The queued address, and how the DSN and the log show it.
CONTROLS = [
    ("nul\x00x@customer.test", "nul\\x00x@customer.test"),
    ("tab\tx@customer.test", "tab\\tx@customer.test"),
    ("esc\x1b[31m@customer.test", "esc\\x1b[31m@customer.test"),
    ("del\x7fx@customer.test", "del\\x7fx@customer.test"),
    ("nel\x85x@customer.test", "nel\\x85x@customer.test"),
]


def recipients(engine, oid: int) -> dict[str, tuple[str, int, str]]:
    with engine.connect() as conn:
        return {r.address: (r.status, r.last_code, r.last_reply) for r in conn.execute(
            select(OutboundRecipient).where(OutboundRecipient.outbound_id == oid))}


class TestSmarthost:
    @pytest.mark.parametrize(("bad", "escaped"), CONTROLS)
    def test_a_recipient_with_a_control_character_fails_with_a_dsn(
            self, outbound_config, bad, escaped):
        """The recipient with the control character fails on the first attempt with 553
        5.1.3 and is never put on an RCPT line; the other one is delivered; the DSN and
        the communication log name it escaped. Before, it was handed to the smarthost
        (and delivered when it said 250; with NEL the whole message failed 5.6.7 for
        want of SMTPUTF8)."""
        host = Smarthost({})
        try:
            cfg = outbound_config(host.port, submission=False, retry="1h*5")
            engine, oid = attempt(cfg, ("cust@customer.test", "bad@customer.test"),
                                  rewrite={"bad@customer.test": bad}, until="dsn")
            got = recipients(engine, oid)
            with engine.connect() as conn:
                failed = [v for (v,) in conn.execute(select(CommEntry.value)
                                                     .where(CommEntry.key == "Failed"))]
            engine.dispose()
            assert got == {"cust@customer.test": ("sent", 250, "2.0.0 queued"),
                           bad: ("failed", *REFUSED)}
            assert [rcpts for rcpts, data in host.received
                    if b"multipart/report" not in data] == [["cust@customer.test"]]
            dsn = the_dsn(host)
        finally:
            host.stop()
        info = parse_dsn(message_from_bytes(dsn))
        assert info is not None and (info.action, info.status) == ("failed", "5.1.3")
        msg = BytesParser(policy=default_policy).parsebytes(dsn)
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        assert (f"<{escaped}>: 553 5.1.3 address contains a control character"
                in unwrapped(text.get_content()))
        assert failed == [f"<{escaped}>: 553 5.1.3 address contains a control character "
                          "(permanent failure)"]

    def test_a_sender_with_a_control_character_fails_every_recipient(
            self, outbound_config):
        """A MAIL FROM address with ESC fails each recipient at once with 553 5.1.7 and
        nothing but the DSN reaches the smarthost."""
        host = Smarthost({})
        try:
            cfg = outbound_config(host.port, submission=False, retry="1h*5")
            engine, oid = attempt(cfg, ("cust@customer.test",), until="dsn",
                                  sender="app\x1b@internal.test")
            got = recipients(engine, oid)
            engine.dispose()
            assert got == {"cust@customer.test": (
                "failed", 553, "553 5.1.7 sender address contains a control character")}
            assert [data for _, data in host.received
                    if b"multipart/report" not in data] == []
        finally:
            host.stop()


class TestMaildir:
    def test_a_recipient_with_a_control_character_fails_and_is_not_written(
            self, outbound_config, tmp_path):
        """relay.mode = "maildir": the recipient with DEL fails with 553 5.1.3 and the
        file names only the other one. Before, it got 250 and an
        X-Deskgate-Envelope-To line of its own."""
        outbox = tmp_path / "outbox"
        cfg = outbound_config(free_port(), submission=False, retry="1h*5",
                              extra_relay=f'mode = "maildir"\nmaildir = "{outbox}"\n')
        engine, oid = attempt(cfg, ("cust@customer.test", "bad@customer.test"),
                              rewrite={"bad@customer.test": "del\x7fx@customer.test"})
        got = recipients(engine, oid)
        with engine.connect() as conn:
            status = conn.execute(select(OutboundMessage.status)
                                  .where(OutboundMessage.id == oid)).scalar_one()
        engine.dispose()
        assert status == "failed"
        assert got == {"cust@customer.test": ("sent", 250, got["cust@customer.test"][2]),
                       "del\x7fx@customer.test": ("failed", *REFUSED)}
        files = [f.read_bytes() for f in sorted(Path(outbox, "new").iterdir())]
        message = [f for f in files if b"multipart/report" not in f]
        assert len(message) == 1
        assert b"X-Deskgate-Envelope-To: <cust@customer.test>\r\n" in message[0]
        assert b"del" not in message[0].split(b"\r\n\r\n", 1)[0]
