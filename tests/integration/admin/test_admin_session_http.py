"""The dashboard's login session over HTTP: the CSRF token belongs to one login (a new
one at each login, refused from another session or after logout), and a token in a
link is exchanged once for a session cookie and taken out of the address."""

from __future__ import annotations

import http.client
import re
import urllib.parse

from tests.integration.admin.conftest import ADMIN, VIEWER
from tests.integration.admin.test_admin_http import form


def raw(d, method: str, path: str, headers: dict[str, str] | None = None
        ) -> http.client.HTTPResponse:
    """One request without following redirects or keeping cookies."""
    u = urllib.parse.urlsplit(d.base)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


class TestCsrfPerSession:
    def test_each_login_has_its_own_token(self, admin_dashboard):
        """Two logins of the same user get different tokens, each stable within its
        session; one session's token is refused in the other (403, nothing written)."""
        d = admin_dashboard()
        first, second = d.csrf(session="first"), d.csrf(session="second")
        assert first != second
        assert d.csrf(session="first") == first
        before = d.digest()
        data = {**form(d, email="new@example.org"), "csrf": first}
        assert d.request("/admin/address", data=data, session="second")[0] == 403
        assert d.digest() == before
        status, html = d.request("/admin/address", data=data, session="first")
        assert status == 200, html
        assert d.digest() != before

    def test_token_from_before_logout_is_refused(self, admin_dashboard):
        """Logging out ends the session: its token is refused afterwards, even when the
        browser logs in again with the same password, which gets a new token."""
        d = admin_dashboard()
        old = d.csrf()
        status, html = d.request("/logout", data={"csrf": old})
        assert status == 200 and "Logged out" in html, html
        before = d.digest()
        data = {**form(d, email="new@example.org"), "csrf": old}
        assert d.request("/admin/address", data=data)[0] == 403
        assert d.digest() == before
        new = d.csrf()
        assert new != old
        assert d.request("/admin/address", data={**data, "csrf": new})[0] == 200

    def test_logout_needs_the_sessions_token(self, admin_dashboard):
        """A logout without the session's token (another page's POST) ends nothing."""
        d = admin_dashboard()
        token = d.csrf()
        assert d.request("/logout", data={"csrf": d.csrf(session="other")})[0] == 403
        assert d.request("/logout", data={})[0] == 403
        assert d.csrf() == token

    def test_pages_offer_logout(self, admin_dashboard):
        """Every page of a dashboard with credentials has the logout form in its header."""
        d = admin_dashboard()
        _, html = d.request("/log", user=VIEWER)
        assert re.search(r'<form method="post" action="/logout"[^>]*>\s*<input type="hidden" '
                         r'name="csrf" value="[0-9a-f]{64}">', html), html


class TestTokenInLink:
    def test_link_token_is_exchanged_for_a_cookie(self, admin_dashboard):
        """GET with ?token= answers 303 to the same address without the token and sets
        an HttpOnly, SameSite session cookie; with it the page opens and its links
        carry no token."""
        d = admin_dashboard(extra='token = "t0ken-t0ken"\n')
        resp = raw(d, "GET", "/log/list?status=Failed&token=t0ken-t0ken&page=1")
        assert resp.status == 303
        assert resp.getheader("Location") == "/log/list?status=Failed&page=1"
        cookie = resp.getheader("Set-Cookie") or ""
        assert "t0ken" not in cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        pair = cookie.split(";", 1)[0]
        status, html = d.request("/log/list?status=Failed&page=1", user=None,
                                 headers={"Cookie": pair})
        assert status == 200 and "t0ken" not in html
        assert d.request("/log", user=None)[0] == 401      # no cookie, no token

    def test_wrong_link_token_gets_no_cookie(self, admin_dashboard):
        d = admin_dashboard(extra='token = "t0ken-t0ken"\n')
        resp = raw(d, "GET", "/log?token=nope")
        assert resp.status == 401 and resp.getheader("Set-Cookie") is None

    def test_token_session_only_reads_and_logs_out(self, admin_dashboard):
        """The session a link token opens only reads, as the token does; logging out
        ends it."""
        d = admin_dashboard(extra='token = "t0ken-t0ken"\n')
        status, html = d.request("/log?token=t0ken-t0ken", user=None)
        assert status == 200 and "t0ken" not in html
        assert d.request("/admin/address", user=None)[0] == 403
        token = d.csrf(None, "/log")
        assert d.request("/logout", user=None, data={"csrf": token})[0] == 200
        assert d.request("/log", user=None)[0] == 401

    def test_metrics_answers_a_link_token_directly(self, admin_dashboard):
        """/metrics, which scrapers fetch without cookies, still answers ?token= itself."""
        d = admin_dashboard(extra='token = "t0ken-t0ken"\n')
        resp = raw(d, "GET", "/metrics?token=t0ken-t0ken")
        assert resp.status == 200

    def test_session_ends_when_the_password_changes(self, admin_dashboard):
        """A session stands on the password that opened it: after a reload with a new
        hash (or the user removed) its cookie no longer logs in."""
        import urllib.error
        import urllib.request

        from gateway.passwords import hash_password

        def cookie_only() -> int:
            req = urllib.request.Request(d.base + "/log")  # noqa: S310 - loopback
            try:
                return int(jar.open(req, timeout=30).status)
            except urllib.error.HTTPError as exc:
                return exc.code

        d = admin_dashboard()
        assert d.request("/log", user=VIEWER)[0] == 200
        jar = d.openers[(VIEWER, "main")]
        assert cookie_only() == 200
        path = d.conf / "60-dashboard.toml"
        text = path.read_text()
        old_hash = text.split('password_hash = "')[2].split('"')[0]       # the viewer's
        path.write_text(text.replace(old_hash, hash_password("new-pw", ln=10)))
        assert d.rg.call(d.rg.gateway.reload(), 60)
        assert cookie_only() == 401
        assert d.request("/log", user=ADMIN)[0] == 200
