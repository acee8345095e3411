#!/usr/bin/env python3
"""LMTP throughput: deskgate's full pipeline against a bare aiosmtpd LMTP sink.

Both servers run in their own process on uvloop; Postfix's smtp-source is the
load (`-L`, 5 KB messages, 20 sessions) and Postfix's smtp-sink gives the
machine's ceiling. Every scenario runs the baseline and deskgate back to back in
this one invocation and prints messages/s and the ratio, plus deskgate's
end-of-DATA-to-reply latency (p50/p99).

    python bench/lmtp.py [--messages 5000] [--sessions 20] [--quick] [--filter REGEX]
                         [--fast-path-off]

`--filter REGEX` adds one postmaster filter testing the Subject with REGEX (it
never matches the load's mail): with a pattern whose backtracking is bounded
(`^urgent$`) messages are prepared on the event loop; with an unbounded one
(`urgent.*now`) they go to the worker pool, which is what this measures.

`--fast-path-off` adds a third server to every round: deskgate with
DESKGATE_STORE_FAST_PATH=0 (prepared statements through plain SQLAlchemy), and
prints its rate and its ratio to deskgate with the fast path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"
[lmtp]
listen = ["unix:{sock}"]
workers = {workers}
unknown_recipient = "default-queue"
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


# ------------------------------------------------------------------ servers

def serve_bare(sock: str) -> None:
    """aiosmtpd's LMTP class with a handler that only answers 250."""
    import uvloop
    from aiosmtpd.lmtp import LMTP

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            # one reply per recipient, as RFC 2033 wants (aiosmtpd issue #517)
            return "\r\n".join(["250 OK"] * len(envelope.rcpt_tos))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            lambda: LMTP(Handler(), hostname="bare", loop=loop), sock)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def serve_deskgate(sock: str, root: str, stats_file: str) -> None:
    import uvloop

    from gateway.app import Gateway, run_serve
    from gateway.config import load_config
    from gateway.logs import setup_logging

    setup_logging("error", "json")
    cfg = load_config(Path(root) / "conf.d")
    if cfg.lmtp.workers > 1:
        # the real `deskgate serve` with pre-forked workers; no latency probe
        Path(stats_file).write_text(json.dumps({"latencies": [], "batches": 0, "jobs": 0}))
        run_serve(cfg)
        return
    gw = Gateway(cfg)
    gw.prepare_store()
    latencies: list[float] = []
    orig = gw.deliver

    async def timed(mail_from, rcpts, raw, peer):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        res = await orig(mail_from, rcpts, raw, peer)
        latencies.append(time.perf_counter() - t0)
        return res

    gw.deliver = timed  # type: ignore[method-assign]

    async def main() -> None:
        servers = await gw.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gw.stop(servers)

    uvloop.run(main())
    Path(stats_file).write_text(json.dumps({
        "latencies": latencies, "batches": gw.writer.batches, "jobs": gw.writer.jobs}))


# ------------------------------------------------------------------ driver

