"""Hand-off across a crash: kill -9 of `deskgate serve` while the helpdesk holds the request."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.cli import main
from gateway.config import load_config
from gateway.helpdesk import outbox
from gateway.store.db import make_engine
from gateway.store.tables import CommEntry, CommObject
from tests.integration.helpdesk.conftest import SECRET, webhook_conf
from tests.peers.lmtp import LmtpClient
from tests.peers.serve import start_serve, stop_serve
from tests.peers.webhook import WebhookReceiver


def wait_for(pred: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class TestKillDuringHandoff:
    def test_kill_9_mid_handoff_loses_nothing_and_keeps_the_key(
            self, receiver: WebhookReceiver, make_confdir: Callable[..., Path]) -> None:
        """SIGKILL while the helpdesk is answering: after a restart the lease expires and
        the same hand-off is sent again with the same Idempotency-Key (attempt 2), so the
        receiver stores it once; deskgate records it delivered."""
        conf = make_confdir({"50-helpdesk.toml": webhook_conf(receiver.url, retry="0.5s*20",
                                                              lease="2s")})
        secrets = conf.parent / "secrets"
        secrets.mkdir()
        (secrets / "webhook").write_text(SECRET)
        (secrets / "webhook").chmod(0o600)
        cfg = load_config(conf)
        sock = cfg.root / "var" / "run" / "lmtp.sock"
        receiver.hang_seconds = 2.0
        proc = start_serve(conf)
        try:
            assert wait_for(sock.exists), "gateway did not start"
            c = LmtpClient(sock)
            c.lhlo()
            data = (b"From: alice@customer.test\r\nTo: support@example.org\r\n"
                    b"Subject: crash\r\nMessage-ID: <crash1@customer.test>\r\n\r\nbody\r\n")
            _, replies = c.transaction("alice@customer.test", ["support@example.org"], data)
            c.close()
            assert replies[0][0] == 250
            assert wait_for(lambda: receiver.arrived >= 1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        receiver.hang_seconds = 0.0
        assert wait_for(lambda: len(receiver.received) >= 1)   # the helpdesk got it once
        proc = start_serve(conf)
        try:
            engine = make_engine(cfg.database_url)

            def status() -> str:
                with engine.connect() as conn:
                    return str(outbox.list_handoffs(conn, status="all")[0]["status"])

            assert wait_for(lambda: status() == "delivered", 40)
            engine.dispose()
        finally:
            proc.terminate()
            proc.wait(30)
        ok = [r for r in receiver.received if r.status == 200]
        assert len(ok) == 2
        assert {r.headers["Idempotency-Key"] for r in ok} == {ok[0].doc["idempotency_key"]}
        assert [r.doc["attempt"] for r in ok] == [1, 2]
        assert len(receiver.tickets) == 1           # the receiver stored it once


class TestKilledOnEveryAttempt:
    def test_the_time_in_the_outbox_runs_out_and_the_row_fails(
            self, receiver: WebhookReceiver, make_confdir: Callable[..., Path],
            capsys: pytest.CaptureFixture[str]) -> None:
        """A hand-off whose every attempt kills the process (kill -9 while the helpdesk
        holds the request) is not tried for ever, though no interrupted attempt counts:
        the second start hands it off again at once (the first interruption), and when
        that is interrupted too the third start, its time in the outbox past retry =
        "0.3s", fails the row with the reason in `handoff list`/`show`, a Warn
        Interrupted for each and an Error in the communication log."""
        conf = make_confdir({"50-helpdesk.toml": webhook_conf(receiver.url, retry="0.3s",
                                                              lease="2s")})
        secrets = conf.parent / "secrets"
        secrets.mkdir()
        (secrets / "webhook").write_text(SECRET)
        (secrets / "webhook").chmod(0o600)
        cfg = load_config(conf)
        sock = cfg.root / "var" / "run" / "lmtp.sock"
        receiver.hang_seconds = 8.0
        engine = make_engine(cfg.database_url)

        def rows() -> list[dict[str, object]]:
            with engine.connect() as conn:
                return outbox.list_handoffs(conn, status="all")

        try:
            for attempt in (1, 2):
                proc = start_serve(conf)
                try:
                    assert wait_for(sock.exists), "gateway did not start"
                    if attempt == 1:
                        c = LmtpClient(sock)
                        c.lhlo()
                        data = (b"From: alice@customer.test\r\nTo: support@example.org\r\n"
                                b"Subject: poison\r\nMessage-ID: <poison@customer.test>"
                                b"\r\n\r\nbody\r\n")
                        _, replies = c.transaction("alice@customer.test",
                                                   ["support@example.org"], data)
                        c.close()
                        assert replies[0][0] == 250
                    assert wait_for(lambda n=attempt: receiver.arrived >= n, 30)  # type: ignore[misc]
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(10)
                sock.unlink(missing_ok=True)
            proc = start_serve(conf)
            try:
                assert wait_for(lambda: rows() and rows()[0]["status"] == "failed", 40), \
                    rows()
            finally:
                stop_serve(proc)
            [row] = rows()
            assert (row["status"], row["attempts"]) == ("failed", 0)
            assert "previous attempt was interrupted" in str(row["last_error"])
            assert receiver.arrived == 2               # not sent a third time
            with engine.connect() as conn:
                logged = [(e.priority, e.key, e.value) for e in conn.execute(
                    select(CommEntry).join(CommObject, CommObject.id == CommEntry.object_id)
                    .where(CommObject.article_id == row["article_id"])).all()]
        finally:
            engine.dispose()
        assert any(p == "Error" and k == "Failed" and "interrupted" in v
                   for p, k, v in logged), logged
        assert [p for p, k, _ in logged if k == "Interrupted"] == ["Warn", "Warn"]
        assert main(["--config", str(conf), "handoff", "list"]) == 0
        listed = capsys.readouterr().out
        assert "failed" in listed and "interrupted" in listed
        assert main(["--config", str(conf), "handoff", "show", str(row["id"])]) == 0
        shown = capsys.readouterr().out
        assert "previous attempt was interrupted" in shown
