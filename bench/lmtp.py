#!/usr/bin/env python3
"""LMTP throughput and latency: deskgate's full pipeline against a bare aiosmtpd
LMTP sink (and, with --workers 2, against Haraka).

Every server runs in its own process; Postfix's smtp-source is the load (5 KB
messages, 20 sessions) and Postfix's smtp-sink gives the machine's ceiling.
Scenarios: TCP on 127.0.0.1 and the unix socket, connection reuse (`-d`) and a
new connection per message, 1 and 5 recipients. Each scenario alternates
baseline and deskgate rounds in this one invocation and reports medians and the
median of the per-round ratios. Each server first gets --warmup messages (500) of
the same scenario, untimed, so a round measures the steady state rather than the
first compiled statements and the new database's first pages; Haraka gets
--haraka-warmup (6,000), because node's JIT keeps speeding it up for thousands of
messages (3,000 timed messages, TCP, 1 recipient, reuse, after 500 / 1,500 /
3,000 / 6,000 / 10,000 warm-up messages: 2,943 / 3,080 / 3,270 / 3,454 / 3,459
msg/s on the 2-vCPU development machine; deskgate's rate does not rise with a
longer warm-up, it falls a little as its database grows). The server
process's CPU time per message (its pre-forked workers included) is reported too,
which a loaded machine disturbs less than the rates. Then, per scenario, a paced client of this
script sends at half of deskgate's measured peak rate and reports the
end-of-DATA → last reply latency (p50/p99) seen by the client.

    python bench/lmtp.py [--messages 3000] [--sessions 20] [--rounds 3] [--quick]
                         [--warmup 500] [--haraka-warmup 6000]
                         [--transport tcp,unix] [--workers 2] [--no-haraka]
                         [--compare-with PATH] [--session-sink] [--filter REGEX]
                         [--fast-path-off] [--commit-in-process] [--haraka] [--breakdown]

`--workers 2` runs deskgate with `[lmtp] workers = 2` (pre-forked processes; the
baseline stays one process), connection reuse only, and adds Haraka to the TCP
rounds: Haraka from the npm registry (installed once under
~/.cache/deskgate-bench/haraka), SMTP on a loopback port, one plugin that
answers the reverse-DNS hook locally and accepts every recipient and every
message at queue time (then discards it), log level warn, Haraka's default of
one process. smtp-source drives it in SMTP mode. Without npm this part is
skipped with a message.

`--compare-with PATH` also runs the deskgate of another checkout (for example
the previous commit in a `git worktree`) in the same rounds: before/after.

`--fast-path-off` also runs deskgate with DESKGATE_STORE_FAST_PATH=0 (the store's
plain `Connection.execute` path) in every round.

`--commit-in-process` also runs deskgate with `[store] commit_process = false`
(each LMTP process commits in its own writer thread, no commit process) in every
round. deskgate itself runs as `deskgate serve` does (run_serve: the commit
process, and the pre-forked workers with --workers).

`--haraka` adds Haraka to the TCP rounds with --workers 1 as well.

`--breakdown` splits deskgate's CPU per message by process: the main LMTP process,
the pre-forked workers, the commit process and its busiest thread (the commit loop;
the rest is the WAL checkpoint thread), next to the load generator's CPU and the
cores the machine left idle, and how long each part's threads were ready to run
but waited for a CPU (/proc schedstat, in cores). Where the idle cores are many
while every process waits for a CPU in turn, the rounds are bound by the
hand-offs between processes, not by one of them.

`--session-sink` also runs deskgate's LMTP session alone, with a backend that
accepts and drops every message: the protocol layer's share, next to aiosmtpd's.

`--filter REGEX` adds one postmaster filter testing the Subject with REGEX (it
never matches the load's mail): with a pattern whose backtracking is bounded
(`^urgent$`) messages are prepared on the event loop; with an unbounded one
(`urgent.*now`) they go to the worker pool, which is what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
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
listen = ["unix:{sock}", "127.0.0.1:{port}"]
workers = {workers}
unknown_recipient = "default-queue"
[dashboard]
listen = "127.0.0.1:{dash}"
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

HARAKA_PLUGIN = """\
// deskgate bench: no DNS, accept every recipient, accept and discard at queue time.
exports.hook_lookup_rdns = function (next) { next(OK, 'localhost'); };
exports.hook_rcpt = function (next) { next(OK); };
exports.hook_queue = function (next) { next(OK); };
"""
HARAKA_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "deskgate-bench" / "haraka"


# ------------------------------------------------------------------ servers

def serve_bare(sock: str, port: str) -> None:
    """aiosmtpd's LMTP class with a handler that only answers 250, on both sockets."""
    import uvloop
    from aiosmtpd.lmtp import LMTP

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            # one reply per recipient, as RFC 2033 wants (aiosmtpd issue #517)
            return "\r\n".join(["250 OK"] * len(envelope.rcpt_tos))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_unix_server(
                       lambda: LMTP(Handler(), hostname="bare", loop=loop), sock),
                   await loop.create_server(
                       lambda: LMTP(Handler(), hostname="bare", loop=loop), "127.0.0.1",
                       int(port))]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for s in servers:
            s.close()

    uvloop.run(main())


