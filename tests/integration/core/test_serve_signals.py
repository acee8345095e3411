"""`deskgate serve` with pre-forked LMTP workers stops cleanly whenever the
SIGTERM comes, even while it is still starting: no worker is left behind."""

from __future__ import annotations

import os
import signal
import time

from tests.peers.serve import alive, children_of, start_serve


class TestServeSignals:
    def test_sigterm_during_startup_leaves_no_worker(self, make_confdir):
        """SIGTERM as soon as the worker is forked: the main process exits 0 and
        takes its workers with it (none keeps serving as an orphan)."""
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 2\n"})
        proc = start_serve(conf)
        workers: list[int] = []
        try:
            deadline = time.monotonic() + 30
            while not workers and time.monotonic() < deadline and proc.poll() is None:
                workers = children_of(proc.pid)
                time.sleep(0.005)
            assert workers, "no worker was forked"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            deadline = time.monotonic() + 20
            while any(alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [w for w in workers if alive(w)]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for w in workers:        # the test's own grandchildren, by PID
                if alive(w):
                    os.kill(w, signal.SIGKILL)
        assert left == []
