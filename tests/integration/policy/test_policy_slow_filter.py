"""A catastrophic filter pattern running to its time budget must not stall the
event loop: while hostile mail is being evaluated over LMTP, a normal message on
another connection is answered at once (real sockets, a real gateway)."""

from __future__ import annotations

import threading
import time

from gateway.config import load_config
from tests.peers.lmtp import LmtpClient

# Five filters with a pattern that backtracks exponentially on "aaaa…!": each runs
# to filter_timeout, the message to its whole budget (5 x 200 ms = 1 s).
SLOW_POLICY = "".join(f"""
[[filter]]
name = "slow-{i}"
match = [{{ header = "Subject", value = "(a|aa)+$" }}]
set = {{ "X-Deskgate-Queue" = "Support" }}
""" for i in range(5))
HOSTILE = "a" * 40 + "!"


def _message(subject: str, n: int) -> bytes:
    return (f"From: c@customer.test\r\nTo: support@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <slow-{n}-{time.monotonic_ns()}@customer.test>\r\n\r\nbody\r\n"
            ).encode()


class TestSlowFilterDoesNotStallLoop:
    def test_normal_message_answered_while_hostile_ones_are_evaluated(self, make_confdir,
                                                                       run_gateway):
        """Three connections keep sending subjects that make the filters run to their
        budget; a normal message on a fourth connection still gets 250 in well
        under a second, and the hostile ones are stored too (timed out = no match)."""
        conf = make_confdir({"60-pm.toml": "[postmaster]\nfilter_timeout = \"200ms\"\n"},
                            policies={"010-slow.toml": SLOW_POLICY})
        rg = run_gateway(load_config(conf))
        stop = threading.Event()
        hostile_codes: list[int] = []
        started = threading.Barrier(4)

        def hostile(k: int) -> None:
            c = LmtpClient(rg.socket_path, timeout=60)
            c.lhlo()
            started.wait()
            n = 0
            while not stop.is_set():
                _, data = c.transaction("c@customer.test", ["support@example.org"],
                                        _message(HOSTILE, k * 1000 + n))
                hostile_codes.append(data[0][0])
                n += 1
            c.close()

        threads = [threading.Thread(target=hostile, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            started.wait()
            time.sleep(0.5)                 # the hostile messages are in the filters now
            c = LmtpClient(rg.socket_path, timeout=60)
            c.lhlo()
            took = []
            for n in range(3):
                t0 = time.monotonic()
                _, data = c.transaction("c@customer.test", ["support@example.org"],
                                        _message("printer broken", n))
                took.append(time.monotonic() - t0)
                assert data[0][0] == 250
            c.close()
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert max(took) < 1.0, took
        assert hostile_codes and set(hostile_codes) == {250}
