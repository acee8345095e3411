"""XOAUTH2 against Dovecot's oauth2 passdb, with a local token + introspection endpoint."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from gateway.cli import main
from gateway.inbound.poller import state
from gateway.inbound.poller.idle import IdleWatcher
from gateway.store.tables import CommEntry
from tests.integration.poller.poller_helpers import account_toml, message
from tests.peers.serve import wait_for

pytestmark = pytest.mark.dovecot


def oauth_account(mailbox, server, type_="imaps", name="box", **oauth):
    cfg = {"token_url": server.url + "/token", "client_id": server.client_id,
           "client_secret": server.client_secret}
    cfg.update(oauth)
    return account_toml(mailbox, type_, name=name, oauth2=cfg)


class TestXOAuth2:
    def test_refresh_token_grant_and_cached_access_token(self, mailbox, oauth2_server,
                                                         poller_config, harness):
        """The refresh token buys an access token that is reused while it is valid."""
        rt = oauth2_server.new_refresh_token()
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt)))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        mailbox.append("helpdesk", [message(2)])
        assert h.poll().fetched == 1
        assert oauth2_server.token_requests == 1
        assert oauth2_server.introspections >= 2

    def test_expiring_token_is_refreshed_before_use(self, mailbox, oauth2_server,
                                                    poller_config, harness):
        """A short-lived access token is refreshed before it expires; the login succeeds."""
        oauth2_server.lifetime = 2
        rt = oauth2_server.new_refresh_token()
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt)))
        assert h.poll().status == "Successful"
        time.sleep(1.6)
        mailbox.append("helpdesk", [message(1)])
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert oauth2_server.token_requests == 2

    def test_rotated_refresh_token_is_persisted(self, mailbox, oauth2_server, poller_config,
                                                harness):
        """A rotated refresh token is stored and used by the next process; the old one is dead."""
        oauth2_server.rotate = True
        rt = oauth2_server.new_refresh_token()
        cfg = poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt))
        h = harness(cfg)
        assert h.poll().status == "Successful"
        with h.gw.engine.connect() as conn:
            stored, _ = state.stored_refresh_token(conn, "box")
        assert stored != rt and stored in oauth2_server.refresh_tokens
        assert rt not in oauth2_server.refresh_tokens
        h.close()
        mailbox.append("helpdesk", [message(1)])
        fresh = harness(cfg)            # a new process: no cached access token
        r = fresh.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert oauth2_server.token_requests == 2

    def test_rotated_refresh_token_the_database_does_not_take_is_kept(
            self, mailbox, oauth2_server, poller_config, harness, monkeypatch):
        """A rotated refresh token the database refuses to store is kept in memory, used
        for the next refresh and stored by the next run; a Warning without the token says so."""
        from sqlalchemy.exc import OperationalError

        oauth2_server.rotate = True      # the old refresh token is refused once redeemed
        oauth2_server.lifetime = 2
        rt = oauth2_server.new_refresh_token()
        store = state.store_refresh_token

        def locked(conn, account, token, fp):
            raise OperationalError("INSERT INTO poller_token ...", (account, token, fp),
                                   Exception("database is locked"))

        monkeypatch.setattr(state, "store_refresh_token", locked)
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt)))
        mailbox.append("helpdesk", [message(1)])
        r = h.poll()
        assert (r.status, r.fetched) == ("Warning", 1), r.error
        (new,) = oauth2_server.refresh_tokens
        with h.gw.engine.connect() as conn:
            assert state.stored_refresh_token(conn, "box") is None
            warns = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "Authentication", CommEntry.priority == "Warn")).scalars().all()
        assert len(warns) == 1 and "could not be stored" in warns[0], warns
        assert "authorise the account again" in warns[0]
        assert new not in warns[0] and rt not in warns[0]
        time.sleep(2.1)                  # the access token has expired: a refresh with `new`
        mailbox.append("helpdesk", [message(2)])
        r = h.poll()
        assert (r.status, r.fetched) == ("Warning", 1), r.error
        assert new not in oauth2_server.refresh_tokens     # redeemed, not the dead rt
        monkeypatch.setattr(state, "store_refresh_token", store)
        r = h.poll()                     # the database is back: stored by this run
        assert r.status == "Successful", r.error
        with h.gw.engine.connect() as conn:
            stored, _ = state.stored_refresh_token(conn, "box")
            infos = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "Authentication", CommEntry.priority == "Info",
                CommEntry.value.like("%kept in memory is stored now%"))).scalars().all()
        assert oauth2_server.refresh_tokens == {stored} and len(infos) == 1

    def test_refused_refresh_is_an_error_on_the_account(self, mailbox, oauth2_server,
                                                        poller_config, harness, capsys):
        """A refresh token the server refuses fails the run with an Error and account status."""
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(oauth_account(mailbox, oauth2_server,
                                                refresh_token="rt-revoked")))
        r = h.poll()
        assert r.status == "Failed" and "invalid_grant" in r.error
        assert "rt-revoked" not in r.error
        with h.gw.engine.connect() as conn:
            errs = conn.execute(select(CommEntry.value).where(
                CommEntry.priority == "Error")).scalars().all()
            st = state.account_status(conn, "box")[0]
        assert any("OAuth2 token refresh refused" in e and "account box" in e for e in errs)
        assert st.status == "Failed" and "invalid_grant" in st.last_error
        assert mailbox.count("helpdesk") == 1
        capsys.readouterr()
        assert main(["--config", str(h.gw.config.conf_dir), "fetch", "--status", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown[0]["status"] == "Failed" and "invalid_grant" in shown[0]["last_error"]

    def test_token_refused_by_the_server(self, mailbox, oauth2_server, poller_config, harness):
        """An access token the mail server's introspection calls inactive fails at auth."""
        oauth2_server.refused = True
        rt = oauth2_server.new_refresh_token()
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt)))
        r = h.poll()
        assert r.status == "Failed" and "Authentication" in r.error

    def test_client_credentials_over_pop3(self, mailbox, oauth2_server, poller_config,
                                          harness):
        """The client-credentials grant logs in to POP3 with XOAUTH2."""
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(oauth_account(mailbox, oauth2_server, type_="pop3s",
                                                grant="client_credentials", scope="mail")))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert mailbox.count("helpdesk") == 0

    def test_check_account_with_xoauth2(self, mailbox, oauth2_server, poller_config):
        """check_account logs in with XOAUTH2 and reports each step."""
        from gateway.inbound.poller.check import check_account

        rt = oauth2_server.new_refresh_token()
        cfg = poller_config(oauth_account(mailbox, oauth2_server, type_="imaptls",
                                          refresh_token=rt))
        res = check_account(cfg.account[0], cfg)
        assert res.ok and [s.ok for s in res.steps] == [True] * 5
        assert "XOAUTH2" in res.step("auth").detail

    def test_https_token_endpoint_is_verified(self, mailbox, oauth2_server, poller_config,
                                              harness):
        """An https token endpoint is verified: unknown CA refused, oauth2.tls_ca_file works."""
        import ssl

        from tests.peers.oauth2 import OAuth2Server

        cert = mailbox.ca.issue("tokens", hosts=("127.0.0.1",), filename="tokens")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        # Same token tables as the endpoint Dovecot asks, served over https.
        front = OAuth2Server(tls=ctx, refresh_tokens=oauth2_server.refresh_tokens,
                             access=oauth2_server.access)
        front.start()
        try:
            rt = oauth2_server.new_refresh_token()
            mailbox.append("helpdesk", [message(1)])
            h = harness(poller_config(
                oauth_account(mailbox, front, name="untrusted", refresh_token=rt),
                oauth_account(mailbox, front, name="trusted", refresh_token=rt,
                              tls_ca_file=str(mailbox.ca.ca_path))))
            bad = h.poll("untrusted")
            assert bad.status == "Failed" and "certificate not trusted" in bad.error
            good = h.poll("trusted")
            assert (good.status, good.fetched) == ("Successful", 1), good.error
        finally:
            front.stop()

    def test_refresh_token_rotated_by_another_process_is_picked_up(
            self, mailbox, oauth2_server, poller_config, harness):
        """A refresh token rotated by another process or node is used, not the dead one."""
        oauth2_server.rotate = True
        oauth2_server.lifetime = 2
        rt = oauth2_server.new_refresh_token()
        cfg = poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt))
        serve = harness(cfg)
        assert serve.poll().status == "Successful"
        other = harness(cfg)            # a second process on the same database
        assert other.poll().status == "Successful"
        time.sleep(1.6)                 # serve's access token has expired
        mailbox.append("helpdesk", [message(1)])
        r = serve.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        with serve.gw.engine.connect() as conn:
            stored, _ = state.stored_refresh_token(conn, "box")
        assert oauth2_server.refresh_tokens == {stored}


