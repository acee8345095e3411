"""The dashboard's login sessions (gateway.web.auth.Sessions) and their CSRF tokens."""

from __future__ import annotations

import dataclasses

from gateway.config.sections import DashboardConfig, DashboardUser
from gateway.config.values import Secret
from gateway.web.auth import Sessions, csrf_ok, login_proof, session_current


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestSessions:
    def test_each_session_has_its_own_token(self):
        """Two logins of one user: different ids and CSRF tokens; each token is good only
        in its own session, and not once the session ended."""
        s = Sessions()
        a, b = s.new("root", "p"), s.new("root", "p")
        assert a.id != b.id and a.csrf != b.csrf and len(a.csrf) == 64
        assert csrf_ok(a, a.csrf) and not csrf_ok(b, a.csrf)
        assert not csrf_ok(a, "") and not csrf_ok(None, a.csrf)
        s.end(a.id)
        assert s.get(a.id) is None and s.get(b.id) is b

    def test_idle_sessions_end_and_use_keeps_them(self):
        clock = Clock()
        s = Sessions(clock=clock)
        a = s.new("root", "p")
        clock.now += Sessions.IDLE - 1
        assert s.get(a.id) is a
        clock.now += Sessions.IDLE - 1                 # used a moment ago: still there
        assert s.get(a.id) is a
        clock.now += Sessions.IDLE + 1
        assert s.get(a.id) is None and len(s) == 0

    def test_bounded_least_recently_used_go_first(self):
        s = Sessions(size=3)
        a, b, c = s.new("a", ""), s.new("b", ""), s.new("c", "")
        assert s.get(a.id) is a
        s.new("d", "")
        assert len(s) == 3 and s.get(b.id) is None and s.get(a.id) is a
        assert s.get(c.id) is c

    def test_session_stands_on_its_credential(self):
        """A new password hash, a removed user or a new token ends the sessions they
        opened; others stay."""
        user = DashboardUser(name="root", password_hash="h1", role="admin")
        d = DashboardConfig(token=Secret("t1"), user=(user,))
        s = Sessions()
        by_user = s.new("root", login_proof(d, "root"))
        by_token = s.new("", login_proof(d, ""))
        assert session_current(d, by_user) and session_current(d, by_token)
        new_hash = dataclasses.replace(d, user=(dataclasses.replace(user, password_hash="h2"),))
        assert not session_current(new_hash, by_user) and session_current(new_hash, by_token)
        assert not session_current(dataclasses.replace(d, user=()), by_user)
        assert not session_current(dataclasses.replace(d, token=Secret("t2")), by_token)
