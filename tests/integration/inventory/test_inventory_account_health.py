"""`accounts list` reads the health the real poller wrote into the communication log."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.config import load_config
from gateway.inbound.poller.run import Poller
from tests.integration.inventory.conftest import account_toml

pytestmark = pytest.mark.dovecot


class TestAccountHealthFromPoller:
    def test_status_and_last_poll_after_real_polls(self, mailbox, make_confdir, capsys):
        """A working account is ok with a successful last poll; one with a wrong password
        shows permanent connection errors and a failed last poll; no secret is printed."""
        mailbox.append("helpdesk", [(f"From: c@customer.test\r\nTo: support@example.org\r\n"
                                     f"Subject: h{n}\r\nMessage-ID: <h{n}@c.test>\r\n\r\nx\r\n"
                                     ).encode() for n in range(2)])
        conf = make_confdir({"50-accounts.toml": account_toml(mailbox, "imaps") +
                             account_toml(mailbox, "pop3s", name="badpw",
                                          password="wrong-password")})
        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            poller = Poller(gw)
            for name in ("box", "box", "badpw"):
                acc = gw.config.account_by_name(name)
                assert acc is not None
                asyncio.run(poller.poll(acc, trigger="manual"))
        finally:
            gw.close()

        capsys.readouterr()
        assert main(["--config", str(conf), "accounts", "list", "--json"]) == 0
        out = capsys.readouterr().out
        rows = {r["name"]: r for r in json.loads(out)}
        assert rows["box"]["status"] == "ok"
        assert rows["box"]["last_result"] == "Successful"
        assert rows["box"]["connections_ok"] == 2
        assert rows["box"]["last_poll"]
        assert rows["badpw"]["status"] == "permanent connection errors"
        assert rows["badpw"]["last_result"] == "Failed"
        assert "wrong-password" not in out and '"secret"' not in out
