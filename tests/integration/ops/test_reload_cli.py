"""`deskgate reload` against a running `deskgate serve`: it waits for the gateway's
answer and reports it, as `postfix reload` reports a refused main.cf — a refused
reload exits non-zero with the reason, a setting that needs a restart is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.peers.serve import ROOT, start_serve, stop_serve, wait_for


def deskgate_reload(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "reload"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def serving(conf: Path) -> bool:
    return (conf.parent / "var" / "run" / "lmtp.sock").exists()


class TestReloadCommand:
    def test_reports_ok_refused_and_restart_needed(self, make_confdir):
        conf = make_confdir()
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: serving(conf), 60), "serve did not start"
            ok = deskgate_reload(conf)
            assert ok.returncode == 0, ok.stderr
            assert "reloaded" in ok.stdout
            assert "restart" not in ok.stdout + ok.stderr

            (conf / "50-workers.toml").write_text("[lmtp]\nworkers = 2\nmax_recipients = 5\n")
            restart = deskgate_reload(conf)
            assert restart.returncode == 0, restart.stderr
            assert "lmtp.workers" in restart.stdout + restart.stderr
            assert "lmtp.max_recipients" not in restart.stdout + restart.stderr

            (conf / "60-broken.toml").write_text("[lmtp]\nmax_recipients = \"many\"\n")
            refused = deskgate_reload(conf)
            assert refused.returncode != 0
            assert "refused" in refused.stderr
            assert "60-broken.toml" in refused.stderr
            assert proc.poll() is None
        finally:
            stop_serve(proc)

    def test_a_reload_the_gateway_refuses_exits_1_with_its_reason(self, make_confdir):
        """conf.d validates for the command, but the gateway answers "refused" (a
        stand-in process holding the pid file answers SIGHUP as serve does): the
        command prints the gateway's reason and exits 1."""
        from gateway.config import load_config
        from gateway.supervise import pidfile_path, reload_result_path

        conf = make_confdir()
        cfg = load_config(conf)
        result = reload_result_path(cfg)
        result.parent.mkdir(parents=True, exist_ok=True)
        answer = ('{"count": 1, "pid": %d, "result": "refused", '
                  '"reason": "tls.pem: no certificate", "restart_needed": []}')
        pidfile_path(cfg).parent.mkdir(parents=True, exist_ok=True)
        code = ("import fcntl, os, pathlib, signal, time\n"
                # As serve does: the pid file locked while it runs.
                f"lock = open({str(pidfile_path(cfg))!r}, 'w')\n"
                "fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                f"p = pathlib.Path({str(result)!r})\n"
                f"signal.signal(signal.SIGHUP, lambda *a: p.write_text({answer!r} % os.getpid()))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n")
        stand_in = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            assert stand_in.stdout is not None and stand_in.stdout.readline() == b"ready\n"
            pidfile_path(cfg).write_text(f"{stand_in.pid}\n")
            refused = deskgate_reload(conf)
            assert refused.returncode == 1
            assert "refused by the gateway" in refused.stderr
            assert "tls.pem: no certificate" in refused.stderr
        finally:
            stand_in.kill()
            stand_in.wait()


class TestReloadResultFile:
    def test_serve_writes_what_the_reload_did(self, make_confdir, run_gateway):
        """reload_everywhere (SIGHUP in the main process) leaves its outcome in
        reload.json: refused with the reason for a broken conf.d."""
        import json

        from gateway.config import load_config
        from gateway.supervise import reload_everywhere, reload_result_path

        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        (conf / "60-broken.toml").write_text("[lmtp]\nmax_recipients = \"many\"\n")
        assert rg.call(reload_everywhere(rg.gateway, []), 60) is False
        got = json.loads(reload_result_path(rg.config).read_text())
        assert got["result"] == "refused"
        assert "60-broken.toml" in got["reason"]
        assert got["pid"] == os.getpid()


class TestReloadWithoutAGateway:
    """No gateway runs: nothing was refused, so not exit 1 (`refused`) but 7, LSB's
    "program is not running", as an init script's reload answers (`postfix reload`
    and `systemctl reload` of a stopped unit fail too)."""

    def test_no_pid_file_exits_7(self, make_confdir):
        """Never started (no pid file): exit 7 and one line saying that no gateway runs
        and that the configuration is read when it starts."""
        conf = make_confdir()
        r = deskgate_reload(conf)
        assert r.returncode == 7, r.stderr
        assert r.stderr.startswith("reload: no gateway is running"), r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert "refused" not in r.stderr

    def test_pid_file_of_a_gateway_that_is_gone_exits_7(self, make_confdir):
        """A pid file left by a gateway that exited (its pid runs nothing now) is not a
        running gateway either: exit 7 at once, not a 60 s wait for an answer."""
        from gateway.config import load_config
        from gateway.supervise import pidfile_path

        conf = make_confdir()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        path = pidfile_path(load_config(conf))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{gone.pid}\n")
        r = deskgate_reload(conf)
        assert r.returncode == 7, r.stderr
        assert r.stderr.startswith("reload: no gateway is running"), r.stderr
        assert str(gone.pid) in r.stderr

    def test_stale_pid_file_naming_another_process_exits_7_and_signals_nothing(
            self, make_confdir):
        """A pid file no serve holds locked (the gateway died, its pid went to another
        process) is stale: exit 7 naming it, and that process gets no SIGHUP (sleep,
        as many daemons, would die of it)."""
        import time

        from gateway.config import load_config
        from gateway.supervise import pidfile_path

        conf = make_confdir()
        path = pidfile_path(load_config(conf))
        path.parent.mkdir(parents=True, exist_ok=True)
        other = subprocess.Popen(["sleep", "30"])
        try:
            path.write_text(f"{other.pid}\n")
            r = deskgate_reload(conf)
            assert r.returncode == 7, r.stderr
            assert r.stderr.startswith("reload: no gateway is running"), r.stderr
            assert "stale pid file" in r.stderr and str(other.pid) in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1, r.stderr
            time.sleep(0.2)
            assert other.poll() is None, "the unrelated process was signalled"
        finally:
            other.kill()
            other.wait()
