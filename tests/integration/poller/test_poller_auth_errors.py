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
