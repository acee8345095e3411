"""The dashboard's per-address limit on failed logins (gateway.web.auth.LoginThrottle)."""

from __future__ import annotations

from gateway.web.auth import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(t: LoginThrottle, addr: str, n: int = 1) -> None:
    for _ in range(n):
        assert t.begin(addr) == 0
        t.end(addr, ok=False)


class TestLoginThrottle:
    def test_first_failures_are_free_then_the_wait_doubles(self):
        """FREE failures cost nothing; each one after makes the address wait twice as
        long before its next try (1, 2, 4 ... s), up to MAX_WAIT."""
        clock = Clock()
        t = LoginThrottle(clock=clock)
        fail(t, "192.0.2.1", LoginThrottle.FREE - 1)
        assert t.begin("192.0.2.1") == 0
        t.end("192.0.2.1", ok=False)                 # the FREE-th failure
        assert t.begin("192.0.2.1") == 1             # wait 1 s, nothing checked
        clock.now += 1
        fail(t, "192.0.2.1")
        assert t.begin("192.0.2.1") == 2
        for _ in range(20):
            clock.now += LoginThrottle.MAX_WAIT
            fail(t, "192.0.2.1")
        assert t.begin("192.0.2.1") == LoginThrottle.MAX_WAIT
        assert t.begin("198.51.100.7") == 0          # other addresses are not affected

    def test_success_and_quiet_time_forget_failures(self):
        clock = Clock()
        t = LoginThrottle(clock=clock)
        fail(t, "a", LoginThrottle.FREE - 1)
        assert t.begin("a") == 0
        t.end("a", ok=True)
        fail(t, "a", LoginThrottle.FREE - 1)         # counted from 0 again: still free
        assert t.begin("a") == 0
        t.end("a", ok=False)
        assert t.begin("a") > 0
        clock.now += LoginThrottle.FORGET + 1
        assert t.begin("a") == 0

    def test_one_check_at_a_time_once_limited(self):
        """Past the free failures an address gets one check at a time: parallel
        requests when its wait ends do not each get a guess."""
        clock = Clock()
        t = LoginThrottle(clock=clock)
        fail(t, "a", LoginThrottle.FREE)
        clock.now += 1
        assert t.begin("a") == 0
        assert t.begin("a") > 0                      # the first is still being checked
        t.end("a", ok=False)
        assert t.begin("a") == 2

    def test_table_is_bounded(self):
        clock = Clock()
        t = LoginThrottle(clock=clock, size=100)
        for i in range(1000):
            fail(t, f"10.0.{i // 256}.{i % 256}")
        assert len(t) <= 100


class TestClientKey:
    def test_ipv6_counts_per_64_and_ipv4_per_address(self):
        """One IPv6 host usually has a whole /64: its addresses share one count, as
        they would when it rotated through them; IPv4 addresses count one by one."""
        from gateway.web.auth import client_key

        assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
        assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
        assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1")
        assert client_key("192.0.2.1") != client_key("192.0.2.2")
        assert client_key(None) == client_key("") == ""
        assert client_key("not an address") == "not an address"
