"""Poller pieces without a server: config checks, UID sets, OAuth2 token caching."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.inbound.poller.imap import mutf7, quote, uid_set
from gateway.inbound.poller.oauth2 import TokenSource, fingerprint
from gateway.inbound.poller.run import envelope_for, pseudo_recipient

ACCOUNT = """
[[account]]
name = "m365"
type = "{type}"
host = "outlook.office365.com"
login = "helpdesk@example.org"
{extra}
[account.oauth2]
token_url = "{url}"
client_id = "abc"
{oauth}
"""


def load(make_confdir, **kw):
    values = {"type": "imaps", "extra": "", "url": "https://login.example/token",
              "oauth": 'refresh_token = "rt"'}
    values.update(kw)
    return load_config(make_confdir({"50-acc.toml": ACCOUNT.format(**values)}))


class TestConfig:
    def test_valid_oauth2_account(self, make_confdir):
        """An IMAPS account with a refresh token over https is accepted."""
        cfg = load(make_confdir)
        assert cfg.account[0].oauth2.client_id == "abc"

    @pytest.mark.parametrize(("kw", "key"), [
        ({"type": "imap"}, "account[0].type"),
        ({"url": "http://login.example/token"}, "account[0].oauth2.token_url"),
        ({"url": "ftp://x/y"}, "account[0].oauth2.token_url"),
        ({"oauth": ""}, "account[0].oauth2.refresh_token"),
        ({"oauth": 'grant = "client_credentials"'}, "account[0].oauth2.client_secret"),
        ({"extra": "reconnect_every = 0"}, "account[0].reconnect_every"),
        ({"extra": 'tls_ca_file = "missing.pem"'}, "account[0].tls_ca_file"),
    ])
    def test_invalid_accounts_name_the_key(self, make_confdir, kw, key):
        """Each mistake is reported with the dotted key."""
        with pytest.raises(ConfigErrors) as exc:
            load(make_confdir, **kw)
        assert key in [e.key for e in exc.value.errors]


class TestFolderOnPop3:
    """folder names an IMAP folder: POP3 serves one mailbox, so check refuses another."""

    @staticmethod
    def load(make_confdir, type_: str, folder: str):
        return load_config(make_confdir({"50-acc.toml": f"""
            [[account]]
            name = "legacy"
            type = "{type_}"
            host = "h"
            login = "l"
            password = "p"
            folder = "{folder}"
            """}))

    @pytest.mark.parametrize("type_", ["pop3s", "pop3tls"])
    def test_a_folder_on_a_pop3_account_is_refused(self, make_confdir, type_):
        """The error names the file, the key and why: the setting cannot take effect."""
        with pytest.raises(ConfigErrors) as exc:
            self.load(make_confdir, type_, "Tickets")
        [err] = [e for e in exc.value.errors if e.key == "account[0].folder"]
        assert err.file.endswith("50-acc.toml")
        assert "POP3 has no folders; folder applies to IMAP accounts" in err.reason

    def test_inbox_on_a_pop3_account_and_a_folder_on_imap_are_accepted(self, make_confdir):
        """folder = "INBOX" names the mailbox POP3 serves; IMAP takes any folder."""
        assert self.load(make_confdir, "pop3s", "inbox").account[0].type == "pop3s"
        assert self.load(make_confdir, "imaps", "Tickets").account[0].folder == "Tickets"


class TestHelpers:
    def test_mailbox_names_in_modified_utf7(self):
        """Non-ASCII folder names are sent in IMAP's modified UTF-7, & escaped."""
        assert mutf7("Entwürfe") == "Entw&APw-rfe"
        assert mutf7("日本語") == "&ZeVnLIqe-"
        assert quote('A&B "x"') == '"A&-B \\"x\\""'

    def test_uid_set_compresses_ranges(self):
        """Consecutive UIDs become ranges."""
        assert uid_set([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"

    def test_envelope_for_account(self, make_confdir):
        """The envelope carries source, account, trust, dispatch queue and pseudo-recipient."""
        cfg = load_config(make_confdir({"50-a.toml": """
            [[account]]
            name = "legacy"
            type = "pop3s"
            host = "h"
            login = "l"
            password = "p"
            dispatch = "queue"
            queue = "Sales"
            trusted = true
            """}))
        acc = cfg.account[0]
        env = envelope_for(acc, b"Return-Path: <bounce@x.test>\r\nSubject: a\r\n\r\nb\r\n")
        assert (env.source, env.account, env.trusted, env.dispatch_queue, env.mail_from) == (
            "POP3S", "legacy", True, "Sales", "bounce@x.test")
        assert env.recipients == (pseudo_recipient(acc),) == ("account:legacy",)


class TestTokenSource:
    def test_stored_token_wins_until_config_changes(self, make_confdir):
        """A rotated token in the database is used unless the config has a new one."""
        cfg = load(make_confdir)
        acc = cfg.account[0]
        ts = TokenSource(acc, cfg.root, lambda a: ("rt-rotated", fingerprint("rt")),
                         lambda *a: None)
        assert ts._current_refresh_token() == "rt-rotated"
        ts2 = TokenSource(acc, cfg.root, lambda a: ("rt-rotated", fingerprint("older")),
                          lambda *a: None)
        assert ts2._current_refresh_token() == "rt"

    def test_access_token_cached_until_margin(self, make_confdir, monkeypatch):
        """The access token is reused until its lifetime minus the margin has passed."""
        cfg = load(make_confdir)
        now = [1000.0]
        ts = TokenSource(cfg.account[0], cfg.root, lambda a: None, lambda *a: None,
                         clock=lambda: now[0])
        calls = []

        def post(form):
            calls.append(form)
            return {"access_token": f"at{len(calls)}", "expires_in": 3600}

        monkeypatch.setattr(ts, "_post", post)
        assert ts.get() == "at1"
        now[0] += 3500
        assert ts.get() == "at1"
        now[0] += 100
        assert ts.get() == "at2"
        assert calls[0]["grant_type"] == "refresh_token" and calls[0]["refresh_token"] == "rt"


class TestSchedule:
    async def test_failed_runs_back_off(self, make_confdir, monkeypatch):
        """Failed runs are retried after growing delays, and on the interval after a success."""
        import asyncio
        from types import SimpleNamespace

        from gateway.inbound.poller.run import RunResult
        from gateway.inbound.poller.scheduler import PollerService

        cfg = load(make_confdir, type="pop3s", extra='interval = "1s"')
        service = PollerService(SimpleNamespace(config=cfg))   # type: ignore[arg-type]
        statuses = ["Failed"] * 5 + ["Successful", "Failed"]
        delays: list[float] = []

        async def poll(acc, *, trigger):
            return RunResult(acc.name, acc.type, status=statuses[len(delays)])

        async def wait_for(aw, timeout):  # noqa: ASYNC109 - stands in for asyncio.wait_for
            aw.close()
            delays.append(timeout)
            if len(delays) == len(statuses):
                service.poller.stopping = True
            raise TimeoutError

        monkeypatch.setattr(service.poller, "poll", poll)
        monkeypatch.setattr(asyncio, "wait_for", wait_for)
        await service._loop(cfg.account[0])
        assert delays == [1, 2, 4, 8, 16, 1, 1]
