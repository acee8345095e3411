"""`deskgate serve` with an account whose login fails: fetch --status says when it is
tried again, and deskgate_poller_account_failing says it fails until a run succeeds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway import metrics
from gateway.cli import main
from gateway.inbound.poller import state
from tests.integration.poller.poller_helpers import account_toml
from tests.peers.serve import wait_for

pytestmark = pytest.mark.dovecot


def _status(rg):
    with rg.gateway.engine.connect() as conn:
        return state.account_status(conn, "box")


def _failing() -> float | None:
    return metrics.REGISTRY.get_sample_value("deskgate_poller_account_failing",
                                             {"account": "box"})


def test_a_failing_account_shows_its_retry_and_the_gauge(mailbox, poller_config,
                                                         run_gateway, capsys):
    """After a refused login the next attempt is a minute after the run ended and the
    gauge is 1; once a reload fixed the password, the run succeeds, the gauge is 0 and
    the next attempt is the interval away."""
    cfg = poller_config(account_toml(mailbox, "pop3s", password="Wr0ng", interval="1h"))
    rg = run_gateway(cfg)
    assert wait_for(lambda: [s.next_attempt is not None for s in _status(rg)] == [True], 20)
    assert _failing() == 1
    assert main(["--config", str(cfg.conf_dir), "fetch", "--status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "Failed"
    ended = _status(rg)[0].last_end
    assert ended is not None
    due = row["next_attempt"]
    assert due.endswith("+00:00")
    delay = datetime.fromisoformat(due) - ended.replace(tzinfo=ended.tzinfo or UTC)
    assert timedelta(seconds=59) <= delay <= timedelta(seconds=61), delay   # the first retry

    # The password fixed by a reload: the run succeeds, the next is an interval away.
    (cfg.conf_dir / "50-accounts.toml").write_text(
        account_toml(mailbox, "pop3s", interval="1h"))
    assert rg.call(rg.gateway.reload()) is True

    def planned_after_success() -> bool:
        st = _status(rg)[0]
        return (st.status == "Successful" and st.next_attempt is not None
                and st.last_end is not None
                and st.next_attempt - st.last_end > timedelta(minutes=59))

    assert wait_for(planned_after_success, 20), _status(rg)
    st = _status(rg)[0]
    assert st.next_attempt is not None and st.last_end is not None
    assert st.next_attempt - st.last_end <= timedelta(minutes=61)
    assert _failing() == 0
