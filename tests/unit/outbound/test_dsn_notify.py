"""The relay honours the DSN parameters (RFC 3461) a message was submitted with: which
recipients a failure, delay or success notice reports (NOTIFY), what a failure notice
returns (RET), and the Original-Envelope-Id / Original-Recipient fields of the report
(ENVID, ORCPT, RFC 3464 2.2.1, 2.3.1). A message without them is reported as before."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
from sqlalchemy import select

from gateway.inbound.bounce import parse_dsn
from gateway.outbound import queue as oq
from gateway.outbound.context import OutboundContext
from gateway.outbound.dsn import build_dsn
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.rewrite import parse_submission
from gateway.outbound.sender import record
from gateway.outbound.transport import Attempt, Transport
from gateway.runtime import build_runtime
from gateway.store.tables import CommEntry, OutboundMessage
from tests.unit.outbound.test_outbound_queue import RAW

HEADERS = b"From: s@example.org\r\nMessage-ID: <m1@example.org>\r\nSubject: Hi"
ORIGINAL = HEADERS + b"\r\n\r\nbody\r\n"


def _report(action="failed", **kw):
    data = build_dsn(action=action, reporting_mta="helpdesk.test", to="app@internal.test",
                     original_headers=HEADERS, original_message_id="<m1@example.org>",
                     arrival=datetime.now(UTC), original=ORIGINAL,
                     bounce_size_limit=50000, **kw)
    msg = message_from_bytes(data)
    parts = msg.get_payload()
    assert isinstance(parts, list)
    status = parts[1].get_payload()
    return msg, parts, status


class TestReport:
    def test_envid_and_orcpt_are_reported(self):
        """ENVID is the Original-Envelope-Id, first of the per-message fields; ORCPT the
        Original-Recipient, before the Final-Recipient of that recipient only."""
        _, _, (per_msg, a, b) = _report(
            results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no"),
                     oq.RcptResult(2, "b@customer.test", 550, "5.1.1 no")],
            envid="QQ+1", orcpts={1: "rfc822;orig@customer.test"})
        assert per_msg.keys()[0] == "Original-Envelope-Id"
        assert per_msg["Original-Envelope-Id"] == "QQ+1"
        assert a.keys()[:2] == ["Original-Recipient", "Final-Recipient"]
        assert a["Original-Recipient"] == "rfc822;orig@customer.test"
        assert b["Original-Recipient"] is None

    def test_without_them_no_such_fields(self):
        """No ENVID, no ORCPT: the report is as before, without either field."""
        _, _, (per_msg, a) = _report(
            results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no")])
        assert per_msg["Original-Envelope-Id"] is None and a["Original-Recipient"] is None

    @pytest.mark.parametrize(("ret", "returned"), [
        ("", "message/rfc822"), ("FULL", "message/rfc822"), ("HDRS", "text/rfc822-headers")])
    def test_ret_decides_what_a_failure_notice_returns(self, ret, returned):
        """RET=HDRS returns the headers only, however small the message; RET=FULL and no
        RET the whole message within bounce_size_limit."""
        _, parts, _ = _report(results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no")],
                              ret=ret)
        assert parts[2].get_content_type() == returned

    @pytest.mark.parametrize("action", ["relayed", "delivered"])
    def test_success_notice(self, action):
        """A success notice says relayed (or delivered) with a 2.x.x Status, the
        server's reply, and the headers only (RET=FULL is for failure notices)."""
        msg, parts, (_, a) = _report(
            action=action, ret="FULL",
            results=[oq.RcptResult(1, "a@customer.test", 250, "Ok: queued",
                                   host="relay.test[192.0.2.1]", command="end of DATA")])
        assert msg["Subject"] == "Successful Mail Delivery Report"
        assert (a["Action"], a["Status"]) == (action, "2.0.0")
        assert a["Diagnostic-Code"] == "smtp; 250 Ok: queued"
        assert parts[2].get_content_type() == "text/rfc822-headers"
        text = parts[0].get_payload()
        assert "successfully delivered" in text
        info = parse_dsn(msg)
        assert info is not None and info.action == action


@pytest.fixture
def warn_rt(config):
    cfg = dataclasses.replace(config, relay=dataclasses.replace(
        config.relay, retry=(60.0, 60.0), warn_after=60.0, bounce_size_limit=50000))
    return build_runtime(cfg)


def _queue(engine, rt, rcpts, notify, ret=""):
    ctx = OutboundContext(mail_from="app@internal.test", recipients=list(rcpts), raw=RAW,
                          trusted=True)
    ctx.dsn = MessageDsn(ret, "ENV1" if ret else "")
    ctx.dsn_rcpt = {r: RecipientDsn(n, f"rfc822;o-{r}" if n else "")
                    for r, n in zip(rcpts, notify, strict=True) if n}
    with engine.begin() as conn:
        parse_submission(ctx, rt)
        process_in_transaction(ctx, rt, conn)
    with engine.begin() as conn:
        (m,) = oq.claim(conn, "n", limit=1, lease=60)
    return m


