"""A dashboard whose port is taken when `deskgate serve` starts: mail flows, the
startup line, /healthz and /metrics report it as not running, and `reload` binds
it once the port is free (a real serve process, a real occupied port)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.conftest import free_port
from tests.peers.serve import ROOT, stop_serve


def _startup_line(log: str) -> dict | None:
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "deskgate serving":
            return rec
    return None


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class TestDashboardBind:
    def test_unbound_dashboard_reported_and_retried_on_reload(self, make_confdir, tmp_path):
        """Port taken: the startup line lists the dashboard under not_running; after the
        port is freed, SIGHUP starts it, /healthz lists it among the services and
        deskgate_service_up{service="dashboard"} is 1."""
        port = free_port()
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        conf = make_confdir({"60-dash.toml": f'[gateway]\nlog_format = "json"\n'
                                             f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'})
        out = tmp_path / "serve.log"
        with out.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                     "serve"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            line = None
            while line is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                line = _startup_line(out.read_text())
            assert line is not None, out.read_text()[-2000:]
            assert "dashboard" not in line["services"]
            assert line["not_running"] == ["dashboard"]
            blocker.close()
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            status, body = 0, ""
            while status != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200, body
            health = json.loads(body)
            assert "dashboard" in health["services"] and health["services_not_running"] == []
            _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
            assert 'deskgate_service_up{service="dashboard"} 1.0' in metrics
        finally:
            blocker.close()
            stop_serve(proc)
