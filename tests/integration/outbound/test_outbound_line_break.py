"""Queue rows whose envelope holds an address with CR or LF (queued before `deskgate send`
refused them, or written by another path or node): such an address can never be put on
an SMTP command line, so it fails at once, permanently, with a DSN, and the message's
other recipients are still delivered to the smarthost (Postfix's smtp-sink)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

from sqlalchemy import insert, select

from gateway.inbound.bounce import parse_dsn
from gateway.store.tables import CommEntry, OutboundMessage, OutboundRecipient
from tests.integration.outbound.conftest import statuses, wait_for
from tests.peers.require import missing_peer
from tests.peers.smarthost import SmtpSink, free_port

MSG = (b"From: support@example.org\r\nTo: cust@customer.test\r\nSubject: Hi\r\n"
       b"Message-ID: <crlf-1@example.org>\r\n\r\nbody\r\n")
# smtplib's quoteaddr reads this one as <evil@customer.test> and sent it there ...
BAD = "evil@customer.test>\r\nRCPT TO:<victim@elsewhere.test"
# ... and keeps this one whole, so putcmd raised ValueError for the line break.
RAISES = "(c\r\n)a@customer.test"


def queue_row(engine, sender: str, recipients: list[str]) -> int:
    """A queued message written straight into the queue tables."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        oid = int(conn.execute(insert(OutboundMessage).returning(OutboundMessage.id), dict(
            kind="message", queue="Support", sender=sender, return_path="support@example.org",
            submitter="test", message_id="<crlf-1@example.org>", data=MSG, size=len(MSG),
            status="queued", attempts=0, next_attempt=now, created=now,
            updated=now)).scalar_one())
        conn.execute(insert(OutboundRecipient), [
            {"outbound_id": oid, "address": r, "status": "pending", "updated": now}
            for r in recipients])
    return oid


def recipients(engine, oid: int) -> dict[str, tuple[str, int, str, int]]:
    with engine.connect() as conn:
        return {r.address: (r.status, r.last_code, r.last_reply, r.attempts) for r in
                conn.execute(select(OutboundRecipient).where(
                    OutboundRecipient.outbound_id == oid))}


def sink(tmp_path) -> SmtpSink:
    if not SmtpSink.available():
        missing_peer("smtp-sink not installed")
    return SmtpSink(tmp_path / "sink", port=free_port())