class TestOneRefreshAtATime:
    def test_idle_watcher_and_a_run_elsewhere_redeem_each_refresh_token_once(
            self, mailbox, oauth2_server, poller_config, harness, monkeypatch):
        """An IDLE watcher and another process's run refreshing at once: no token redeemed twice."""
        oauth2_server.rotate = True     # a used refresh token is refused from then on
        rt = oauth2_server.new_refresh_token()
        answers: list[int] = []
        redeem = oauth2_server._token

        def slow(form):
            time.sleep(0.5)             # both refreshes are under way at the same time
            code, body = redeem(form)
            answers.append(code)
            return code, body

        monkeypatch.setattr(oauth2_server, "_token", slow)
        cfg = poller_config(oauth_account(mailbox, oauth2_server, refresh_token=rt))
        serve, fetch = harness(cfg), harness(cfg)      # two processes, one database
        acc = cfg.account_by_name("box")
        watcher = IdleWatcher(acc, cfg.root, lambda: None,
                              serve.poller.token_source(acc).get)
        mailbox.append("helpdesk", [message(1)])
        watcher.start()
        try:
            r = fetch.poll()
            assert (r.status, r.fetched) == ("Successful", 1), r.error
            assert wait_for(watcher.idling.is_set, 15)
        finally:
            watcher.stop()
        assert answers == [200, 200]
        with serve.gw.engine.connect() as conn:
            stored, _ = state.stored_refresh_token(conn, "box")
        assert oauth2_server.refresh_tokens == {stored}
