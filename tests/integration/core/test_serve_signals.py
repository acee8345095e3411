"""`deskgate serve` with pre-forked LMTP workers stops cleanly whenever the
SIGTERM comes, even while it is still starting: no worker is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class TestServeSignals:
    def test_sigterm_during_startup_leaves_no_worker(self, make_confdir):
        """SIGTERM as soon as the worker is forked: the main process exits 0 and
        takes its workers with it (none keeps serving as an orphan)."""
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 2\n"})
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                 "serve"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
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
