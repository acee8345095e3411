"""Logging in to the dashboard over HTTP: a clear refusal that does not say which part
was wrong, and a per-address limit on failed logins."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.integration.admin.conftest import ADMIN, VIEWER, basic


class TestLogin:
    def test_wrong_login_says_so_without_saying_which_part(self, admin_dashboard):
        """A wrong password, an unknown user and a wrong token get the same 401 and the
        same text, which says the login failed; no credentials at all get the prompt."""
        d = admin_dashboard(extra='token = "t0ken-t0ken"\n')
        status, none = d.request("/log", user=None)
        assert status == 401 and "required" in none
        answers = {d.request("/log", user=(ADMIN[0], "wrong"))[1],
                   d.request("/log", user=("nobody", ADMIN[1]))[1]}
        assert len(answers) == 1, answers
        text = answers.pop()
        assert "wrong user name or password" in text
        assert "unknown" not in text and ADMIN[0] not in text
        status, body = d.request("/log", user=None, headers={"Authorization": "Bearer nope"})
        assert status == 401 and "wrong" in body
        assert d.request("/log", user=ADMIN)[0] == 200

    def test_failed_logins_slow_an_address_down(self, admin_dashboard, monkeypatch):
        """After the free failed logins the address gets 503 with Retry-After, the
        credentials unchecked (the right password too, or the limit would tell the
        right one); once the wait is over the right password logs in, and that clears
        the count."""
        from gateway.web.auth import LoginThrottle

        # a long wait, so that a slow machine cannot outlast it; the waits themselves
        # are the unit tests' business
        monkeypatch.setattr(LoginThrottle, "_wait",
                            lambda self, n: 30.0 if n >= self.FREE else 0.0)
        d = admin_dashboard()
        for _ in range(LoginThrottle.FREE):
            assert d.request("/log", user=(VIEWER[0], "guess"))[0] == 401
        status, body = d.request("/log", user=ADMIN)
        assert status == 503 and "too many failed logins" in body, body
        req = urllib.request.Request(d.base + "/log",  # noqa: S310 - loopback
                                     headers=basic((VIEWER[0], "guess")))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)  # noqa: S310 - loopback
        assert refused.value.code == 503
        assert 25 <= int(refused.value.headers["Retry-After"]) <= 30
        monkeypatch.setattr(LoginThrottle, "_wait", lambda self, n: 0.0)   # waited
        assert d.request("/log", user=ADMIN)[0] == 200
        for _ in range(LoginThrottle.FREE - 1):       # counted from 0 again
            assert d.request("/log", user=(VIEWER[0], "guess"))[0] == 401
        assert d.request("/log", user=VIEWER)[0] == 200
        assert d.request("/log", user=None)[0] == 401   # no credentials: not a failure
        assert d.request("/healthz", user=None)[0] == 200
