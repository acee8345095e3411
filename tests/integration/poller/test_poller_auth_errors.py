"""What a mail administrator reads when a login or an OAuth2 token is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.inbound.poller.check import check_account
from gateway.store.tables import CommEntry
from tests.integration.poller.poller_helpers import account_toml, message

pytestmark = pytest.mark.dovecot


def oauth_account(mailbox, server, type_="imaps", name="box", **oauth):
    cfg = {"token_url": server.url + "/token", "client_id": server.client_id,
           "client_secret": server.client_secret}
    cfg.update(oauth)
    return account_toml(mailbox, type_, name=name, oauth2=cfg)


class TestXOAuth2Refused:
    @pytest.mark.parametrize("type_", ["imaps", "pop3s"])
    def test_refused_access_token_names_the_servers_xoauth2_error(
            self, type_, mailbox, oauth2_server, poller_config, harness):
        """Dovecot answers a token it does not accept with a base64 JSON challenge
        ({"status":"401",...}), which is answered with an empty line, then NO/-ERR: the
        error says the access token was refused and gives the server's status, and
        names neither the access token nor the refresh token or client secret."""
        oauth2_server.refused = True
        rt = oauth2_server.new_refresh_token()
        mailbox.append("helpdesk", [message(1)])
        cfg = poller_config(oauth_account(mailbox, oauth2_server, type_=type_,
                                          refresh_token=rt))
        res = check_account(cfg.account[0], cfg)
        detail = res.step("auth").detail
        assert res.step("auth").ok is False
        assert "access token" in detail and "status 401" in detail, detail
        h = harness(cfg)
        r = h.poll()
        assert r.status == "Failed"
        assert "access token" in r.error and "status 401" in r.error, r.error
        with h.gw.engine.connect() as conn:
            entries = conn.execute(select(CommEntry.value)).scalars().all()
        err = [e for e in entries if "status 401" in e]
        assert err and "account box" in err[0]
        tokens = list(oauth2_server.access)
        for text in [detail, r.error, *entries]:
            assert rt not in text and oauth2_server.client_secret not in text
            assert not any(t in text for t in tokens)
        assert mailbox.count("helpdesk") == 1


class TestCachedTokenRefused:
    @pytest.mark.parametrize("type_", ["imaps", "pop3s"])
    def test_cached_token_refused_is_renewed_once(self, type_, mailbox, oauth2_server,
                                                  poller_config, harness):
        """The cached access token is used while it lives by the expires_in of the token
        endpoint (an hour when it sends none); a token the mail server no longer accepts
        before that (revoked, or shorter-lived than assumed) is replaced by a new one and
        the login tried once more on the same connection: the run succeeds, with a
        Notice, instead of failing until the back-off ends."""
        rt = oauth2_server.new_refresh_token()
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, type_=type_,
                                                refresh_token=rt)))
        assert h.poll().status == "Successful"
        assert oauth2_server.token_requests == 1
        with oauth2_server.lock:
            oauth2_server.access.clear()       # the server forgets (revokes) the token
        mailbox.append("helpdesk", [message(1)])
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert oauth2_server.token_requests == 2
        with h.gw.engine.connect() as conn:
            notes = conn.execute(select(CommEntry.value).where(
                CommEntry.priority == "Notice",
                CommEntry.communication_id == r.communication_id)).scalars().all()
        assert any("access token" in n and "new one" in n for n in notes), notes
        assert h.poll().status == "Successful"
        assert oauth2_server.token_requests == 2     # the new one is cached in turn

    def test_fresh_token_refused_is_not_renewed(self, mailbox, oauth2_server, poller_config,
                                                harness):
        """A token fetched for this very login that the server refuses fails the run at
        once: no second token, no second login attempt."""
        oauth2_server.refused = True
        rt = oauth2_server.new_refresh_token()
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt)))
        assert h.poll().status == "Failed"
        assert oauth2_server.token_requests == 1


class TestStatusShowsTheWholeError:
    def test_fetch_status_prints_the_last_error_in_full(self, mailbox, poller_config, harness,
                                                        capsys):
        """`fetch --status` is where the last error is read: the server's answer at the
        end of a long reason is not cut off in the text table (nor the password shown)."""
        from gateway.cli import main

        cfg = poller_config(account_toml(mailbox, "imaps", password="Wr0ng-Passw0rd"))
        assert harness(cfg).poll().status == "Failed"
        capsys.readouterr()
        assert main(["--config", str(cfg.conf_dir), "fetch", "--status"]) == 0
        out = capsys.readouterr().out
        line = next(ln for ln in out.splitlines() if ln.startswith("box "))
        assert line.endswith("Authentication: login as helpdesk refused: "
                             "[AUTHENTICATIONFAILED] Authentication failed."), out
        assert "Wr0ng-Passw0rd" not in out
