"""Counts in the poller's texts: "1 message", not "1 messages"."""

from __future__ import annotations

import pytest

from gateway.config import load_config

ACCOUNT = """
[[account]]
name = "box"
type = "pop3s"
host = "pop.example.org"
login = "helpdesk"
password = "pw"
"""


class TestCounts:
    @pytest.mark.parametrize(("n", "text"), [(0, "0 messages"), (1, "1 message"),
                                             (2, "2 messages")])
    def test_plural(self, n, text):
        from gateway.inbound.poller.session import plural

        assert plural(n, "message") == text

    def test_check_names_one_message_in_the_singular(self, make_confdir, monkeypatch):
        """`deskgate accounts check`: "maildrop: 1 message", not "1 messages"."""
        from gateway.inbound.poller import check
        from gateway.inbound.poller.pop3 import Pop3Session

        cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT}))
        monkeypatch.setattr(check, "resolve", lambda host, port: ["192.0.2.1"])
        for name in ("connect", "authenticate", "finish", "abort"):
            monkeypatch.setattr(Pop3Session, name, lambda self: None)
        monkeypatch.setattr(Pop3Session, "select", lambda self: 1)
        res = check.check_account(cfg.account_by_name("box"), cfg)
        assert res.ok, res.as_dict()
        assert res.step("folder").detail == "maildrop: 1 message"