def wait_socket(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not come up")


def run_load(target: str, *, messages: int, sessions: int, rcpts: int, reuse: bool,
             size: int, lmtp: bool = True) -> float:
    args = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", "sender@load.test", "-t", "support@example.org", "-M", "load.test"]
    if lmtp:
        args.append("-L")
    if rcpts > 1:
        args += ["-r", str(rcpts)]
    if reuse:
        args.append("-d")
    args.append(target)
    t0 = time.perf_counter()
    subprocess.run(args, check=True, timeout=1800, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - t0)


WORKERS = 1
FILTER = ""
FILTER_POLICY = """
[[filter]]
name = "bench"
match = [{{ header = "Subject", value = {pattern} }}]
set = {{ "X-Deskgate-Queue" = "Support" }}
"""


def start(kind: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    sock = str(tmp / f"{kind}.sock")
    stats = tmp / f"{kind}.json"
    env = dict(os.environ)
    if kind == "deskgate-plain":
        env["DESKGATE_STORE_FAST_PATH"] = "0"
    if kind.startswith("deskgate"):
        root = tmp / "root"
        shutil.rmtree(root, ignore_errors=True)
        (root / "conf.d").mkdir(parents=True)
        (root / "conf.d" / "10.toml").write_text(CONF.format(sock=sock, workers=WORKERS))
        if FILTER:
            (root / "policies").mkdir()
            (root / "policies" / "10.toml").write_text(
                FILTER_POLICY.format(pattern=json.dumps(FILTER)))
        cmd = [sys.executable, __file__, "--serve", "deskgate", sock, str(root), str(stats)]
    elif kind == "bare":
        cmd = [sys.executable, __file__, "--serve", "bare", sock]
    else:
        cmd = ["smtp-sink", "-L"]
        if os.geteuid() == 0:
            cmd += ["-u", "postfix"]
        cmd += [f"unix:{sock}", "1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    wait_socket(sock)
    return proc, sock, stats


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--quick", action="store_true", help="1 recipient with reuse only")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating baseline/deskgate runs per scenario (medians reported)")
    ap.add_argument("--filter", default="", metavar="REGEX",
                    help="one postmaster filter on the Subject with this pattern")
    ap.add_argument("--fast-path-off", action="store_true",
                    help="also run deskgate with DESKGATE_STORE_FAST_PATH=0 in every round")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1,
                    help="[lmtp] workers for deskgate (pre-forked processes; baseline stays 1)")
    a = ap.parse_args()
    global WORKERS, FILTER
    WORKERS, FILTER = a.workers, a.filter
    if a.serve:
        if a.serve[0] == "bare":
            serve_bare(a.serve[1])
        else:
            serve_deskgate(*a.serve[1:4])
        return 0
    if not shutil.which("smtp-source"):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2
    scenarios = [(1, True)] if a.quick else [(1, True), (1, False), (5, True), (5, False)]
    results = []
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as td:
        tmp = Path(td)
        tmp.chmod(0o755)
        proc, sock, _ = start("sink", tmp)
        try:
            sink = run_load(f"unix:{sock}", messages=a.messages, sessions=a.sessions, rcpts=1,
                            reuse=True, size=a.size)
        finally:
            stop(proc)
        print(f"smtp-sink ceiling (1 rcpt, reuse): {sink:8.0f} msg/s")
        for rcpts, reuse in scenarios:
            row: dict[str, object] = {"rcpts": rcpts, "reuse": reuse}
            kinds = ("bare", "deskgate") + (("deskgate-plain",) if a.fast_path_off else ())
            runs: dict[str, list[float]] = {k: [] for k in kinds}
            lat: list[float] = []
            jobs = batches = 0
            # Alternate baseline and deskgate so both see the same machine load.
            for _ in range(a.rounds):
                for kind in kinds:
                    proc, sock, stats = start(kind, tmp)
                    try:
                        runs[kind].append(run_load(f"unix:{sock}", messages=a.messages,
                                                   sessions=a.sessions, rcpts=rcpts,
                                                   reuse=reuse, size=a.size))
                    finally:
                        stop(proc)
                    if kind == "deskgate":
                        st = json.loads(stats.read_text())
                        lat += st["latencies"]
                        jobs += st["jobs"]
                        batches += st["batches"]
            row["bare"] = statistics.median(runs["bare"])
            row["deskgate"] = statistics.median(runs["deskgate"])
            row["ratios"] = [d / b for b, d in zip(runs["bare"], runs["deskgate"], strict=True)]
            row["ratio"] = statistics.median(row["ratios"])
            if a.fast_path_off:
                row["deskgate_plain"] = statistics.median(runs["deskgate-plain"])
                row["fast_over_plain"] = statistics.median(
                    [f / p for f, p in zip(runs["deskgate"], runs["deskgate-plain"], strict=True)])
            row["workers"] = a.workers
            row["filter"] = a.filter
            row["p50_ms"] = pct(lat, 0.50) * 1000
            row["p99_ms"] = pct(lat, 0.99) * 1000
            row["per_commit"] = jobs / max(1, batches)
            results.append(row)
            print(f"filter={a.filter or '-'} workers={a.workers} rcpts={rcpts} "
                  f"reuse={'yes' if reuse else 'no '}  "
                  f"bare {row['bare']:7.0f} msg/s  deskgate {row['deskgate']:7.0f} msg/s  "
                  f"ratio {row['ratio']:.2f}  "
                  f"DATA→reply p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms  "
                  f"messages/commit {row['per_commit']:.1f}", flush=True)
            if a.fast_path_off:
                print(f"  fast path off: deskgate {row['deskgate_plain']:7.0f} msg/s  "
                      f"fast/plain {row['fast_over_plain']:.2f}", flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "lmtp.json").write_text(json.dumps({"sink": sink, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
