"""deskgate fetch from the shell."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from gateway.inbound.poller.lease import AccountLock
from gateway.store.db import make_engine
from tests.integration.poller.poller_helpers import account_toml, message

pytestmark = pytest.mark.dovecot


class TestFetchCli:
    def test_fetch_prints_what_it_did(self, mailbox, poller_config, capsys):
        """`fetch --json` polls every valid account once and reports counts per account."""
        mailbox.append("helpdesk", [message(1), message(2)])
        secret = mailbox.dir / "pw"
        secret.write_text("secret\n")
        secret.chmod(0o600)
        cfg = poller_config(account_toml(mailbox, "imaps", name="a", password=None,
                                         password_file=str(secret)),
                            account_toml(mailbox, "pop3s", name="off", valid=False))
        assert main(["--config", str(cfg.conf_dir), "fetch", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [(r["account"], r["status"], r["new"]) for r in out] == [("a", "Successful", 2)]
        mailbox.append("helpdesk", [message(3)])
        assert main(["--config", str(cfg.conf_dir), "fetch", "a"]) == 0
        text = capsys.readouterr().out
        assert "a (IMAPS): Successful: 1 fetched (1 new)" in text

    def test_fetch_skips_an_account_held_elsewhere(self, mailbox, poller_config, capsys):
        """While another process holds the account, fetch skips it and exits 75."""
        cfg = poller_config(account_toml(mailbox, "imaps"))
        engine = make_engine(cfg.database_url)
        lock = AccountLock(engine, cfg.state_dir / "run", "box")
        assert lock.acquire()
        try:
            assert main(["--config", str(cfg.conf_dir), "fetch", "box"]) == 75
            assert "another process" in capsys.readouterr().out
        finally:
            lock.release()
            engine.dispose()

    def test_unknown_account(self, mailbox, poller_config, capsys):
        """An account name that is not configured exits 67."""
        cfg = poller_config(account_toml(mailbox, "imaps"))
        assert main(["--config", str(cfg.conf_dir), "fetch", "nope"]) == 67

    def test_list_oversized_text_shows_the_limit(self, mailbox, poller_config, harness,
                                                  capsys):
        """`fetch --list-oversized` prints the max_message_size each message was left under."""
        mailbox.append("helpdesk", [message(1, size=30_000, subject="Huge")])
        cfg = poller_config(account_toml(mailbox, "imaps", max_message_size="10KB"))
        assert harness(cfg).poll().oversized == 1
        capsys.readouterr()
        assert main(["--config", str(cfg.conf_dir), "fetch", "--list-oversized"]) == 0
        header, row = capsys.readouterr().out.splitlines()
        columns = header.split()
        assert columns[columns.index("SIZE") + 1] == "LIMIT"
        assert row.split()[columns.index("LIMIT")] == "10000"
