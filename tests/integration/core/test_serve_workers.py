"""`deskgate serve` as a process: pre-forked LMTP workers, reload and graceful stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select

from gateway.store.tables import Ticket
from tests.peers.lmtp import LmtpClient

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


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


class TestServeWorkers:
    def test_two_workers_serve_reload_and_stop(self, make_confdir):
        """workers = 2 forks a second LMTP process; every message is stored once;
        SIGHUP reloads both; SIGTERM stops them all."""
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 2\n"
                             "[dashboard]\nlisten = \"\"\n"})
        root = conf.parent
        sock = root / "var" / "run" / "lmtp.sock"
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                 "serve"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ,
                                                                "PYTHONPATH": str(ROOT)})
        workers: list[int] = []
        try:
            assert wait_for(lambda: sock.exists() and len(children_of(proc.pid)) >= 1)
            workers = children_of(proc.pid)
            time.sleep(0.5)
            for n in range(6):
                c = LmtpClient(sock)
                c.lhlo()
                for k in range(5):
                    msg = (f"From: a@c.test\r\nTo: support@example.org\r\nSubject: w{n}-{k}\r\n"
                           f"Message-ID: <w{n}-{k}@c>\r\n\r\nbody\r\n").encode()
                    _, data = c.transaction("a@c.test", ["support@example.org"], msg)
                    assert data[0][0] == 250
                c.close()
            proc.send_signal(signal.SIGHUP)
            time.sleep(1)
            assert proc.poll() is None and all(Path(f"/proc/{w}").exists() for w in workers)
            engine = create_engine(f"sqlite:///{root}/var/deskgate.db")
            with engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(Ticket)).scalar() == 30
            engine.dispose()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in workers:          # never leave a forked worker behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
