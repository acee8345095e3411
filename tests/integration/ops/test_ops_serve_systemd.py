"""`deskgate serve` under a notify socket (Type=notify), reload, graceful stop, and the
systemd unit files checked by systemd's own tools."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.ops.ops_web import message
from tests.peers.lmtp import LmtpClient
from tests.peers.require import missing_peer
from tests.peers.serve import lmtp_workers_of

REPO = Path(__file__).resolve().parents[3]
SYSTEMD = REPO / "systemd"


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def wait_for(self, state: str) -> list[str]:
        """Messages received until one containing `state` (all of them, in order)."""
        got: list[str] = []
        while True:
            msg = self.sock.recv(4096).decode()
            got.append(msg)
            if state in msg.split("\n"):
                return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(make_confdir, tmp_path):
    """Run `python -m gateway serve` as a child process with NOTIFY_SOCKET set."""
    procs: list[subprocess.Popen[bytes]] = []
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    conf = make_confdir({"60-serve.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'})
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONPATH": str(REPO)}
    logf = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf), "serve"],
                            cwd=tmp_path, env=env, stdout=logf, stderr=subprocess.STDOUT)
    procs.append(proc)
    yield proc, notify, conf, port, tmp_path / "serve.log"
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    notify.close()
    logf.close()


class TestServeNotify:
    def test_ready_reload_stop(self, served):
        """READY=1 once listening; SIGHUP → RELOADING=1 then READY=1; SIGTERM → STOPPING=1
        and a clean exit after the listeners closed."""
        proc, notify, conf, port, logpath = served
        msgs = notify.wait_for("READY=1")
        assert any(f"MAINPID={proc.pid}" in m for m in msgs)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert json.loads(r.read())["ok"] is True
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        c = LmtpClient(sock)
        c.lhlo()
        _, data = c.transaction("a@customer.test", ["support@example.org"], message(1))
        c.close()
        assert [d[0] for d in data] == [250]

        proc.send_signal(signal.SIGHUP)
        msgs = notify.wait_for("READY=1")
        assert any("RELOADING=1" in m for m in msgs)
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        msgs = notify.wait_for("STOPPING=1")
        assert proc.wait(60) == 0, logpath.read_text()
        assert not (conf.parent / "var" / "run" / "deskgate.pid").exists()


class TestGracefulStop:
    def test_message_in_flight_is_committed_before_exit(self, config, run_gateway):
        """A stop while a message is in the pipeline waits for its commit and its 250."""
        import asyncio

        entered = threading.Event()

        def slow(ctx, rt, conn):
            entered.set()
            time.sleep(1.0)

        rg = run_gateway(config)
        rg.gateway.pipeline.stages = rg.gateway.pipeline.stages.with_stage("commit",
                                                                           "test-slow", slow)
        result: dict[str, object] = {}

        def send() -> None:
            c = LmtpClient(rg.socket_path)
            c.lhlo()
            result["data"] = c.transaction("a@customer.test", ["support@example.org"],
                                           message(7))[1]
            c.close()

        t = threading.Thread(target=send)
        t.start()
        assert entered.wait(30)
        assert rg.gateway.inflight == 1
        fut = asyncio.run_coroutine_threadsafe(rg.gateway.wait_idle(30), rg.loop)
        assert fut.result(30) is True
        t.join(30)
        assert [d[0] for d in result["data"]] == [250]
        assert rg.gateway.inflight == 0


class TestUnitFiles:
    def test_systemd_analyze_verify(self, tmp_path):
        """systemd-analyze verify accepts deskgate.service (ExecStart pointed at this
        checkout's interpreter, since /usr/bin/deskgate is not installed here)."""
        if not shutil.which("systemd-analyze"):
            missing_peer("systemd-analyze is not installed (Debian package systemd)")
        text = (SYSTEMD / "deskgate.service").read_text()
        for needed in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID",
                       "ProtectSystem=strict", "StateDirectory=deskgate",
                       "RuntimeDirectory=deskgate", "NoNewPrivileges=yes", "PrivateTmp=yes",
                       "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "User=deskgate"):
            assert needed in text
        unit = tmp_path / "deskgate.service"
        unit.write_text(text.replace("/usr/bin/deskgate", f"{sys.executable} -m gateway"))
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert "deskgate.service" not in r.stderr, r.stderr

    def test_sysusers_and_tmpfiles(self, tmp_path):
        """systemd-sysusers creates the deskgate user and systemd-tmpfiles its directories
        (both run against a scratch root, not this machine)."""
        if not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")):
            missing_peer("systemd-sysusers/systemd-tmpfiles are not installed")
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "deskgate.sysusers")],
                       check=True, capture_output=True, timeout=60)
        passwd = (root / "etc" / "passwd").read_text()
        assert "deskgate:x:" in passwd and "/usr/sbin/nologin" in passwd
        subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                        str(SYSTEMD / "deskgate.tmpfiles")], check=True, capture_output=True,
                       timeout=60)
        run = root / "run" / "deskgate"
        assert run.is_dir() and oct(run.stat().st_mode & 0o777) == "0o750"
        assert (root / "var" / "lib" / "deskgate").is_dir()


class TestWorkersMetrics:
    def test_counters_cover_prefork_workers(self, make_confdir, tmp_path):
        """With [lmtp] workers = 2 the LMTP counters at /metrics add up the messages of both
        processes (prometheus_client multi-process mode)."""
        from concurrent.futures import ThreadPoolExecutor

        from prometheus_client.parser import text_string_to_metric_families

        port = free_port()
        conf = make_confdir({"60-w.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                                          '[lmtp]\nworkers = 2\n'})
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["PYTHONPATH"] = str(REPO)
        logf = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                 "serve"], cwd=tmp_path, env=env, stdout=logf,
                                stderr=subprocess.STDOUT)
        try:
            sock = conf.parent / "var" / "run" / "lmtp.sock"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                timeout=5) as r:
                        if json.loads(r.read())["ok"]:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)

            def session(k: int) -> list[int]:
                c = LmtpClient(sock)
                c.lhlo()
                codes = []
                for j in range(3):
                    _, data = c.transaction("a@customer.test", ["support@example.org"],
                                            message(100 * k + j))
                    codes += [d[0] for d in data]
                c.close()
                return codes

            # The main process paused: the worker must take these connections.
            children = lmtp_workers_of(proc.pid)
            assert len(children) == 1, children
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                codes = session(0) + session(1)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            with ThreadPoolExecutor(6) as ex:
                codes += [c for cs in ex.map(session, range(2, 8)) for c in cs]
            assert codes == [250] * 24
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=10) as r:
                body = r.read().decode()
            total = sum(s.value for f in text_string_to_metric_families(body)
                        for s in f.samples if s.name == "deskgate_messages_total"
                        and s.labels.get("door") == "lmtp" and s.labels.get("result") == "new")
            files = sorted(p.name for p in (conf.parent / "var" / "run" / "metrics").iterdir())
            assert total == 24, (files, [ln for ln in body.splitlines() if "lmtp" in ln])
            assert f"counter_{children[0]}.db" in files
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                logf.close()
