"""An auto-response whose build hangs (a gpg that never returns) does not hold up the
outbound queue, and counts as a failed build."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.store.tables import AutoResponseRequest, CommEntry, OutboundMessage
from tests.integration.outbound.conftest import outbound_toml, submission_port, wait_for
from tests.integration.outbound.test_outbound_autoresponse import mail
from tests.peers.gpg import GpgPeer, kill_agent, short_home
from tests.peers.lmtp import LmtpClient
from tests.peers.ports import free_port
from tests.peers.require import missing_peer
from tests.peers.smarthost import SmtpSink

# The Desk queue signs its mail (and so its auto-responses) with PGP.
DESK = """
[[queue]]
name = "Desk"
address = "desk@example.org"
sign = "pgp"
auto_response_new = "Dear {customer},\\nwe opened ticket {ticket_number}.\\n"

[[address]]
email = "desk@example.org"
display_name = "Example Desk"
queue = "Desk"
"""

OTHER = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Invoice\r\n"
         b"Message-ID: <other-1@internal.test>\r\n\r\nbody\r\n")


class HungGpg:
    """A gpg wrapper: listing keys goes to the real gpg, signing starts a child that
    keeps gpg's stdout and stderr open and does not end (as a gpg-agent waiting for a
    smart card's PIN would) until gpg's 30 s timeout kills gpg's process group."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "gpg-hangs"
        self.pids = directory / "hung.pids"
        self.path.write_text(
            "#!/bin/sh\n"
            'for a in "$@"; do case "$a" in -s|-sa|-sb|--sign|--detach-sign)\n'
            f'  echo $$ >> "{self.pids}"; sleep 600 & echo $! >> "{self.pids}"; wait; exit 2;;\n'
            "esac; done\n"
            'exec gpg "$@"\n')
        self.path.chmod(0o755)

    def hung(self) -> int:
        """How many signing gpg calls have been started (and hang)."""
        return len(self.pids.read_text().split()) // 2 if self.pids.exists() else 0

    def stop(self) -> None:
        """End the processes the wrapper started, by their ids."""
        for pid in (self.pids.read_text().split() if self.pids.exists() else []):
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def hung_desk(tmp_path, make_confdir, run_gateway, monkeypatch) -> Iterator[object]:
    """A gateway whose Desk queue signs with a gpg that hangs, relaying to Postfix's
    smtp-sink; (running gateway, hung gpg, sink, LMTP deliver)."""
    if not SmtpSink.available():
        missing_peer("smtp-sink (Postfix) not installed")
    gpg = HungGpg(tmp_path)
    home = short_home("dgh")
    sink = SmtpSink(tmp_path / "sink").start()
    client = None
    try:
        GpgPeer(home).gen_key("Example Desk <desk@example.org>")
        conf = make_confdir({
            "40-outbound.toml": outbound_toml(sink.port, submission_port=free_port(),
                                              retry="200ms, 200ms"),
            "50-desk.toml": DESK,
            "60-crypto.toml": f'[crypto]\ngnupg_home = "{home}"\ngpg_binary = "{gpg.path}"\n'})
        rg = run_gateway(load_config(conf))
        client = LmtpClient(rg.socket_path)
        client.lhlo()

        def deliver(msg: bytes) -> None:
            _, replies = client.transaction("jane@customer.test", ["desk@example.org"], msg)
            assert [c for c, _ in replies] == [250]

        yield rg, gpg, sink, deliver
    finally:
        if client is not None:
            client.close()
        gpg.stop()
        sink.stop()
        kill_agent(home)


def build_errors(rg) -> list[str]:
    with rg.gateway.engine.connect() as conn:
        return list(conn.execute(select(CommEntry.value).where(
            CommEntry.key == "AutoResponse", CommEntry.priority == "Error")).scalars())


class TestHungBuild:
    def test_the_queue_is_delivered_while_a_build_hangs(self, hung_desk, monkeypatch):
        """While the auto-response's signing gpg hangs, a message submitted after it
        reaches the smarthost (Postfix's smtp-sink) within seconds."""
        from gateway.outbound import autoresponse

        monkeypatch.setattr(autoresponse, "BUILD_TIMEOUT", 60.0)
        rg, gpg, sink, deliver = hung_desk
        deliver(mail(sender="Jane <jane@customer.test>"))
        wait_for(lambda: gpg.hung() == 1, what="the signing gpg to hang")
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", submission_port(rg.config)) as s:
            assert s.sendmail("app@internal.test", ["cust@customer.test"], OTHER) == {}
        (got,) = wait_for(lambda: sink.count() >= 1 and sink.messages(), timeout=10,
                          what="the other message at smtp-sink while the build hangs")
        assert time.monotonic() - t0 < 10
        assert b"<other-1@internal.test>" in got.data and got.rcpts == ["cust@customer.test"]
        with rg.gateway.engine.connect() as conn:
            left = conn.execute(select(AutoResponseRequest.last_error)).scalars().all()
            kinds = conn.execute(select(OutboundMessage.kind)).scalars().all()
        assert left == [autoresponse.UNFINISHED]          # still building (hung)
        assert kinds == ["message"]

    def test_a_build_past_its_time_counts_as_failed_and_is_given_up(self, hung_desk,
                                                                    monkeypatch):
        """A build that runs past BUILD_TIMEOUT counts as a failed build: built again on
        relay.retry, given up with an Error naming the time when the schedule has run
        out; meanwhile other mail is delivered."""
        from gateway.outbound import autoresponse

        monkeypatch.setattr(autoresponse, "BUILD_TIMEOUT", 1.0)
        rg, gpg, sink, deliver = hung_desk
        deliver(mail(sender="Jane <jane@customer.test>"))
        wait_for(lambda: gpg.hung() == 1, what="the signing gpg to hang")
        with smtplib.SMTP("127.0.0.1", submission_port(rg.config)) as s:
            assert s.sendmail("app@internal.test", ["cust@customer.test"], OTHER) == {}
        wait_for(lambda: sink.count() >= 1, timeout=10, what="the other message delivered")
        (err,) = wait_for(lambda: build_errors(rg), timeout=20, what="the build given up")
        with rg.gateway.engine.connect() as conn:
            left = conn.execute(select(AutoResponseRequest.id)).all()
            kinds = conn.execute(select(OutboundMessage.kind)).scalars().all()
        assert gpg.hung() == 3                        # the first build and two retries
        assert "took longer than 1 s" in err and "3 times" in err
        assert left == [] and kinds == ["message"]
