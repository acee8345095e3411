"""DSN (RFC 3461) end to end: a client submits with RET/ENVID and NOTIFY/ORCPT through
a running gateway; the relay honours them towards a next hop without DSN (a small SMTP
server on 127.0.0.1: deskgate sends the notices asked for, success ones saying
relayed) and passes them on to one that announces DSN (Postfix's smtp-sink, which
records the parameters it got), sending no success notice itself. Mail submitted
without them reaches the next hop without any."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.store.tables import CommEntry, OutboundMessage
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.integration.outbound.test_outbound_reply_text import Smarthost
from tests.peers.require import missing_peer
from tests.peers.smarthost import SmtpSink

MSG = (b"From: Agent <agent@internal.test>\r\nTo: cust@customer.test\r\n"
       b"Subject: Your order\r\nX-Deskgate-Queue: Sales\r\n\r\nHello,\r\nshipped.\r\n")


def _submit(cfg, mail_options: list[str], rcpts: list[tuple[str, list[str]]]) -> None:
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        s.ehlo("app.test")
        assert s.has_extn("dsn")
        assert s.mail("agent@internal.test", mail_options)[0] == 250
        for addr, options in rcpts:
            assert s.rcpt(addr, options)[0] == 250
        assert s.data(MSG)[0] == 250


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    """No DSN in its EHLO; refuses a@ and d@ at RCPT TO; takes the notices."""
    host = Smarthost({"a@customer.test": "550 5.1.1 <a@customer.test>: no such user",
                      "d@customer.test": "550 5.1.1 <d@customer.test>: no such user"})
    yield host
    host.stop()


def _reports(host: Smarthost) -> dict[str, list]:
    """The notices the smarthost received, by Subject: their parts."""
    out = {}
    for _, data in host.received:
        msg = message_from_bytes(data)
        if msg.get_content_type() == "multipart/report":
            out[msg["Subject"]] = msg.get_payload()
    return out


class TestNextHopWithoutDsn:
    def test_notices_follow_notify_ret_envid_and_orcpt(self, smarthost, outbound_config,
                                                       run_gateway):
        """a (FAILURE, with ORCPT) gets a failure notice returning the headers only
        (RET=HDRS), with Original-Envelope-Id and Original-Recipient; d (NEVER) none;
        b (SUCCESS) a success notice saying relayed; c (NEVER) none."""
        cfg = outbound_config(smarthost.port)
        rg = run_gateway(cfg)
        _submit(cfg, ["RET=HDRS", "ENVID=QQ+2B1"], [
            ("a@customer.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;orig-a+2B1@customer.test"]),
            ("b@customer.test", ["NOTIFY=SUCCESS"]),
            ("c@customer.test", ["NOTIFY=NEVER"]),
            ("d@customer.test", ["NOTIFY=NEVER"])])
        wait_for(lambda: statuses(rg.gateway.engine) == ["failed", "sent", "sent"],
                 what="the message and two notices")
        reports = _reports(smarthost)
        assert set(reports) == {"Undelivered Mail Returned to Sender",
                                "Successful Mail Delivery Report"}
        failure = reports["Undelivered Mail Returned to Sender"]
        per_msg, *blocks = failure[1].get_payload()
        assert per_msg["Original-Envelope-Id"] == "QQ+1"
        assert [(b["Original-Recipient"], b["Final-Recipient"], b["Action"]) for b in blocks] \
            == [("rfc822;orig-a+1@customer.test", "rfc822; a@customer.test", "failed")]
        assert failure[2].get_content_type() == "text/rfc822-headers"
        success = reports["Successful Mail Delivery Report"]
        per_msg, *blocks = success[1].get_payload()
        assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
            ("rfc822; b@customer.test", "relayed", "2.0.0")]
        assert b"2.0.0 queued" in success[1].as_bytes()
        with rg.gateway.engine.connect() as conn:
            values = conn.execute(select(CommEntry.value).where(
                CommEntry.key.in_(("DSN", "Queued")))).scalars().all()
        assert any("RET=HDRS" in v and "<a@customer.test> NOTIFY=FAILURE" in v
                   for v in values)
        assert any("no failure notice for <d@customer.test> (NOTIFY=NEVER)" in v
                   for v in values)
        assert any("does not announce DSN" in v for v in values)


def _args(sink: SmtpSink) -> list[list[str]]:
    """Per transaction, smtp-sink's X-Mail-Args and X-Rcpt-Args lines, in order."""
    out = []
    files = sorted(sink.dump_dir.glob("*"), key=lambda f: (f.stat().st_mtime_ns, f.name))
    for f in files:
        head = f.read_bytes().decode("latin-1").split("\nReceived: ", 1)[0]
        out.append([ln for ln in head.splitlines()
                    if ln.startswith(("X-Mail-Args: ", "X-Rcpt-Args: "))])
    return out


class TestNextHopWithDsn:
    def test_parameters_are_passed_on_and_no_success_notice_is_sent(
            self, tmp_path: Path, outbound_config, run_gateway):
        """smtp-sink announces DSN: RET, ENVID (xtext again), NOTIFY and ORCPT reach it as
        given, a recipient without them gets none; deskgate queues no success notice.
        A message submitted without DSN parameters reaches it without any."""
        if not SmtpSink.available():
            missing_peer("smtp-sink (Postfix) not installed")
        with SmtpSink(tmp_path / "sink") as sink:
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            _submit(cfg, ["RET=FULL", "ENVID=a+2Bb"], [
                ("x@customer.test", ["NOTIFY=SUCCESS,FAILURE",
                                     "ORCPT=rfc822;x+2By@customer.test"]),
                ("y@customer.test", [])])
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            _submit(cfg, [], [("x@customer.test", [])])
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                     what="second delivery")
            wait_for(lambda: len(_args(sink)) == 2, what="both transactions at the sink")
            with rg.gateway.engine.connect() as conn:
                kinds = conn.execute(select(OutboundMessage.kind)).scalars().all()
                values = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "DSN")).scalars().all()
        assert kinds == ["message", "message"]
        first, second = _args(sink)
        assert first[0].endswith("> RET=FULL ENVID=a+2Bb")
        assert first[1:] == [
            "X-Rcpt-Args: <x@customer.test> NOTIFY=SUCCESS,FAILURE "
            "ORCPT=rfc822;x+2By@customer.test",
            "X-Rcpt-Args: <y@customer.test>"]
        assert "RET=" not in second[0] and "ENVID=" not in second[0]
        assert second[1:] == ["X-Rcpt-Args: <x@customer.test>"]
        assert any("announces DSN" in v for v in values)
        assert any("left to the relay" in v for v in values)