def serve_session(sock: str, port: str) -> None:
    """deskgate's LMTP session with a backend that accepts and drops: the protocol alone."""
    import uvloop

    from gateway import errors
    from gateway.inbound.lmtp import start_listeners
    from gateway.model import Outcome

    class Backend:
        def rcpt_status(self, address):
            return errors.RCPT_OK

        async def deliver(self, mail_from, rcpts, raw, peer):
            return Outcome(replies=(errors.DELIVERED,) * len(rcpts), action="new")

        def log_connection(self, comm):
            pass

    Path(sock).unlink(missing_ok=True)         # left by the previous round

    async def main() -> None:
        loop = asyncio.get_running_loop()
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(sock)
        tcp = socket.socket()
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", int(port)))
        for s in (unix, tcp):
            s.listen(512)
            s.setblocking(False)
        servers = await start_listeners(Backend(), [unix, tcp], max_message_size=50 << 20,
                                        max_recipients=1000, hostname="session")
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for srv in servers:
            srv.close()

    uvloop.run(main())


def serve_deskgate(root: str, code: str) -> None:
    """deskgate as configured in root/conf.d, from the checkout `code`."""
    sys.path.insert(0, code)
    import uvloop

    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.logs import setup_logging

    setup_logging("error", "json")
    cfg = load_config(Path(root) / "conf.d")
    if cfg.lmtp.workers > 1 or getattr(getattr(cfg, "store", None), "commit_process", False):
        try:
            from gateway.supervise import run_serve
        except ImportError:       # a --compare-with checkout from before gateway/supervise.py
            from gateway.app import run_serve  # type: ignore[attr-defined,no-redef]
        run_serve(cfg)            # the real `deskgate serve` with pre-forked workers
        return
    gw = Gateway(cfg)
    gw.prepare_store()

    async def main() -> None:
        servers = await gw.start()
        with contextlib.suppress(ImportError):    # a --compare-with checkout without it
            from gateway import heap

            heap.settle()         # as `deskgate serve` does once it listens
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gw.stop(servers)

    uvloop.run(main())


# ------------------------------------------------------------------ helpers

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


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} did not come up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_load(target: str, *, messages: int, sessions: int, rcpts: int, reuse: bool,
             size: int, lmtp: bool = True) -> float:
    """smtp-source against target; messages/s."""
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


