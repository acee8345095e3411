#!/usr/bin/env python3
"""Hand-off to the helpdesk: what LMTP accepts while the helpdesk is down, and how fast
and how late processed mail reaches the helpdesk.

Every figure comes with a baseline measured in this one invocation:

* lmtp-down: Postfix's smtp-source (LMTP, 5 KB, 20 sessions, connection reuse) into
  `deskgate serve` standalone (baseline) and into `deskgate serve` whose helpdesk
  (a webhook) is down, alternating rounds. The outbox must absorb it: ratio ≈ 1.
* webhook: the same load into deskgate handing off to a local webhook receiver;
  hand-off throughput (messages / (last delivered - first committed)) and the
  latency commit → delivered (p50/p99), against the receiver's own rate for the
  same documents POSTed directly with the same concurrency (baseline).

    python bench/handoff.py [--messages 2000] [--rounds 3] [--only lmtp-down|webhook]
"""

from __future__ import annotations

import argparse
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
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers.webhook import WebhookReceiver  # noqa: E402  (after the path setup)

SECRET = "bench-secret"  # noqa: S105 (a throwaway HMAC key for the local receiver)
CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"
[lmtp]
listen = ["unix:{sock}"]
unknown_recipient = "default-queue"
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
HELPDESK = """
[helpdesk]
type = "webhook"
url = "{url}"
secret_file = "webhook.secret"
retry = "1s*1000"
poll_interval = "0.5s"
concurrency = {concurrency}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_socket(path: str, timeout: float = 60) -> None:
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


def smtp_source(sock: str, messages: int, sessions: int, size: int) -> float:
    args = ["smtp-source", "-L", "-d", "-s", str(sessions), "-m", str(messages), "-l",
            str(size), "-f", "sender@load.test", "-t", "support@example.org", "-M", "load.test",
            f"unix:{sock}"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, timeout=3600, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - t0)


class Gateway:
    """`deskgate serve` in a process of its own on a fresh root."""

    def __init__(self, tmp: Path, name: str, helpdesk: str = "") -> None:
        self.root = tmp / name
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "conf.d").mkdir(parents=True)
        self.sock = str(self.root / "lmtp.sock")
        (self.root / "conf.d" / "10.toml").write_text(CONF.format(sock=self.sock) + helpdesk)
        secret = self.root / "webhook.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.root / "conf.d"), "serve"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_socket(self.sock)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def handoff_times(self) -> list[tuple[float, float]]:
        """(committed, delivered) of every delivered hand-off, in epoch seconds."""
        from sqlalchemy import create_engine, select

        from gateway.store.tables import Handoff

        engine = create_engine(f"sqlite:///{self.root / 'var' / 'deskgate.db'}")
        with engine.connect() as conn:
            rows = conn.execute(select(Handoff.created, Handoff.delivered)
                                .where(Handoff.status == "delivered")).all()
        engine.dispose()
        return [(c.timestamp(), d.timestamp()) for c, d in rows]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def wait_count(fn: Any, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while fn() < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ------------------------------------------------------------------ scenarios

def lmtp_while_down(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    closed = f"http://127.0.0.1:{free_port()}/down"      # nothing listens there
    runs: dict[str, list[float]] = {"standalone": [], "helpdesk down": []}
    for _ in range(a.rounds):
        for kind, extra in (("standalone", ""),
                            ("helpdesk down", HELPDESK.format(url=closed, concurrency=4))):
            gw = Gateway(tmp, "down" if extra else "plain", extra)
            try:
                runs[kind].append(smtp_source(gw.sock, a.messages, a.sessions, a.size))
            finally:
                gw.stop()
    base = statistics.median(runs["standalone"])
    down = statistics.median(runs["helpdesk down"])
    ratios = [d / b for b, d in zip(runs["standalone"], runs["helpdesk down"], strict=True)]
    print(f"lmtp-down   standalone {base:7.0f} msg/s  helpdesk down {down:7.0f} msg/s  "
          f"ratio {statistics.median(ratios):.2f}", flush=True)
    return {"standalone": base, "helpdesk_down": down, "ratio": statistics.median(ratios),
            "ratios": ratios}


def direct_posts(url: str, docs: list[bytes], concurrency: int) -> float:
    """The receiver's own rate: the same documents POSTed straight to it."""
    import hashlib
    import hmac

    def post(body: bytes) -> None:
        ts = str(int(time.time()))
        sig = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body,
                                   hashlib.sha256).hexdigest()
        req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310
            "Content-Type": "application/json", "X-Deskgate-Timestamp": ts,
            "X-Deskgate-Signature": sig})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (loopback)
            resp.read()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, docs))
    return len(docs) / (time.perf_counter() - t0)


def webhook(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Live: the receiver up during the LMTP load (latency commit → delivered). Drain:
    the load goes in while the receiver is down, then it comes up and the outbox
    drains (hand-off throughput), against direct POSTs of the same documents."""
    rows = []
    for _ in range(a.rounds):
        row: dict[str, float] = {}
        for mode in ("live", "drain"):
            receiver = WebhookReceiver(secret=SECRET, port=free_port())
            if mode == "live":
                receiver.start()
            gw = Gateway(tmp, "webhook", HELPDESK.format(url=receiver.url,
                                                         concurrency=a.concurrency))
            try:
                smtp_source(gw.sock, a.messages, a.sessions, a.size)
                t0 = time.time()
                if mode == "drain":
                    receiver.start()
                if not wait_count(lambda r=receiver: len(r.delivered()), a.messages, 900):
                    raise RuntimeError("not every message reached the receiver")
                times = gw.handoff_times()
            finally:
                gw.stop()
            lat = [d - c for c, d in times]
            if mode == "live":
                row["live_p50_ms"] = pct(lat, 0.5) * 1000
                row["live_p99_ms"] = pct(lat, 0.99) * 1000
                receiver.stop()
                continue
            row["drain"] = len(times) / (max(d for _, d in times) - t0)
            docs = [r.body.replace(b'"idempotency_key": "', b'"idempotency_key": "direct-')
                    for r in receiver.received if r.status == 200]
            row["direct"] = direct_posts(receiver.url, docs, a.concurrency)
            row["ratio"] = row["drain"] / row["direct"]
            receiver.stop()
        rows.append(row)
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"webhook     direct POSTs {out['direct']:7.0f} msg/s  outbox drain "
          f"{out['drain']:7.0f} msg/s  ratio {out['ratio']:.2f}  live commit→delivered "
          f"p50 {out['live_p50_ms']:.0f} ms p99 {out['live_p99_ms']:.0f} ms", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="[helpdesk] concurrency")
    ap.add_argument("--only", choices=("lmtp-down", "webhook"), action="append")
    a = ap.parse_args()
    if not shutil.which("smtp-source"):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2
    only = set(a.only or ["lmtp-down", "webhook"])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dg-bench-handoff-") as td:
        tmp = Path(td)
        tmp.chmod(0o755)
        if "lmtp-down" in only:
            results["lmtp_down"] = lmtp_while_down(tmp, a)
        if "webhook" in only:
            results["webhook"] = webhook(tmp, a)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "handoff.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
