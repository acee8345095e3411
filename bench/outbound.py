#!/usr/bin/env python3
"""Outbound relay throughput and DKIM signing cost, in one invocation.

1. End to end: Postfix smtp-source submits N messages over SMTP to `deskgate serve`
   (submission, rewrite, DKIM, durable queue, sender) which relays them to Postfix
   smtp-sink; delivered/s is N over the time until smtp-sink counted N. Runs with
   DKIM off and on (RSA-2048), and smtp-source straight into smtp-sink as the
   machine's ceiling.
2. Raw RSA-2048 PKCS#1 v1.5 signatures/s: dkimpy's own pure-Python RSA versus
   `cryptography` (what deskgate uses), and a whole DKIM signature of a 5 KB
   message with dkimpy's dkim.sign() versus deskgate's sign().

    python bench/outbound.py [--messages 2000] [--sessions 10] [--size 5000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.outbound.dkim import DkimKey, generate_key, key_pem, sign  # noqa: E402

CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"
[lmtp]
listen = ["unix:var/run/lmtp.sock"]
[dashboard]
listen = ""
[postmaster]
default_queue = "Support"
max_emails_per_address_per_day = 1000000
[[queue]]
name = "Support"
address = "support@example.org"
[[address]]
email = "support@example.org"
display_name = "Example Support"
queue = "Support"
[submission]
listen = ["127.0.0.1:{sub_port}"]
allow_networks = ["127.0.0.0/8"]
max_message_size = "1MiB"
max_sessions_per_ip = 0       # smtp-source -d reconnects before the old session is released
[relay]
host = "127.0.0.1"
port = {relay_port}
security = "none"
retry = "1s*10"
poll_interval = "500ms"
concurrency = {concurrency}
"""

DKIM_CONF = """
[[dkim]]
domain = "example.org"
selector = "bench"
key_file = "{key}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class Sink:
    """smtp-sink with running counters (-c) in a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.out = tmp / f"sink-{self.port}.out"
        args = ["smtp-sink", "-c"] + (["-u", "root"] if os.geteuid() == 0 else [])
        self.fh = self.out.open("wb")
        self.proc = subprocess.Popen([*args, f"127.0.0.1:{self.port}", "512"], stdout=self.fh,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)

    def count(self) -> int:
        text = self.out.read_bytes().decode("latin-1").replace("\r", "\n")
        last = 0
        for part in text.split():
            if part.startswith("mesg="):
                last = int(part[5:])
        return last

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.fh.close()


def load(port: int, messages: int, sessions: int, size: int) -> None:
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-d", "-f", "app@load.test", "-t", "customer@customer.test",
                    "-M", "load.test", f"127.0.0.1:{port}"],
                   check=True, timeout=1800, stdout=subprocess.DEVNULL)