def _notices(engine):
    """(Action per recipient, returned part's type, Original-Envelope-Id) of each queued
    notice."""
    with engine.connect() as conn:
        datas = conn.execute(select(OutboundMessage.data).where(
            OutboundMessage.kind == "dsn").order_by(OutboundMessage.id)).scalars().all()
    out = []
    for d in datas:
        parts = message_from_bytes(d).get_payload()
        per_msg, *blocks = parts[1].get_payload()
        out.append(({b["Final-Recipient"].split("; ")[1]: b["Action"] for b in blocks},
                    parts[2].get_content_type(), per_msg["Original-Envelope-Id"]))
    return out


def _dsn_entries(engine):
    with engine.connect() as conn:
        return conn.execute(select(CommEntry.value).where(CommEntry.key == "DSN")
                            .order_by(CommEntry.id)).scalars().all()


class TestNotify:
    def test_failure_notice_only_for_those_that_want_one(self, ob_engine, warn_rt):
        """NOTIFY=NEVER and a NOTIFY without FAILURE get no failure notice; FAILURE and
        no NOTIFY at all do; RET=HDRS returns the headers, ENVID is reported."""
        rcpts = ["a@customer.test", "b@customer.test", "c@customer.test", "d@customer.test"]
        m = _queue(ob_engine, warn_rt, rcpts, ["NEVER", "SUCCESS,DELAY", "FAILURE", ""],
                   ret="HDRS")
        results = [oq.RcptResult(rid, addr, 550, "5.1.1 no") for rid, addr in m.recipients]
        with ob_engine.begin() as conn:
            record(conn, warn_rt, m, Attempt(), results, Transport())
        assert _notices(ob_engine) == [
            ({"c@customer.test": "failed", "d@customer.test": "failed"},
             "text/rfc822-headers", "ENV1")]
        entries = _dsn_entries(ob_engine)
        assert any("<a@customer.test>" in e and "NOTIFY=NEVER" in e for e in entries)
        assert any("<b@customer.test>" in e and "NOTIFY=SUCCESS,DELAY" in e for e in entries)

    def test_nobody_wants_one_no_notice(self, ob_engine, warn_rt):
        """Every failed recipient said NEVER: no failure notice is queued at all."""
        m = _queue(ob_engine, warn_rt, ["a@customer.test"], ["NEVER"])
        ((rid, addr),) = m.recipients
        with ob_engine.begin() as conn:
            st = record(conn, warn_rt, m, Attempt(),
                        [oq.RcptResult(rid, addr, 550, "5.1.1 no")], Transport())
        assert st.status == "failed" and _notices(ob_engine) == []

    def test_delay_notice_only_for_those_that_want_one(self, ob_engine, warn_rt):
        """A delay notice reports the deferred recipients whose NOTIFY has DELAY, or who
        gave none; NOTIFY=FAILURE alone and NEVER get none."""
        rcpts = ["a@customer.test", "b@customer.test", "c@customer.test", "d@customer.test"]
        m = _queue(ob_engine, warn_rt, rcpts, ["NEVER", "FAILURE", "DELAY", ""])
        m = dataclasses.replace(m, created=datetime.now(UTC) - timedelta(hours=1))
        results = [oq.RcptResult(rid, addr, 450, "4.2.0 later") for rid, addr in m.recipients]
        with ob_engine.begin() as conn:
            st = record(conn, warn_rt, m, Attempt(), results, Transport())
        assert st.warn
        assert _notices(ob_engine) == [
            ({"c@customer.test": "delayed", "d@customer.test": "delayed"},
             "text/rfc822-headers", None)]

    @pytest.mark.parametrize(("att", "action"), [
        (Attempt(), "relayed"), (Attempt(final=True), "delivered"),
        (Attempt(dsn_passed=True), None)])
    def test_success_notice(self, ob_engine, warn_rt, att, action):
        """NOTIFY=SUCCESS: a success notice saying relayed for a next hop without DSN
        (delivered where deskgate is final); none where the next hop announced DSN and
        took the request on. Others that were delivered get none."""
        m = _queue(ob_engine, warn_rt, ["a@customer.test", "b@customer.test"],
                   ["SUCCESS", ""])
        results = [oq.RcptResult(rid, addr, 250, "2.0.0 Ok", host="relay.test[192.0.2.1]",
                                 command="end of DATA") for rid, addr in m.recipients]
        with ob_engine.begin() as conn:
            st = record(conn, warn_rt, m, att, results, Transport())
        assert st.status == "sent"
        expected = [({"a@customer.test": action}, "text/rfc822-headers", None)]
        assert _notices(ob_engine) == (expected if action else [])

    def test_without_parameters_as_before(self, ob_engine, warn_rt):
        """No DSN parameters: a failure notice for every failed recipient, the whole
        message returned, nothing for the delivered ones."""
        m = _queue(ob_engine, warn_rt, ["a@customer.test", "b@customer.test"], ["", ""])
        (ra, a), (rb, b) = m.recipients
        with ob_engine.begin() as conn:
            record(conn, warn_rt, m, Attempt(), [oq.RcptResult(ra, a, 550, "5.1.1 no"),
                                                 oq.RcptResult(rb, b, 250, "2.0.0 Ok")],
                   Transport())
        assert _notices(ob_engine) == [({"a@customer.test": "failed"}, "message/rfc822", None)]
