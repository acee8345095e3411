"""The poller inside `deskgate serve`: interval polling and IDLE."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from gateway.store.tables import Article
from tests.integration.poller.poller_helpers import account_toml, message
from tests.peers.serve import wait_for

pytestmark = pytest.mark.dovecot


def count_articles(rg) -> int:
    with rg.gateway.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Article)).scalar() or 0)


class TestService:
    def test_idle_delivers_appended_message_within_seconds(self, mailbox, poller_config,
                                                          run_gateway):
        """With a 1 h interval, a message appended during IDLE is a ticket in under 5 s."""
        mailbox.append("helpdesk", [message(1)])
        rg = run_gateway(poller_config(account_toml(mailbox, "imaps", interval="1h")))
        assert wait_for(lambda: count_articles(rg) == 1, 15)
        svc = next(s for s in rg.gateway.services if s.name == "poller")
        assert wait_for(lambda: svc.watcher("box") is not None
                        and svc.watcher("box").idling.is_set(), 15)
        start = time.monotonic()
        mailbox.append("helpdesk", [message(2)])
        assert wait_for(lambda: count_articles(rg) == 2, 10)
        elapsed = time.monotonic() - start
        assert elapsed < 5.0, f"IDLE delivery took {elapsed:.1f}s"
        assert wait_for(lambda: mailbox.count("helpdesk") == 0, 5)

    def test_interval_polls_pop3(self, mailbox, poller_config, run_gateway):
        """A POP3 account (no IDLE) is polled at start and again after its interval."""
        rg = run_gateway(poller_config(account_toml(mailbox, "pop3s", interval="1s")))
        time.sleep(0.5)
        mailbox.append("helpdesk", [message(1), message(2)])
        assert wait_for(lambda: count_articles(rg) == 2, 10)
        assert wait_for(lambda: mailbox.count("helpdesk") == 0, 5)

    def test_stop_during_a_drain_loses_nothing(self, mailbox, poller_config, run_gateway):
        """Stopping mid-drain: every message is either stored and removed, or still there."""
        mailbox.drop_into_maildir("helpdesk", [message(i) for i in range(300)])
        rg = run_gateway(poller_config(account_toml(mailbox, "imaps", reconnect_every=50)))
        assert wait_for(lambda: count_articles(rg) >= 20, 30)
        svc = next(s for s in rg.gateway.services if s.name == "poller")
        rg.call(svc.stop())
        stored = count_articles(rg)
        assert stored < 300
        assert stored + mailbox.count("helpdesk") == 300
        with rg.gateway.engine.connect() as conn:
            from gateway.store.tables import Communication

            statuses = set(conn.execute(select(Communication.status)).scalars())
        assert "Processing" not in statuses

    def test_reload_starts_a_new_account(self, mailbox, poller_config, run_gateway):
        """An [[account]] added by a reload starts polling without a restart."""
        cfg = poller_config(account_toml(mailbox, "pop3s", name="first", interval="1h",
                                         valid=False))
        rg = run_gateway(cfg)
        svc = next(s for s in rg.gateway.services if s.name == "poller")
        assert svc.accounts == ()                # valid = false: not polled
        mailbox.append("helpdesk", [message(1)])
        (cfg.conf_dir / "50-accounts.toml").write_text(
            account_toml(mailbox, "imaps", name="second", interval="1h"))
        assert rg.call(rg.gateway.reload()) is True
        assert wait_for(lambda: count_articles(rg) == 1, 15)
        assert svc.accounts == ("second",)