def wait_count(sink: Sink, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while sink.count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink got {sink.count()} of {n}")
        time.sleep(0.02)
    return time.perf_counter()


def ceiling(tmp: Path, messages: int, sessions: int, size: int) -> float:
    sink = Sink(tmp)
    try:
        t0 = time.perf_counter()
        load(sink.port, messages, sessions, size)
        return messages / (wait_count(sink, messages) - t0)
    finally:
        sink.stop()


def relay_run(tmp: Path, *, dkim: bool, messages: int, sessions: int, size: int,
              concurrency: int) -> tuple[float, float]:
    """(delivered/s end to end, accepted/s at submission)."""
    sink = Sink(tmp)
    root = tmp / f"gw-{'dkim' if dkim else 'plain'}-{sink.port}"
    (root / "conf.d").mkdir(parents=True)
    sub_port = free_port()
    conf = CONF.format(sub_port=sub_port, relay_port=sink.port, concurrency=concurrency)
    if dkim:
        key = root / "dkim.pem"
        key.write_bytes(key_pem(generate_key()))
        key.chmod(0o600)          # `check` refuses a key that group or others may read
        conf += DKIM_CONF.format(key=key)
    (root / "conf.d" / "10.toml").write_text(conf)
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(root / "conf.d"),
                             "serve"], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_port(sub_port)
        t0 = time.perf_counter()
        load(sub_port, messages, sessions, size)
        t_accepted = time.perf_counter()
        t_done = wait_count(sink, messages)
        return messages / (t_done - t0), messages / (t_accepted - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        sink.stop()


def rsa_rates(seconds: float) -> tuple[float, float]:
    """RSA-2048 signatures/s: dkimpy's pure-Python RSA, then cryptography's."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    key = generate_key()
    pk = parse_pem_private_key(key_pem(key))   # dkimpy's own key form, parsed once

    def rate(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        """(per wall-clock second, per CPU second of this thread = per core)."""
        n, t0, c0 = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - t0 < seconds:
            fn(n)
            n += 1
        return n / (time.perf_counter() - t0), n / max(time.thread_time() - c0, 1e-9)

    slow = rate(lambda i: RSASSA_PKCS1_v1_5_sign(hashlib.sha256(b"%d" % i), pk))
    fast = rate(lambda i: key.sign(b"%d" % i, padding.PKCS1v15(), hashes.SHA256()))  # type: ignore[union-attr]
    return slow, fast


def dkim_sign_rates(seconds: float, size: int) -> tuple[float, float]:
    """Whole DKIM signatures/s of one message: dkimpy's dkim.sign(), then deskgate's sign()."""
    import dkim

    key = generate_key()
    pem = key_pem(key)
    msg = (b"From: Example Support <support@example.org>\r\nTo: c@customer.test\r\n"
           b"Subject: bench\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <b@example.org>\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size // 78))
    k = DkimKey("example.org", "bench", key)

    def rate(fn) -> float:  # type: ignore[no-untyped-def]
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return n / (time.perf_counter() - t0)

    slow = rate(lambda: dkim.sign(msg, b"bench", b"example.org", pem,
                                  canonicalize=(b"relaxed", b"relaxed")))
    fast = rate(lambda: sign(msg, [k]))
    return slow, fast


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8, help="relay connections")
    ap.add_argument("--seconds", type=float, default=3.0, help="per signing measurement")
    ap.add_argument("--quick", action="store_true", help="500 messages, 1 s per signing run")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.seconds = 500, 1.0
    if not (shutil.which("smtp-sink") and shutil.which("smtp-source")):
        print("needs Postfix's smtp-sink and smtp-source on PATH", file=sys.stderr)
        return 1

    print(f"# outbound relay, {args.messages} messages of {args.size} B, "
          f"{args.sessions} submission sessions, {args.concurrency} relay connections")
    with tempfile.TemporaryDirectory(prefix="bench-outbound-") as d:
        tmp = Path(d)
        top = ceiling(tmp, args.messages, args.sessions, args.size)
        off, off_acc = relay_run(tmp, dkim=False, messages=args.messages,
                                 sessions=args.sessions, size=args.size,
                                 concurrency=args.concurrency)
        on, on_acc = relay_run(tmp, dkim=True, messages=args.messages,
                               sessions=args.sessions, size=args.size,
                               concurrency=args.concurrency)
    print(f"smtp-source → smtp-sink (ceiling)     {top:9.0f} msg/s")
    print(f"deskgate, DKIM off: delivered         {off:9.0f} msg/s  (accepted {off_acc:.0f}/s)")
    print(f"deskgate, DKIM on (RSA-2048)          {on:9.0f} msg/s  (accepted {on_acc:.0f}/s)")
    print(f"ratio DKIM on / off                   {on / off:9.2f}")
    print(f"ratio deskgate (DKIM off) / ceiling   {off / top:9.3f}")

    (slow, slow_cpu), (fast, fast_cpu) = rsa_rates(args.seconds)
    print("\n# RSA-2048 PKCS#1 v1.5 signatures, one thread (per CPU-second = per core)")
    print(f"dkimpy's pure-Python RSA              {slow:9.0f} sig/s  "
          f"({1000 / slow:.2f} ms; {slow_cpu:.0f} per CPU-second)")
    print(f"cryptography (deskgate)               {fast:9.0f} sig/s  "
          f"({1000 / fast:.2f} ms; {fast_cpu:.0f} per CPU-second)")
    print(f"ratio                                 {fast / slow:9.1f}x  (target >= 1,000 sig/s per "
          f"core: {'met' if fast_cpu >= 1000 else 'NOT met'})")
    dslow, dfast = dkim_sign_rates(args.seconds, args.size)
    print(f"\n# whole DKIM signature of a {args.size} B message (relaxed/relaxed)")
    print(f"dkimpy dkim.sign()                    {dslow:9.0f} msg/s  ({1000 / dslow:.2f} ms)")
    print(f"deskgate sign()                       {dfast:9.0f} msg/s  ({1000 / dfast:.2f} ms)")
    print(f"ratio                                 {dfast / dslow:9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
