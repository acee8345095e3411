"""The dashboard behind a reverse proxy over HTTP: with [dashboard] trusted_proxies the
client named in X-Forwarded-For has its own login limit, and the log and the
communication log name it; without, every client is the proxy."""

from __future__ import annotations

from structlog.testing import capture_logs

from gateway.web.auth import LoginThrottle
from tests.integration.admin.conftest import ADMIN, VIEWER
from tests.integration.admin.test_admin_http import change_log, form

PROXY = 'trusted_proxies = ["127.0.0.1", "::1"]\n'


def fwd(client: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"{client}, 127.0.0.1"}


def slow_down(d, client: str) -> None:
    """The free failed logins of `client` (forwarded through the proxy)."""
    for _ in range(LoginThrottle.FREE):
        assert d.request("/log", user=(VIEWER[0], "guess"), headers=fwd(client))[0] == 401


class TestTrustedProxies:
    def test_each_forwarded_client_has_its_own_login_limit(self, admin_dashboard,
                                                           monkeypatch):
        """One client's wrong passwords through the proxy make only that client wait;
        another client behind the same proxy logs in, and the log names the client."""
        monkeypatch.setattr(LoginThrottle, "_wait",
                            lambda self, n: 30.0 if n >= self.FREE else 0.0)
        d = admin_dashboard(extra=PROXY)
        with capture_logs() as logs:
            slow_down(d, "192.0.2.7")
        failed = [e for e in logs if e["event"] == "dashboard login failed"]
        assert failed and {e["client"] for e in failed} == {"192.0.2.7"}
        assert d.request("/log", user=ADMIN, headers=fwd("192.0.2.7"))[0] == 503
        assert d.request("/log", user=ADMIN, headers=fwd("198.51.100.9"))[0] == 200

    def test_forwarded_header_names_the_client_too(self, admin_dashboard, monkeypatch):
        """RFC 7239 Forwarded from the trusted proxy is honoured the same way."""
        monkeypatch.setattr(LoginThrottle, "_wait",
                            lambda self, n: 30.0 if n >= self.FREE else 0.0)
        d = admin_dashboard(extra=PROXY)
        for _ in range(LoginThrottle.FREE):
            assert d.request("/log", user=(VIEWER[0], "guess"),
                             headers={"Forwarded": 'for="[2001:db8::7]"'})[0] == 401
        assert d.request("/log", user=ADMIN,
                         headers={"Forwarded": 'for="[2001:db8::7]"'})[0] == 503
        assert d.request("/log", user=ADMIN, headers={"Forwarded": "for=192.0.2.1"})[0] == 200

    def test_untrusted_peer_x_forwarded_for_is_ignored(self, admin_dashboard, monkeypatch):
        """Without trusted_proxies (the default) a client cannot escape its limit by
        naming another address in X-Forwarded-For."""
        monkeypatch.setattr(LoginThrottle, "_wait",
                            lambda self, n: 30.0 if n >= self.FREE else 0.0)
        d = admin_dashboard()
        with capture_logs() as logs:
            slow_down(d, "192.0.2.7")
        assert {e["client"] for e in logs if e["event"] == "dashboard login failed"} \
            == {"127.0.0.1"}
        assert d.request("/log", user=ADMIN, headers=fwd("198.51.100.9"))[0] == 503

    def test_change_log_names_the_forwarded_client(self, admin_dashboard):
        """The communication-log entry of a configuration change says which client
        (behind the proxy) made it."""
        d = admin_dashboard(extra=PROXY)
        status, html = d.request("/admin/address", headers=fwd("192.0.2.7"), data=form(
            d, email="proxied@example.org", queue="Sales"))
        assert status == 200, html
        entries = change_log(d, 4)
        assert ("User", ADMIN[0]) in entries
        assert ("Client", "192.0.2.7") in entries

    def test_reload_applies_trusted_proxies(self, admin_dashboard, monkeypatch):
        """trusted_proxies added to the files takes effect with a reload."""
        monkeypatch.setattr(LoginThrottle, "_wait",
                            lambda self, n: 30.0 if n >= self.FREE else 0.0)
        d = admin_dashboard()
        path = d.conf / "60-dashboard.toml"
        path.write_text(path.read_text().replace("[dashboard]\n", "[dashboard]\n" + PROXY))
        assert d.rg.call(d.rg.gateway.reload(), 60)
        slow_down(d, "192.0.2.7")
        assert d.request("/log", user=ADMIN, headers=fwd("198.51.100.9"))[0] == 200

    def test_session_cookie_is_secure_behind_a_tls_proxy(self, admin_dashboard):
        """Behind a trusted proxy that says the browser uses https the session cookie
        is Secure (never sent over plain http); from anyone else's word it is not."""
        from tests.integration.admin.conftest import basic
        from tests.integration.admin.test_admin_session_http import raw

        d = admin_dashboard(extra=PROXY)
        resp = raw(d, "GET", "/log", {**basic(ADMIN), "X-Forwarded-Proto": "https"})
        assert resp.status == 200 and "Secure" in (resp.getheader("Set-Cookie") or "")

    def test_untrusted_peer_cannot_ask_for_secure(self, admin_dashboard):
        """Without trusted_proxies X-Forwarded-Proto is ignored: the cookie of a plain
        http dashboard is not Secure."""
        from tests.integration.admin.conftest import basic
        from tests.integration.admin.test_admin_session_http import raw

        d = admin_dashboard()
        resp = raw(d, "GET", "/log", {**basic(ADMIN), "X-Forwarded-Proto": "https"})
        cookie = resp.getheader("Set-Cookie")
        assert resp.status == 200 and cookie and "Secure" not in cookie