class TestRecipientWithALineBreak:
    def test_fails_permanently_with_a_dsn_and_the_others_are_delivered(
            self, tmp_path, outbound_config, run_gateway):
        """Of four recipients, the two with CR LF fail on the first attempt with 553
        5.1.3 'address contains a line break' and a failure DSN names them; the two others
        are sent in one transaction. smtplib sent the first to the address its parser made
        of it (evil@customer.test, not the queued one); the second raised ValueError: the
        attempt was logged as a crash and every recipient, the good ones too, deferred
        until the retry schedule ran out."""
        with sink(tmp_path) as smtp:
            cfg = outbound_config(smtp.port, submission=False, retry="1h*5")
            rg = run_gateway(cfg)
            engine = rg.gateway.engine
            oid = queue_row(engine, "support@example.org",
                            ["cust@customer.test", BAD, RAISES, "other@customer.test"])
            wait_for(lambda: statuses(engine) == ["failed", "sent"], what="failure and DSN")
            got = recipients(engine, oid)
            assert got["cust@customer.test"][:2] == ("sent", 250)
            assert got["other@customer.test"][:2] == ("sent", 250)
            for bad in (BAD, RAISES):
                assert got[bad] == ("failed", 553, "553 5.1.3 address contains a line break", 1)
            wait_for(lambda: len(smtp.messages()) == 2, what="both at the sink")
            first, dsn = smtp.messages()
            assert first.rcpts == ["cust@customer.test", "other@customer.test"]
            assert (dsn.mail_from, dsn.rcpts) == ("", ["support@example.org"])
            info = parse_dsn(message_from_bytes(dsn.data))
            assert info is not None and (info.action, info.status) == ("failed", "5.1.3")
            assert "evil@customer.test" in info.recipient
            assert b"a@customer.test" in dsn.data
            with engine.connect() as conn:
                failed = [e.value for e in conn.execute(select(CommEntry).where(
                    CommEntry.key == "Failed"))]
            assert len(failed) == 2
            assert all("553 5.1.3 address contains a line break (permanent failure)" in f
                       for f in failed), failed

    def test_a_sender_with_a_line_break_fails_every_recipient_at_once(
            self, tmp_path, outbound_config, run_gateway):
        """A MAIL FROM address with LF fails each recipient permanently (553 5.1.7) on the
        first attempt, nothing goes to the smarthost, and the return path gets a DSN."""
        with sink(tmp_path) as smtp:
            cfg = outbound_config(smtp.port, submission=False, retry="1h*5")
            rg = run_gateway(cfg)
            engine = rg.gateway.engine
            oid = queue_row(engine, "support@example.org\nX-Injected: 1",
                            ["cust@customer.test", "other@customer.test"])
            wait_for(lambda: statuses(engine) == ["failed", "sent"], what="failure and DSN")
            got = recipients(engine, oid)
            assert {a: r[:3] for a, r in got.items()} == {
                a: ("failed", 553, "553 5.1.7 sender address contains a line break")
                for a in ("cust@customer.test", "other@customer.test")}
            wait_for(lambda: len(smtp.messages()) == 1, what="the DSN at the sink")
            (dsn,) = smtp.messages()
            assert (dsn.mail_from, dsn.rcpts) == ("", ["support@example.org"])

    def test_fails_at_once_while_the_others_wait_for_a_smarthost_that_is_down(
            self, outbound_config, run_gateway):
        """With nothing listening at the smarthost's port, the recipient with a line break
        still fails on the first attempt (553, a DSN) and the other one is deferred for
        the next try, not failed."""
        cfg = outbound_config(free_port(), submission=False, retry="1h*5")
        rg = run_gateway(cfg)
        engine = rg.gateway.engine
        oid = queue_row(engine, "support@example.org", ["cust@customer.test", RAISES])
        wait_for(lambda: recipients(engine, oid)[RAISES][0] == "failed", what="failure")
        got = recipients(engine, oid)
        assert got[RAISES] == ("failed", 553, "553 5.1.3 address contains a line break", 1)
        assert got["cust@customer.test"][0] == "pending"
        assert got["cust@customer.test"][1] == 0 and got["cust@customer.test"][3] == 1
        assert statuses(engine) == ["queued", "queued"]      # the message and its DSN


def maildir_config(outbound_config, outbox: Path):
    return outbound_config(free_port(), submission=False, retry="1h*5",
                           extra_relay=f'mode = "maildir"\nmaildir = "{outbox}"\n')


def written(outbox: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted((outbox / "new").iterdir())]


