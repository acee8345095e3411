"""More busy processes than CPUs: `check` and `serve` say that `lmtp.workers` costs
throughput on this machine (a real `check` and a real `serve`, each pinned to one
CPU with its affinity mask, so the result is the same on any machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config, process_advice, usable_cpus
from tests.peers.serve import ROOT, stop_serve

ONE_CPU = min(os.sched_getaffinity(0))


def _pin() -> None:
    os.sched_setaffinity(0, {ONE_CPU})


def _check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "check",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False, preexec_fn=_pin)


class TestProcessAdvice:
    @pytest.mark.parametrize(("workers", "commit_process", "cpus", "warned"), [
        (1, True, 1, False),     # the least there is: nothing to advise
        (2, True, 2, True),      # two LMTP processes and the commit process on two CPUs
        (2, True, 3, False),
        (2, False, 2, False),
        (3, False, 2, True),
        (8, True, 9, False),
    ])
    def test_warns_when_busy_processes_outnumber_cpus(self, make_confdir, workers,
                                                      commit_process, cpus, warned):
        cfg = load_config(make_confdir({"60-w.toml": f"[lmtp]\nworkers = {workers}\n"
                                        f"[store]\ncommit_process = "
                                        f"{str(commit_process).lower()}\n"}))
        advice = process_advice(cfg, cpus=cpus)
        assert [k for k, _ in advice] == (["lmtp.workers"] if warned else [])
        if warned:
            reason = advice[0][1]
            assert f"may run on {cpus} CPUs here" in reason
            assert f"{workers} LMTP processes" in reason

    def test_usable_cpus_follows_the_affinity_mask(self):
        assert usable_cpus() == len(os.sched_getaffinity(0))


class TestCheckAndServeSayIt:
    def test_check_json_lists_the_warning_and_still_passes(self, make_confdir):
        proc = _check(make_confdir({"60-w.toml": "[lmtp]\nworkers = 2\n"}))
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] is True
        assert [w["key"] for w in report["warnings"]] == ["lmtp.workers"]
        assert "may run on 1 CPU here" in report["warnings"][0]["reason"]

    def test_check_without_the_problem_has_no_warning(self, make_confdir):
        proc = _check(make_confdir())
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["warnings"] == []
        text = subprocess.run([sys.executable, "-m", "gateway", "--config",
                               str(make_confdir({"60-w.toml": "[lmtp]\nworkers = 2\n"})),
                               "check"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False, preexec_fn=_pin)
        assert text.returncode == 0
        assert text.stderr.startswith("warning: lmtp.workers: 2 LMTP processes and the "
                                      "commit process need 3 CPUs"), text.stderr

    def test_serve_logs_the_warning_at_start(self, make_confdir, tmp_path):
        conf = make_confdir({"60-w.toml": '[gateway]\nlog_format = "json"\n'
                                          '[lmtp]\nworkers = 2\n'})
        out = tmp_path / "serve.log"
        with out.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                     "serve"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    preexec_fn=_pin)
        try:
            records: list[dict] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                records = []
                for line in out.read_text().splitlines():
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        continue
                if any(r.get("event") == "deskgate serving" for r in records):
                    break
            events = [r.get("event") for r in records]
            assert "deskgate serving" in events, out.read_text()[-2000:]
            warned = [r for r in records
                      if r.get("event") == "configuration costs throughput on this machine"]
            assert [w["key"] for w in warned] == ["lmtp.workers"]
            assert warned[0]["level"] == "warning"
            assert events.index(warned[0]["event"]) < events.index("deskgate serving")
        finally:
            stop_serve(proc)
