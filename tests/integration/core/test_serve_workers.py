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
from tests.peers.serve import (
    ROOT,
    children_of,
    commit_process_of,
    lmtp_workers_of,
    served_by,
    start_serve,
    wait_for,
)


class TestServeWorkers:
    def test_two_workers_serve_reload_and_stop(self, make_confdir):
        """workers = 2 forks a second LMTP process; every message is stored once;
        SIGHUP reloads both; SIGTERM stops them all."""
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 2\n"
                             "[dashboard]\nlisten = \"\"\n"})
        root = conf.parent
        sock = root / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        workers: list[int] = []
        try:
            assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) >= 1
                            and len(commit_process_of(proc.pid)) == 1)
            workers = children_of(proc.pid)     # the LMTP worker and the commit process
            assert len(workers) == 2
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


DESK = ('[[queue]]\nname = "Desk"\naddress = "desk@example.org"\n'
        'auto_response_new = "We opened {ticket_number}.\\n"\n'
        '[[address]]\nemail = "desk@example.org"\nqueue = "Desk"\n')


def desk_mail(i: int) -> bytes:
    return (f"From: c{i}@customer.test\r\nTo: desk@example.org\r\nSubject: help {i}\r\n"
            f"Message-ID: <aw{i}@c>\r\n\r\nbody\r\n").encode()


class TestSenderWakeUp:
    """The outbound sender polls every relay.poll_interval (60 s here); SIGUSR1 and
    the LMTP workers' auto-responses wake it at once."""

    def _conf(self, make_confdir, port: int, workers: int) -> Path:
        from tests.integration.outbound.conftest import outbound_toml

        relay = outbound_toml(port).replace('poll_interval = "200ms"', 'poll_interval = "60s"')
        return make_confdir({
            "40-outbound.toml": relay,
            "50-workers.toml": f"[lmtp]\nworkers = {workers}\n[dashboard]\nlisten = \"\"\n",
            "60-desk.toml": DESK})

    def test_auto_response_queued_by_a_worker_goes_out_at_once(self, make_confdir):
        from tests.peers.smarthost import AuthSink

        sink = AuthSink().start()
        conf = self._conf(make_confdir, sink.port, workers=2)
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        idle: list[LmtpClient] = []
        try:
            assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) >= 1)
            (worker,) = lmtp_workers_of(proc.pid)
            time.sleep(3)        # the sender's first poll is over: only a wake-up helps now
            client = None
            for _ in range(40):  # connect until the worker (not the main process) serves
                c = LmtpClient(sock)
                if served_by(c) == worker:
                    client = c
                    break
                idle.append(c)   # kept open: the main process accepts the next more slowly
            assert client is not None, "no connection reached the LMTP worker"
            client.lhlo()
            _, data = client.transaction("c1@customer.test", ["desk@example.org"], desk_mail(1))
            assert data[0][0] == 250
            client.close()
            assert wait_for(lambda: len(sink.received) == 1, 20), \
                "the worker's auto-response waited for the sender's poll"
            assert sink.received[0].rcpts == ["c1@customer.test"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            for c in idle:
                c.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sink.stop()

    def test_sigusr1_makes_the_sender_look_now(self, make_confdir):
        """A message queued by another process (`deskgate send`) goes out on SIGUSR1."""
        from tests.peers.smarthost import AuthSink

        sink = AuthSink().start()
        conf = self._conf(make_confdir, sink.port, workers=1)
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(sock.exists)
            time.sleep(3)
            msg = (b"From: desk@example.org\r\nTo: someone@customer.test\r\n"
                   b"Subject: hello\r\n\r\nHi\r\n")
            r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "send",
                                "--queue", "Desk"], input=msg, cwd=ROOT, capture_output=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
            assert r.returncode == 0, r.stderr
            time.sleep(2)
            assert sink.received == []      # not before its poll (60 s) ...
            proc.send_signal(signal.SIGUSR1)
            assert wait_for(lambda: len(sink.received) == 1, 20)   # ... or a SIGUSR1
            assert sink.received[0].rcpts == ["someone@customer.test"]
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sink.stop()


class TestOrphans:
    def test_workers_stop_when_the_main_process_is_killed(self, make_confdir):
        """SIGKILL (or the OOM killer) on the main process: its LMTP workers stop too
        instead of serving on as orphans."""
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 3\n"
                             "[dashboard]\nlisten = \"\"\n"})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        workers: list[int] = []
        try:
            # two LMTP workers and the commit process
            assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) >= 2
                            and len(commit_process_of(proc.pid)) == 1)
            workers = children_of(proc.pid)
            assert len(workers) == 3
            time.sleep(0.5)
            proc.kill()
            proc.wait()
            assert wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for w in workers:            # only our own workers, should the test fail
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w, signal.SIGKILL)
