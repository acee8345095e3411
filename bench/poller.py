"""Poller throughput: drain N messages of ~5 KB from a real Dovecot over IMAPS and
POP3S (delete mode) and compare with Pipeline.deliver of the same messages, one
after the other, in the same run (and `deskgate deliver` from stdin for a sample).

    /work/venv/bin/python bench/poller.py [--messages 2000] [--size 5000] [--stdin 20]

Each measurement uses a fresh SQLite database, so none sees the others' dedupe rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import Gateway  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.inbound.poller.run import Poller  # noqa: E402
from gateway.model import Envelope  # noqa: E402
from tests.peers.ca import TestCA  # noqa: E402
from tests.peers.dovecot import Dovecot, make_dovecot_dir  # noqa: E402

CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"

[lmtp]
listen = ["unix:var/run/lmtp.sock"]

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


def messages(n: int, size: int) -> list[bytes]:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    out = []
    for i in range(n):
        head = (f"From: Customer {i} <c{i}@customer.test>\r\nTo: support@example.org\r\n"
                f"Subject: Printer {i} is broken\r\nMessage-ID: <{uuid.uuid4().hex}@bench>\r\n"
                "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\n")
        body = line * max(1, (size - len(head)) // len(line))
        out.append((head + body).encode())
    return out


def confdir(base: Path, name: str, account: str = "") -> Path:
    conf = base / name / "conf.d"
    conf.mkdir(parents=True)
    (conf / "10-base.toml").write_text(CONF + textwrap.dedent(account))
    return conf


def account_toml(dv: Dovecot, type_: str) -> str:
    return f"""
[[account]]
name = "bench"
type = "{type_}"
host = "127.0.0.1"
port = {dv.ports[type_]}
login = "helpdesk"
password = "secret"
tls_ca_file = "{dv.ca.ca_path}"
max_messages_per_run = 1000000
"""


def bench_direct(base: Path, msgs: list[bytes]) -> float:
    gw = Gateway(load_config(confdir(base, "direct")))
    gw.prepare_store()

    async def run() -> float:
        t = time.perf_counter()
        for raw in msgs:
            out = await gw.pipeline.deliver(Envelope("", ("account:bench",), raw,
                                                     source="STDIN", account="bench"))
            assert out.replies[0].ok, out
        return time.perf_counter() - t

    try:
        return asyncio.run(run())
    finally:
        gw.close()


def bench_stdin(base: Path, msgs: list[bytes]) -> float:
    conf = confdir(base, "stdin")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "db", "upgrade"],
                   check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    t = time.perf_counter()
    for raw in msgs:
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "deliver"],
                       input=raw, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t


def bench_poll(base: Path, dv: Dovecot, type_: str, msgs: list[bytes]) -> tuple[float, int]:
    dv.clear("helpdesk")
    dv.drop_into_maildir("helpdesk", msgs)
    gw = Gateway(load_config(confdir(base, type_, account_toml(dv, type_))))
    gw.prepare_store()
    acc = gw.config.account_by_name("bench")
    assert acc is not None
    try:
        t = time.perf_counter()
        result = asyncio.run(Poller(gw).poll(acc, trigger="bench"))
        elapsed = time.perf_counter() - t
    finally:
        gw.close()
    assert result.status == "Successful" and result.fetched == len(msgs), result
    assert dv.count("helpdesk") == 0
    return elapsed, result.connections


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best counts)")
    ap.add_argument("--stdin", type=int, default=20, help="messages for the deliver-CLI sample")
    args = ap.parse_args()
    from gateway.logs import setup_logging

    setup_logging("warning", "console")
    msgs = messages(args.messages, args.size)
    base = Path(tempfile.mkdtemp(prefix="deskgate-bench-poller-"))
    d = make_dovecot_dir()
    dv = Dovecot(d, TestCA(d / "ca"), {"helpdesk": "secret"})
    rows: list[tuple[str, int, float]] = []
    try:
        dv.start()
        bench_direct(base / "warmup", messages(50, args.size))   # imports, caches
        best: dict[str, float] = {}
        conns: dict[str, int] = {}
        for r in range(args.rounds):    # interleaved rounds, best of each (shared machine)
            t = bench_direct(base / f"direct{r}", msgs)
            best["direct"] = min(best.get("direct", t), t)
            for type_ in ("imaps", "pop3s"):
                elapsed, conns[type_] = bench_poll(base / f"r{r}", dv, type_, msgs)
                best[type_] = min(best.get(type_, elapsed), elapsed)
        direct = best["direct"]
        rows.append(("Pipeline.deliver, sequential (baseline)", len(msgs), direct))
        for type_ in ("imaps", "pop3s"):
            rows.append((f"poller {type_.upper()} drain ({conns[type_]} connections)",
                         len(msgs), best[type_]))
        if args.stdin:
            rows.append(("deskgate deliver < msg (a process each)", args.stdin,
                         bench_stdin(base, msgs[:args.stdin])))
    finally:
        dv.stop()
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    base_rate = len(msgs) / direct
    print(f"{args.messages} messages of ~{args.size} bytes, SQLite (WAL, synchronous=FULL)")
    print(f"best of {args.rounds} interleaved rounds per path")
    print(f"{'path':<48} {'msgs':>6} {'seconds':>8} {'msg/s':>8} {'vs baseline':>11}")
    for name, n, secs in rows:
        rate = n / secs
        print(f"{name:<48} {n:>6} {secs:>8.2f} {rate:>8.1f} {rate / base_rate:>10.2f}x")


if __name__ == "__main__":
    main()
