#!/usr/bin/env python3
"""Pipe delivery: one `deskgate deliver` process per message, serially, as Postfix's
pipe transport, procmail or Exim run it, against the same messages over LMTP.

    python bench/deliver.py [--messages 40] [--rounds 3] [--size 5000]
                            [--otobo-cmd 'perl .../otobo.Console.pl Maint::PostMaster::Read']

Scenarios, run one after the other in every round (so a noisy machine slows them
alike; the ratios are computed per round and their median printed):

  lmtp        one LMTP connection per message to a running `deskgate serve`, from this
              process (the gateway's own cost per message, no process start)
  via-socket  `deskgate deliver --via-socket -r RCPT < msg`, same gateway
  in-process  `deskgate deliver -r RCPT < msg`, no gateway running
  otobo       `sh -c CMD < msg`, only with --otobo-cmd (e.g. OTOBO's PostMaster::Read)
  python      `python -c pass < msg`: the floor, starting the interpreter alone

Every message has its own Message-ID; every exit code must be 0 and every
message a ticket, or the run fails. The processes run with their bytecode
compiled first and PYTHONDONTWRITEBYTECODE unset, as an installed package runs
(compiling the gateway's modules from source on every start would be measured
otherwise).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"
log_level = "warning"

[lmtp]
listen = ["unix:var/run/lmtp.sock"]

[dashboard]
listen = ""

[postmaster]
default_queue = "Raw"

[[queue]]
name = "Raw"

[[queue]]
name = "Support"
address = "support@example.org"

[[address]]
email = "support@example.org"
queue = "Support"
"""

RCPT = "support@example.org"


def message(i: int, size: int, tag: str) -> bytes:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
    head = (f"From: Customer {i} <c{i}@customer.test>\nTo: {RCPT}\n"
            f"Subject: {tag} printer {i} is broken\n"
            f"Message-ID: <{uuid.uuid4().hex}@bench.test>\n"
            "Date: Thu, 03 Dec 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n\n")
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def deskgate() -> list[str]:
    """The console script next to this interpreter (what an MTA runs), else -m gateway."""
    script = Path(sys.executable).parent / "deskgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def make_root(base: Path, name: str) -> Path:
    conf = base / name / "conf.d"
    conf.mkdir(parents=True)
    (conf / "10-bench.toml").write_text(CONF)
    (base / name / "policies").mkdir()
    return conf


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_pipe(cmd: list[str], msgs: list[bytes]) -> list[float]:
    """Run `cmd < msg` once per message, serially; seconds per message."""
    out = []
    for raw in msgs:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, input=raw, capture_output=True, check=False, env=ENV)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: "
                             f"{proc.stderr.decode()[-500:]}")
    return out


def run_lmtp(sock: str, msgs: list[bytes]) -> list[float]:
    """One LMTP connection per message from this process; seconds per message."""
    from gateway.cli import via_socket

    out = []
    for raw in msgs:
        t0 = time.perf_counter()
        res = via_socket.deliver(sock, "", [RCPT], raw.replace(b"\n", b"\r\n"))
        out.append(time.perf_counter() - t0)
        if res.exit_code() != 0:
            raise SystemExit(f"LMTP delivery failed: {[str(r) for _, r in res.delivered]}")
    return out


def tickets(conf: Path) -> int:
    from sqlalchemy import func, select

    from gateway.config import load_config
    from gateway.store.db import make_engine
    from gateway.store.tables import Ticket

    engine = make_engine(load_config(conf).database_url)
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(Ticket)).scalar_one())
    engine.dispose()
    return n


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"deskgate serve exited {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("deskgate serve did not listen in time")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=40, help="per scenario and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=5000, help="bytes per message")
    ap.add_argument("--otobo-cmd", help="shell command that delivers one message from stdin "
                                        "(e.g. OTOBO's otobo.Console.pl Maint::PostMaster::Read)")
    args = ap.parse_args()

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "gateway")],
                   check=True, env=ENV, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="deskgate-bench-deliver-") as tmp:
        base = Path(tmp)
        served = make_root(base, "served")
        alone = make_root(base, "alone")
        sock = served.parent / "var" / "run" / "lmtp.sock"
        subprocess.run([*deskgate(), "--config", str(served), "db", "upgrade"], check=True,
                       capture_output=True)
        subprocess.run([*deskgate(), "--config", str(alone), "db", "upgrade"], check=True,
                       capture_output=True)
        serve = subprocess.Popen([*deskgate(), "--config", str(served), "serve"], env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_socket(sock, serve)
            scenarios: dict[str, Callable[[list[bytes]], list[float]]] = {
                "lmtp": lambda m: run_lmtp(str(sock), m),
                "via-socket": lambda m: run_pipe(
                    [*deskgate(), "--config", str(served), "deliver", "--via-socket",
                     "-r", RCPT], m),
                "in-process": lambda m: run_pipe(
                    [*deskgate(), "--config", str(alone), "deliver", "-r", RCPT], m),
            }
            if args.otobo_cmd:
                scenarios["otobo"] = lambda m: run_pipe(["sh", "-c", args.otobo_cmd], m)
            scenarios["python"] = lambda m: run_pipe([sys.executable, "-c", "pass"], m)
            rates: dict[str, list[float]] = {k: [] for k in scenarios}
            lat: dict[str, list[float]] = {k: [] for k in scenarios}
            for rnd in range(args.rounds):
                for name, run in scenarios.items():
                    msgs = [message(i, args.size, f"{name}-{rnd}") for i in range(args.messages)]
                    secs = run(msgs)
                    rates[name].append(len(secs) / sum(secs))
                    lat[name].extend(secs)
                print(f"round {rnd + 1}: " + ", ".join(
                    f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)
            expected_served = 2 * args.rounds * args.messages
            expected_alone = args.rounds * args.messages
            got = (tickets(served), tickets(alone))
            if got != (expected_served, expected_alone):
                raise SystemExit(f"tickets {got}, expected {(expected_served, expected_alone)}")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)

    print(f"\n{args.messages} messages of {args.size} bytes x {args.rounds} rounds, serial, "
          f"one process per message (CPUs: {os.cpu_count()})")
    print(f"{'scenario':<12} {'msg/s':>7} {'p50 ms':>8} {'p90 ms':>8}")
    for name in scenarios:
        q = statistics.quantiles(lat[name], n=10)
        print(f"{name:<12} {statistics.median(rates[name]):>7.1f} "
              f"{statistics.median(lat[name]) * 1000:>8.1f} {q[8] * 1000:>8.1f}")
    print("\nratios (median of the per-round ratios):")
    pairs = [("via-socket", "in-process"), ("lmtp", "via-socket"), ("lmtp", "in-process"),
             ("python", "via-socket")]
    if "otobo" in scenarios:
        pairs += [("via-socket", "otobo"), ("in-process", "otobo")]
    for a, b in pairs:
        ratio = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
        print(f"  {a} / {b}: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
