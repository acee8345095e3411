"""The submission door when a command fails inside deskgate: a temporary 451 4.3.0 with a
generic text, the cause in the log and the communication log, and no mail queued twice."""

from __future__ import annotations

import smtplib
import socket
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.outbound.submission_policy import SubmissionHandler
from gateway.store.tables import CommEntry
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers.ca import TestCA
from tests.peers.smarthost import AuthSink

MSG = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n\r\nbody\r\n")
INTERNAL = (451, b"4.3.0 Error: internal server error, try again later")


@pytest.fixture
def open_submission(outbound_config):
    """A config whose submission lets 127.0.0.0/8 submit without AUTH."""

    def make(relay_port: int):
        return outbound_config(relay_port, extra_submission='allow_networks = ["127.0.0.0/8"]')

    return make


def error_entries(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(CommEntry.value).where(
            CommEntry.priority == "Error", CommEntry.key == "Submission")).scalars())


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith("submission command failed")]


class TestCommandFailure:
    def test_rcpt_failure_is_a_temporary_generic_451_and_the_session_goes_on(
            self, open_submission, run_gateway, monkeypatch):
        """An exception in the policy check at RCPT is answered 451 4.3.0 with a generic
        text (not aiosmtpd's permanent "500 Error: (RuntimeError) ..."); the log and the
        communication log name the command and the cause; the same RCPT again and DATA
        then queue the message once."""
        calls = []
        may_submit = SubmissionHandler._may_submit

        def flaky(self, session):
            calls.append(1)
            if len(calls) == 2:                 # MAIL is the first call, RCPT the second
                raise RuntimeError("policy table gone: pw=hunter2")
            return may_submit(self, session)

        monkeypatch.setattr(SubmissionHandler, "_may_submit", flaky)
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            with capture_logs() as logs, smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test") == INTERNAL
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.data(MSG)[0] == 250
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            got = wait_for(lambda: error_entries(rg.gateway.engine), what="Error entry")
        assert len(sink.received) == 1
        assert len(got) == 1 and got[0].startswith("RCPT: ") and "RuntimeError" in got[0]
        [failed] = failures(logs)
        assert failed["command"] == "RCPT" and failed["client"].startswith("127.0.0.1:")
        assert "policy table gone" in repr(failed["exc_info"])

    def test_data_failure_is_451_and_the_retried_transaction_queues_once(
            self, open_submission, run_gateway):
        """An exception out of the pipeline call at DATA is answered 451 4.3.0 with nothing
        queued; the transaction is over (MAIL without RSET is accepted) and sending the
        message again queues and delivers it exactly once."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            pipeline = rg.gateway.outbound
            submit = pipeline.submit
            calls = []

            async def flaky(ctx):
                calls.append(ctx)
                if len(calls) == 1:
                    raise ValueError("unexpected value in the queue table")
                return await submit(ctx)

            pipeline.submit = flaky
            with capture_logs() as logs, smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test")[0] == 250
                code, text = s.data(MSG)
                assert (code, text) == INTERNAL
                assert b"ValueError" not in text and b"queue table" not in text
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.data(MSG)[0] == 250
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            got = wait_for(lambda: error_entries(rg.gateway.engine), what="Error entry")
        assert len(calls) == 2 and len(sink.received) == 1
        assert got == ["DATA: ValueError: unexpected value in the queue table; "
                       "answered 451 4.3.0"]
        [failed] = failures(logs)
        assert failed["command"] == "DATA" and failed["log_level"] == "error"

    def test_failure_with_queue_ids_never_committed_is_451(self, open_submission,
                                                           run_gateway):
        """An exception after queue ids were assigned in a transaction that did not
        commit (ids the database does not hold) is answered 451 4.3.0, not 250: a
        message answered 250 that is not in the queue would be lost."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)

            async def rolled_back(ctx):
                ctx.outbound_ids = [4242]
                raise RuntimeError("commit failed")

            rg.gateway.outbound.submit = rolled_back
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.data(MSG) == INTERNAL
            assert statuses(rg.gateway.engine) == []

    def test_failure_after_the_message_is_queued_is_answered_250(
            self, open_submission, run_gateway):
        """An exception after the queue row is committed (here raised by the pipeline's
        submit once it has queued the message) is answered 250 with the queue id, never
        4xx: a client retrying it would send the message twice. The message is queued
        and delivered once; the cause is logged."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            pipeline = rg.gateway.outbound
            real_submit = pipeline.submit

            async def submit_then_fail(ctx: Any) -> Any:
                await real_submit(ctx)
                raise RuntimeError("sender gone")

            pipeline.submit = submit_then_fail
            with capture_logs() as logs, smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert s.rcpt("cust@customer.test")[0] == 250
                code, text = s.data(MSG)
                assert code == 250 and text.startswith(b"2.0.0 queued as "), text
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            got = wait_for(lambda: error_entries(rg.gateway.engine), what="Error entry")
        assert len(sink.received) == 1
        assert len(got) == 1 and "RuntimeError: sender gone" in got[0]
        assert "answered 250" in got[0]
        [failed] = failures(logs)
        assert failed["command"] == "DATA" and "sender gone" in repr(failed["exc_info"])


class TestTlsHandshakeFailure:
    def test_failed_starttls_handshake_closes_without_an_internal_error(
            self, tmp_path, outbound_config, run_gateway):
        """A client that answers STARTTLS's 220 with bytes that are no TLS handshake is
        disconnected (aiosmtpd closes it) and is not reported as an internal error: no
        Error entry, no "submission command failed" in the log."""
        leaf = TestCA(tmp_path / "ca").issue("submission", hosts=("127.0.0.1",))
        with AuthSink() as sink:
            cfg = outbound_config(sink.port, extra_submission=(
                f'tls_cert = "{leaf.cert}"\ntls_key = "{leaf.key}"\n'))
            rg = run_gateway(cfg)
            with capture_logs() as logs, socket.create_connection(
                    ("127.0.0.1", submission_port(cfg)), 10) as raw:
                f = raw.makefile("rb")
                assert f.readline().startswith(b"220 ")
                raw.sendall(b"EHLO app.test\r\n")
                while f.readline()[3:4] == b"-":
                    pass
                raw.sendall(b"STARTTLS\r\n")
                assert f.readline().startswith(b"220 ")
                raw.sendall(b"this is no TLS ClientHello\r\n" * 20)
                assert f.read() == b""
                wait_for(lambda: any("STARTTLS" in e["event"] for e in logs),
                         what="the handshake failure logged")
            assert error_entries(rg.gateway.engine) == []
        assert failures(logs) == []
        assert [e["event"] for e in logs if "STARTTLS" in e["event"]] == [
            "submission STARTTLS handshake failed"]
