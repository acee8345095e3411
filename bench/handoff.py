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
* otobo-pipe / otobo-rest (--otobo; needs OTOBO's source tarball, see
  DESKGATE_OTOBO_SRC in tests/peers/otobo.py, and PostgreSQL): a real OTOBO 11
  behind deskgate. Baselines: the same messages piped into PostMaster::Read one
  by one (what a pipe transport does), and the same tickets created straight
  through the REST web service with the same concurrency.

    python bench/handoff.py [--messages 2000] [--rounds 3] [--only lmtp-down|webhook|otobo]
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

from bench.lmtp import wait_socket  # noqa: E402  (after the path setup)
from tests.peers.webhook import WebhookReceiver  # noqa: E402

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


def smtp_source(sock: str, messages: int, sessions: int, size: int) -> float:
    args = ["smtp-source", "-L", "-d", "-s", str(sessions), "-m", str(messages), "-l",
            str(size), "-f", "sender@load.test", "-t", "support@example.org", "-M", "load.test",
            f"unix:{sock}"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, timeout=3600, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - t0)


class Gateway:
    """`deskgate serve` in a process of its own on a fresh root."""

    def __init__(self, tmp: Path, name: str, helpdesk: str = "",
                 secrets: dict[str, str] | None = None) -> None:
        self.root = tmp / name
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "conf.d").mkdir(parents=True)
        self.sock = str(self.root / "lmtp.sock")
        (self.root / "conf.d" / "10.toml").write_text(CONF.format(sock=self.sock) + helpdesk)
        for fname, value in {"webhook.secret": SECRET, **(secrets or {})}.items():
            secret = self.root / fname
            secret.write_text(value)
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
    drains (hand-off throughput from its first delivery on, and how long the probe
    took to notice), against direct POSTs of the same documents."""
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
            # The outbox's own pace: from the first delivery after the receiver came back
            # (the worker probes a dead helpdesk with a growing pause) to the last.
            first = min(d for _, d in times)
            row["drain"] = (len(times) - 1) / (max(d for _, d in times) - first)
            row["recovery_s"] = first - t0
            docs = [r.body.replace(b'"idempotency_key": "', b'"idempotency_key": "direct-')
                    for r in receiver.received if r.status == 200]
            row["direct"] = direct_posts(receiver.url, docs, a.concurrency)
            row["ratio"] = row["drain"] / row["direct"]
            receiver.stop()
        rows.append(row)
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"webhook     direct POSTs {out['direct']:7.0f} msg/s  outbox drain "
          f"{out['drain']:7.0f} msg/s  ratio {out['ratio']:.2f}  (first delivery "
          f"{out['recovery_s']:.1f} s after the receiver came back)  live commit→delivered "
          f"p50 {out['live_p50_ms']:.0f} ms p99 {out['live_p99_ms']:.0f} ms", flush=True)
    return out


def otobo_message(n: int, tag: str) -> bytes:
    body = f"The printer in room {n} prints nothing but blank pages. " * 60
    return (f"From: Customer {n} <c{n}@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: bench {tag} {n}\r\nMessage-ID: <bench-{tag}-{n}@customer.test>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def lmtp_send(sock: str, messages: list[bytes]) -> None:
    from tests.peers.lmtp import LmtpClient

    c = LmtpClient(Path(sock))
    c.lhlo()
    for m in messages:
        _, replies = c.transaction("sender@customer.test", ["support@example.org"], m)
        assert replies[0][0] == 250, replies
    c.close()


def otobo(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    """A real OTOBO: deskgate's hand-off (pipe, REST) against feeding OTOBO directly."""
    from tests.peers import otobo as ot

    why = ot.missing()
    if why:
        raise SystemExit(f"OTOBO cannot run here: {why}")
    n = a.otobo_messages
    site = ot.make_site()
    out: dict[str, Any] = {}
    try:
        # Pipe baseline: PostMaster::Read once per message, one after the other.
        o = site.new(tmp / "otobo-direct")
        msgs = [otobo_message(i, "direct") for i in range(n)]
        t0 = time.perf_counter()
        for m in msgs:
            o.read_mail(m)
        direct_pipe = n / (time.perf_counter() - t0)
        o.drop()
        for kind in ("pipe", "rest"):
            o = site.new(tmp / f"otobo-{kind}")
            if kind == "pipe":
                hd = (f'[helpdesk]\ntype = "otobo-postmaster"\n'
                      f'command = {json.dumps(o.postmaster_command())}\n')
            else:
                url = o.start_rest()
                hd = (f'[helpdesk]\ntype = "otobo-rest"\nurl = "{url}"\n'
                      f'user = "{ot.AGENT}"\npassword_file = "otobo.pass"\n')
            hd += f'retry = "1s*100"\npoll_interval = "0.5s"\nconcurrency = {a.concurrency}\n'
            gw = Gateway(tmp, f"gw-{kind}", hd, secrets={"otobo.pass": ot.AGENT_PASSWORD})
            try:
                lmtp_send(gw.sock, [otobo_message(i, kind) for i in range(n)])
                if not wait_count(lambda o=o: len(o.tickets()), n, 1200):
                    raise RuntimeError(f"OTOBO ({kind}) did not get every ticket")
                time.sleep(1.0)          # the last hand-offs' records
                times = gw.handoff_times()
            finally:
                gw.stop()
            lat = [d - c for c, d in times]
            rate = len(times) / (max(d for _, d in times) - min(c for c, _ in times))
            row = {"deskgate": rate, "p50_ms": pct(lat, 0.5) * 1000,
                   "p99_ms": pct(lat, 0.99) * 1000}
            if kind == "pipe":
                row["direct"] = direct_pipe
            else:
                row["direct"] = direct_rest(o.rest_url, n, a.concurrency)
                o.stop_rest()
            row["ratio"] = row["deskgate"] / row["direct"]
            out[kind] = row
            o.drop()
            base = "PostMaster::Read serially" if kind == "pipe" else "direct REST creates"
            print(f"otobo-{kind:4}  {base} {row['direct']:6.1f} msg/s  deskgate hand-off "
                  f"{rate:6.1f} msg/s  ratio {row['ratio']:.2f}  LMTP 250→ticket in OTOBO "
                  f"p50 {row['p50_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms", flush=True)
    finally:
        site.destroy()
    return out