async def _open(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(target[5:])
    else:
        host, _, port = target.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
    await _reply(reader)                                    # 220
    writer.write(b"LHLO paced.test\r\n")
    await _reply(reader)
    return reader, writer


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def paced(target: str, *, rate: float, messages: int, sessions: int, rcpts: int,
                reuse: bool, size: int) -> list[float]:
    """Send `messages` at `rate`/s over up to `sessions` LMTP connections (pipelined
    MAIL/RCPT/DATA as Postfix does); the seconds from the final dot to the last reply."""
    loop = asyncio.get_running_loop()
    line = b"x" * 78 + b"\r\n"
    filler = line * max(1, size // len(line))
    envelope = (b"MAIL FROM:<sender@load.test>\r\n"
                + b"RCPT TO:<support@example.org>\r\n" * rcpts + b"DATA\r\n")
    start = loop.time() + 0.2
    latencies: list[float] = []
    taken = 0

    async def session() -> None:
        nonlocal taken
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while taken < messages:
            i = taken
            taken += 1
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if conn is None:
                conn = await _open(target)
            reader, writer = conn
            writer.write(envelope)
            for _ in range(rcpts + 2):
                await _reply(reader)
            writer.write(b"From: <sender@load.test>\r\nTo: <support@example.org>\r\n"
                         b"Subject: paced\r\nMessage-ID: <%d.%d@load.test>\r\n\r\n"
                         % (i, os.getpid()) + filler + b".\r\n")
            t0 = time.perf_counter()
            for _ in range(rcpts):
                await _reply(reader)
            latencies.append(time.perf_counter() - t0)
            if not reuse:
                writer.write(b"QUIT\r\n")
                writer.close()
                conn = None
        if conn is not None:
            conn[1].write(b"QUIT\r\n")
            conn[1].close()

    await asyncio.gather(*(session() for _ in range(sessions)))
    return latencies


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


# ------------------------------------------------------------------ contenders

FILTER_POLICY = """
[[filter]]
name = "bench"
match = [{{ header = "Subject", value = {pattern} }}]
set = {{ "X-Deskgate-Queue" = "Support" }}
"""


class Server:
    """One contender's process, listening on a unix socket and a TCP port."""

    def __init__(self, kind: str, tmp: Path, args: argparse.Namespace) -> None:
        self.kind, self.sock, self.port = kind, str(tmp / f"{kind}.sock"), free_port()
        code = str(ROOT)
        if kind == "before":
            code = str(Path(args.compare_with).resolve())
        env = dict(os.environ)
        if kind == "plain":
            env["DESKGATE_STORE_FAST_PATH"] = "0"
        if kind in ("deskgate", "before", "plain", "inproc"):
            root = tmp / f"root-{kind}"
            shutil.rmtree(root, ignore_errors=True)
            (root / "conf.d").mkdir(parents=True)
            (root / "conf.d" / "10.toml").write_text(CONF.format(
                sock=self.sock, port=self.port, workers=args.workers, dash=free_port())
                + ("[store]\ncommit_process = false\n" if kind == "inproc" else ""))
            if args.filter:
                (root / "policies").mkdir()
                (root / "policies" / "10.toml").write_text(
                    FILTER_POLICY.format(pattern=json.dumps(args.filter)))
            cmd = [sys.executable, __file__, "--serve", "deskgate", str(root), code]
        elif kind in ("bare", "session"):
            cmd = [sys.executable, __file__, "--serve", kind, self.sock, str(self.port)]
        elif kind == "haraka":
            cmd = ["node", str(HARAKA_CACHE / "node_modules" / ".bin" / "haraka"), "-c",
                   str(haraka_config(tmp, self.port))]
        else:
            cmd = ["smtp-sink", "-L"]
            if os.geteuid() == 0:
                cmd += ["-u", "postfix"]
            cmd += [f"unix:{self.sock}", "1000"]
        self.proc = subprocess.Popen(cmd, cwd=code, stdout=subprocess.DEVNULL, env=env)
        if kind == "haraka":
            wait_port(self.port)
        else:
            wait_socket(self.sock)
            if kind != "sink":
                wait_port(self.port)

    def target(self, transport: str) -> str:
        return f"unix:{self.sock}" if transport == "unix" else f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def haraka_available() -> str:
    """'' when Haraka can run (installing it from npm once), else why not."""
    exe = HARAKA_CACHE / "node_modules" / ".bin" / "haraka"
    if not exe.exists():
        if not (shutil.which("npm") and shutil.which("node")):
            return "npm/node not found (Debian package npm)"
        HARAKA_CACHE.mkdir(parents=True, exist_ok=True)
        print(f"installing Haraka from npm into {HARAKA_CACHE} ...", flush=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix",
                        str(HARAKA_CACHE), "Haraka@^3.3"], check=False,
                       stdout=subprocess.DEVNULL)
    return "" if exe.exists() else "npm install Haraka failed"


def haraka_config(tmp: Path, port: int) -> Path:
    d = tmp / "haraka"
    # Haraka's own defaults (connection.ini and friends), then ours on top.
    shutil.copytree(HARAKA_CACHE / "node_modules" / "Haraka" / "config", d / "config",
                    dirs_exist_ok=True)
    (d / "plugins").mkdir(exist_ok=True)
    (d / "plugins" / "bench_accept.js").write_text(HARAKA_PLUGIN)
    (d / "config" / "plugins").write_text("bench_accept\n")
    (d / "config" / "smtp.ini").write_text(f"listen=127.0.0.1:{port}\n")
    (d / "config" / "log.ini").write_text("[main]\nlevel=warn\n")
    (d / "config" / "me").write_text("haraka.bench.test\n")
    return d


# ------------------------------------------------------------------ driver

def measure(kinds: list[str], tmp: Path, args: argparse.Namespace, transport: str,
            rcpts: int, reuse: bool) -> dict[str, list[float]]:
    """Alternating rounds of every contender; messages/s per contender and round."""
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            server = Server(kind, tmp, args)
            try:
                load = dict(sessions=args.sessions, rcpts=rcpts, reuse=reuse, size=args.size,
                            lmtp=kind != "haraka")
                warmup = args.haraka_warmup if kind == "haraka" else args.warmup
                if warmup:
                    run_load(server.target(transport), messages=warmup, **load)
                split = args.breakdown and kind in ("deskgate", "before")
                if split:
                    snap0 = cpu_snapshot(server.proc.pid)
                cpu0, t0 = server_cpu(server.proc.pid), time.perf_counter()
                runs[kind].append(run_load(server.target(transport), messages=args.messages,
                                           **load))
                cpu = server_cpu(server.proc.pid) - cpu0
                if split:
                    for part, value in cpu_split(snap0, cpu_snapshot(server.proc.pid),
                                                 args.messages).items():
                        runs.setdefault(f"{kind} split {part}", []).append(value)
                runs.setdefault(f"{kind} cpu", []).append(cpu / args.messages * 1e6)
                runs.setdefault(f"{kind} cores", []).append(cpu / (time.perf_counter() - t0))
            finally:
                server.stop()
    return runs


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a server process and its children (pre-forked
    workers; Haraka's node), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_snapshot(pid: int) -> dict[str, float]:
    """CPU seconds so far of each part of a deskgate server (its main LMTP process,
    the pre-forked LMTP workers, the commit process and, in it, the busiest thread:
    the commit loop), of this script's finished children (the load generator), and
    of the whole machine (idle, softirq) from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    snap: dict[str, float] = {"main": 0.0, "workers": 0.0, "commit": 0.0,
                              "commit loop": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, fields = f.read().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, IndexError, ValueError):
            continue
        parent, own = int(fields.split()[1]), int(entry) == pid
        if not (own or parent == pid):
            continue
        used = sum(int(v) for v in fields.split()[11:13]) / tick
        part = "main" if own else "commit" if name == "deskgate-commit" else "workers"
        snap[part] += used
        # Time its threads were ready to run but waited for a CPU (schedstat's second
        # field): what the machine's idle cores do not show.
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{entry}/task"):
                with contextlib.suppress(OSError, IndexError, ValueError), \
                        open(f"/proc/{entry}/task/{tid}/schedstat") as f:
                    snap[f"{part} runq"] = snap.get(f"{part} runq", 0.0) \
                        + int(f.read().split()[1]) / 1e9
        if part == "commit":
            threads = []
            for tid in os.listdir(f"/proc/{entry}/task"):
                with contextlib.suppress(OSError), \
                        open(f"/proc/{entry}/task/{tid}/schedstat") as f:
                    threads.append(int(f.read().split()[0]) / 1e9)
            snap["commit loop"] += max(threads, default=0.0)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    snap["load generator"] = ru.ru_utime + ru.ru_stime
    with open("/proc/stat") as f:
        cpu = [int(v) / tick for v in f.readline().split()[1:]]
    snap["machine idle"] = cpu[3] + cpu[4]              # idle + iowait
    snap["machine softirq"] = cpu[6]
    snap["wall"] = time.perf_counter()
    return snap


def cpu_split(before: dict[str, float], after: dict[str, float],
              messages: int) -> dict[str, float]:
    """Per part: CPU µs per message; the machine's idle and softirq as cores."""
    wall = after["wall"] - before["wall"]
    out = {k: (after[k] - before[k]) / messages * 1e6 for k in before
           if k != "wall" and not k.startswith("machine") and not k.endswith(" runq")}
    for k in ("machine idle", "machine softirq"):
        out[f"{k} cores"] = (after[k] - before[k]) / wall
    for k in before:
        if k.endswith(" runq") and k in after:
            out[f"{k} cores"] = (after[k] - before[k]) / wall
    return out


def latency(tmp: Path, args: argparse.Namespace, transport: str, rcpts: int, reuse: bool,
            rate: float) -> list[float]:
    server = Server("deskgate", tmp, args)
    try:
        n = max(200, min(args.messages, int(rate * 10)))
        return asyncio.run(paced(server.target(transport), rate=rate, messages=n,
                                 sessions=args.sessions, rcpts=rcpts, reuse=reuse,
                                 size=args.size))
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--quick", action="store_true", help="1 recipient with reuse only")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating baseline/deskgate runs per scenario (medians reported)")
    ap.add_argument("--transport", default="tcp,unix", help="tcp, unix or both")
    ap.add_argument("--filter", default="", metavar="REGEX",
                    help="one postmaster filter on the Subject with this pattern")
    ap.add_argument("--workers", type=int, default=1,
                    help="[lmtp] workers for deskgate (pre-forked processes; baseline stays 1)")
    ap.add_argument("--no-haraka", action="store_true", help="skip Haraka with --workers > 1")
    ap.add_argument("--haraka", action="store_true",
                    help="add Haraka to the TCP rounds with --workers 1 too")
    ap.add_argument("--compare-with", default="", metavar="PATH",
                    help="also run the deskgate of this checkout (before/after)")
    ap.add_argument("--session-sink", action="store_true",
                    help="also run deskgate's LMTP session with an accept-and-drop backend")
    ap.add_argument("--fast-path-off", action="store_true",
                    help="also run deskgate with DESKGATE_STORE_FAST_PATH=0 in every round")
    ap.add_argument("--commit-in-process", action="store_true",
                    help="also run deskgate with [store] commit_process = false in every round")
    ap.add_argument("--no-latency", action="store_true", help="skip the paced latency runs")
    ap.add_argument("--breakdown", action="store_true",
                    help="split deskgate's CPU per message by process (main, workers, "
                         "commit process and its commit loop), next to the load "
                         "generator's and the machine's idle cores")
    ap.add_argument("--warmup", type=int, default=500, metavar="N",
                    help="messages each server gets before every timed round (caches, "
                         "compiled statements, the new database's first pages)")
    ap.add_argument("--haraka-warmup", type=int, default=6000, metavar="N",
                    help="messages Haraka gets before every timed round: node's JIT "
                         "needs thousands to reach Haraka's steady rate")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        if a.serve[0] == "bare":
            serve_bare(a.serve[1], a.serve[2])
        elif a.serve[0] == "session":
            serve_session(a.serve[1], a.serve[2])
        else:
            serve_deskgate(a.serve[1], a.serve[2])
        return 0
    if not shutil.which("smtp-source"):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2
    transports = [t for t in a.transport.split(",") if t in ("tcp", "unix")]
    pairs = [(1, True)] if a.quick else [(1, True), (1, False), (5, True), (5, False)]
    if a.workers > 1:
        pairs = [p for p in pairs if p[1]]          # workers are compared with reuse
    want_haraka = a.workers > 1 or a.haraka
    haraka_why = "not with --workers 1 (add --haraka)" if not want_haraka else \
        "--no-haraka" if a.no_haraka else haraka_available()
    if want_haraka and haraka_why:
        print(f"Haraka skipped: {haraka_why}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as td:
        tmp = Path(td)
        tmp.chmod(0o755)
        sink_server = Server("sink", tmp, a)
        try:
            sink = run_load(sink_server.target("unix"), messages=a.messages,
                            sessions=a.sessions, rcpts=1, reuse=True, size=a.size)
        finally:
            sink_server.stop()
        print(f"smtp-sink ceiling (unix, 1 rcpt, reuse): {sink:8.0f} msg/s", flush=True)
        for transport in transports:
            for rcpts, reuse in pairs:
                kinds = ["bare", "deskgate"]
                if a.compare_with:
                    kinds.append("before")
                if a.fast_path_off:
                    kinds.append("plain")
                if a.commit_in_process:
                    kinds.append("inproc")
                if a.session_sink:
                    kinds.append("session")
                if transport == "tcp" and want_haraka and not haraka_why:
                    kinds.append("haraka")
                runs = measure(kinds, tmp, a, transport, rcpts, reuse)
                row: dict[str, object] = {"transport": transport, "rcpts": rcpts,
                                          "reuse": reuse, "workers": a.workers,
                                          "filter": a.filter, "runs": runs}
                for k in kinds:
                    row[k] = statistics.median(runs[k])
                    row[f"{k} cpu_us"] = statistics.median(runs[f"{k} cpu"])
                    row[f"{k} cores"] = statistics.median(runs[f"{k} cores"])
                    if k != "bare":
                        row[f"{k}/bare"] = statistics.median(
                            d / b for b, d in zip(runs["bare"], runs[k], strict=True))
                if "haraka" in kinds:
                    row["deskgate/haraka"] = statistics.median(
                        d / h for h, d in zip(runs["haraka"], runs["deskgate"], strict=True))
                text = (f"workers={a.workers} {transport:4} rcpts={rcpts} "
                        f"reuse={'yes' if reuse else 'no '}  bare {row['bare']:6.0f}  "
                        f"deskgate {row['deskgate']:6.0f} msg/s  "
                        f"ratio {row['deskgate/bare']:.2f}")
                if "before" in kinds:
                    text += (f"  (before {row['before']:6.0f}, ratio "
                             f"{row['before/bare']:.2f})")
                if "plain" in kinds:
                    text += (f"  (fast path off {row['plain']:6.0f}, ratio "
                             f"{row['plain/bare']:.2f})")
                if "inproc" in kinds:
                    text += (f"  (commit in the LMTP process {row['inproc']:6.0f}, ratio "
                             f"{row['inproc/bare']:.2f})")
                if "session" in kinds:
                    text += (f"  (session alone {row['session']:6.0f}, ratio "
                             f"{row['session/bare']:.2f})")
                if "haraka" in kinds:
                    text += (f"  Haraka {row['haraka']:6.0f}, deskgate/Haraka "
                             f"{row['deskgate/haraka']:.2f}")
                text += "\n    server CPU per message (cores busy): " + ", ".join(
                    f"{k} {row[f'{k} cpu_us']:.0f} µs ({row[f'{k} cores']:.2f})" for k in kinds)
                for k in kinds:
                    parts = {key.split(" split ", 1)[1]: statistics.median(v)
                             for key, v in runs.items() if key.startswith(f"{k} split ")}
                    if parts:
                        row[f"{k} split"] = parts
                        text += f"\n    {k} CPU µs per message by part: " + ", ".join(
                            f"{n} {v:.0f}" for n, v in parts.items()
                            if not n.startswith("machine") and not n.endswith(" cores")) + (
                            f"; machine idle {parts['machine idle cores']:.2f} cores, "
                            f"softirq {parts['machine softirq cores']:.2f}")
                        text += "; waiting for a CPU (cores): " + ", ".join(
                            f"{n[:-len(' runq cores')]} {v:.2f}" for n, v in parts.items()
                            if n.endswith(" runq cores"))
                if not a.no_latency:
                    rate = float(row["deskgate"]) / 2          # type: ignore[arg-type]
                    lat = latency(tmp, a, transport, rcpts, reuse, rate)
                    row["paced_rate"] = rate
                    row["p50_ms"] = pct(lat, 0.50) * 1000
                    row["p99_ms"] = pct(lat, 0.99) * 1000
                    text += (f"  at {rate:.0f} msg/s: DATA→reply p50 {row['p50_ms']:.1f} ms "
                             f"p99 {row['p99_ms']:.1f} ms")
                print(text, flush=True)
                results.append(row)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "lmtp.json" if a.workers <= 1 else f"lmtp-workers{a.workers}.json"
    (out / name).write_text(json.dumps({"sink": sink, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