def head_lines(data: bytes) -> list[bytes]:
    """The header section's lines of a file, split at CR LF, a lone CR and a lone LF
    (as any reader of the file may split them)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


class TestMaildirTransport:
    def test_a_recipient_with_a_line_break_fails_and_is_not_written(
            self, tmp_path, outbound_config, run_gateway):
        """relay.mode = "maildir": the two recipients with CR LF fail on the first attempt
        with 553 5.1.3 and a DSN, as with the smarthost; the file holds an
        X-Deskgate-Envelope-To line for each of the two others only, and no line of its
        header section comes from an address. Before, every recipient got 250 and the
        file's header had the lines 'RCPT TO:<victim@elsewhere.test>' and ')a@...'."""
        outbox = tmp_path / "outbox"
        rg = run_gateway(maildir_config(outbound_config, outbox))
        engine = rg.gateway.engine
        oid = queue_row(engine, "support@example.org",
                        ["cust@customer.test", BAD, RAISES, "other@customer.test"])
        wait_for(lambda: statuses(engine) == ["failed", "sent"], what="failure and DSN")
        got = recipients(engine, oid)
        assert got["cust@customer.test"][:2] == ("sent", 250)
        assert got["other@customer.test"][:2] == ("sent", 250)
        for bad in (BAD, RAISES):
            assert got[bad] == ("failed", 553, "553 5.1.3 address contains a line break", 1)
        first, dsn = written(outbox)
        assert head_lines(first)[:3] == [b"Return-Path: <support@example.org>",
                                         b"X-Deskgate-Envelope-To: <cust@customer.test>",
                                         b"X-Deskgate-Envelope-To: <other@customer.test>"]
        assert first.endswith(MSG)
        assert b"victim" not in first and b"RCPT" not in first and b"(c" not in first
        assert head_lines(dsn)[:2] == [b"Return-Path: <>",
                                       b"X-Deskgate-Envelope-To: <support@example.org>"]
        info = parse_dsn(message_from_bytes(dsn))
        assert info is not None and (info.action, info.status) == ("failed", "5.1.3")
        with engine.connect() as conn:
            failed = [e.value for e in conn.execute(select(CommEntry).where(
                CommEntry.key == "Failed"))]
        assert len(failed) == 2
        assert all("553 5.1.3 address contains a line break (permanent failure)" in f
                   for f in failed), failed

    def test_a_sender_with_a_line_break_writes_nothing_but_the_dsn(
            self, tmp_path, outbound_config, run_gateway):
        """A return path with LF fails every recipient with 553 5.1.7 on the first attempt;
        the only file written is the DSN (before, the message was written with an
        'X-Injected: 1' header line and every recipient got 250)."""
        outbox = tmp_path / "outbox"
        rg = run_gateway(maildir_config(outbound_config, outbox))
        engine = rg.gateway.engine
        oid = queue_row(engine, "support@example.org\nX-Injected: 1",
                        ["cust@customer.test", "other@customer.test"])
        wait_for(lambda: statuses(engine) == ["failed", "sent"], what="failure and DSN")
        got = recipients(engine, oid)
        assert {a: r[:3] for a, r in got.items()} == {
            a: ("failed", 553, "553 5.1.7 sender address contains a line break")
            for a in ("cust@customer.test", "other@customer.test")}
        (dsn,) = written(outbox)
        assert head_lines(dsn)[:2] == [b"Return-Path: <>",
                                       b"X-Deskgate-Envelope-To: <support@example.org>"]
        assert b"X-Injected: 1\r\n" not in dsn.split(b"\r\n\r\n", 1)[0]


class TestLoggedAndReported:
    def test_log_entries_and_the_dsn_show_the_addresses_escaped(
            self, tmp_path, outbound_config, run_gateway):
        """For a sender with LF and a recipient with CR LF, no entry of the communication
        log holds a raw CR or LF: the Attempt entry names the sender and the Failed entry
        the recipient with the breaks written as \\r and \\n. The DSN parses without
        defects and its readable part shows the recipient on one (wrapped) line (before,
        the entries held the raw breaks and the readable part had a line
        'RCPT TO:<victim...')."""
        outbox = tmp_path / "outbox"
        rg = run_gateway(maildir_config(outbound_config, outbox))
        engine = rg.gateway.engine
        queue_row(engine, "support@example.org\nX-Injected: 1", [BAD, "cust@customer.test"])
        wait_for(lambda: statuses(engine) == ["failed", "sent"], what="failure and DSN")
        with engine.connect() as conn:
            entries = [(e.key, e.value) for e in conn.execute(select(CommEntry))]
        assert not [v for _, v in entries if "\r" in v or "\n" in v], entries
        attempts = [v for k, v in entries if k == "Attempt"]
        assert any("message from <support@example.org\\nX-Injected: 1>," in v
                   for v in attempts), attempts
        failed = [v for k, v in entries if k == "Failed"]
        assert "<evil@customer.test>\\r\\nRCPT TO:<victim@elsewhere.test>: 553 5.1.7" \
            in "".join(failed)
        (dsn,) = written(outbox)
        msg = BytesParser(policy=default_policy).parsebytes(dsn)
        assert all(not p.defects for p in msg.walk())
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        lines = text.get_content().splitlines()
        assert not [ln for ln in lines if ln.startswith("RCPT")], lines
        lines = "\n".join(lines).replace("\n    ", " ").splitlines()     # unwrapped
        assert ("<evil@customer.test>\\r\\nRCPT TO:<victim@elsewhere.test>: 553 5.1.7 "
                "sender address contains a line break") in lines