def direct_rest(url: str, n: int, concurrency: int) -> float:
    """TicketCreate straight through OTOBO's web service, `concurrency` at a time."""
    from tests.peers import otobo as ot

    def create(i: int) -> None:
        body = json.dumps({
            "UserLogin": ot.AGENT, "Password": ot.AGENT_PASSWORD,
            "Ticket": {"Title": f"direct {i}", "Queue": "Support", "State": "new",
                       "Priority": "3 normal", "CustomerUser": f"d{i}@customer.test"},
            "Article": {"CommunicationChannel": "Email", "Subject": f"direct {i}",
                        "Body": "The printer prints nothing but blank pages. " * 60,
                        "ContentType": "text/plain; charset=utf8"}}).encode()
        req = urllib.request.Request(url + "/Ticket", data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 (loopback)
            answer = json.loads(resp.read())
        if "TicketID" not in answer:
            raise RuntimeError(f"OTOBO refused: {answer}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(create, range(n)))
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="[helpdesk] concurrency")
    ap.add_argument("--only", choices=("lmtp-down", "webhook", "otobo"), action="append")
    ap.add_argument("--otobo", action="store_true", help="also measure a real OTOBO")
    ap.add_argument("--otobo-messages", type=int, default=40,
                    help="messages per OTOBO scenario (PostMaster::Read takes ~1 s each)")
    a = ap.parse_args()
    if not shutil.which("smtp-source"):
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2
    only = set(a.only or ["lmtp-down", "webhook"] + (["otobo"] if a.otobo else []))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dg-bench-handoff-") as td:
        tmp = Path(td)
        tmp.chmod(0o755)
        if "lmtp-down" in only:
            results["lmtp_down"] = lmtp_while_down(tmp, a)
        if "webhook" in only:
            results["webhook"] = webhook(tmp, a)
        if "otobo" in only:
            results["otobo"] = otobo(tmp, a)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "handoff.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
