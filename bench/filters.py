#!/usr/bin/env python3
"""Cost of the postmaster filters: the prepare pipeline (parse → decrypt → trust →
filters → loop → bounce → ignore) per message with 200 filters loaded against the
same pipeline with none, interleaved message by message in this one invocation.

Prints per-message medians, the added time (median of the paired differences)
and the ratio; the target is < 1 ms added per message.

    python bench/filters.py [--messages 3000] [--filters 200] [--body-share 0.1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.commlog import CommObj  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.inbound import pipeline  # noqa: E402
from gateway.inbound.filters import FilterSet, run_filters  # noqa: E402
from gateway.inbound.stages import build_stages  # noqa: E402
from gateway.logs import setup_logging  # noqa: E402
from gateway.model import Envelope, MessageContext  # noqa: E402
from gateway.runtime import Runtime, build_runtime  # noqa: E402

CONF = """
[gateway]
hostname = "bench.test"
[[queue]]
name = "Raw"
[[queue]]
name = "Support"
address = "support@example.org"
[[queue]]
name = "Junk"
[[address]]
email = "support@example.org"
queue = "Support"
"""

WORDS = ["printer", "invoice", "password", "reset", "vpn", "laptop", "monitor", "license",
         "renewal", "outage", "mail", "server", "backup", "restore", "order", "delivery",
         "refund", "account", "login", "error", "crash", "update"]


def make_filters(n: int, body_share: float, rnd: random.Random) -> str:
    """n filters shaped like real policies; most of them do not match a given message."""
    out = []
    for i in range(n):
        w1, w2 = rnd.sample(WORDS, 2)
        kind = rnd.random()
        if kind < body_share:
            match = (f'[{{ header = "Body", value = "{w1} id:\\\\s+(?P<ref>[A-Z]{{3}}-\\\\d+)" }}]')
            sets = f'{{ "X-Deskgate-DynamicField-Ref{i}" = "[**\\\\ref**]" }}'
        elif kind < 0.45:
            match = (f'[{{ header = "Subject", value = "\\\\b{w1}\\\\b" }}, '
                     f'{{ header = "From", email = "[a-z.]+@{w2}\\\\.example" }}]')
            sets = '{ "X-Deskgate-Queue" = "Support", "X-Deskgate-Priority" = "4 high" }'
        elif kind < 0.7:
            match = (f'[{{ header = "To", email = "{w1}@example\\\\.org" }}, '
                     f'{{ header = "X-Spam-Flag", value = "^yes$", not = true }}]')
            sets = '{ "X-Deskgate-Queue" = "Support" }'
        elif kind < 0.85:
            match = f'[{{ header = "X-Mailer", value = "{w1}[- ]?mailer {w2}" }}]'
            sets = '{ "X-Deskgate-Loop" = "yes" }'
        else:
            match = f'[{{ header = "Subject", value = "^\\\\[{w1}\\\\]" }}]'
            sets = f'{{ "X-Deskgate-Title" = "{w2} [***]" }}'
        extra = ""
        if rnd.random() < 0.15:
            extra = (f'any = [{{ header = "Cc", email = ".*@{w2}\\\\.example" }}, '
                     f'{{ header = "Reply-To", value = "{w1}" }}]\n')
        out.append(f'[[filter]]\nname = "f{i:04d}"\nmatch = {match}\n{extra}set = {sets}\n')
    return "\n".join(out)


def make_message(i: int, rnd: random.Random) -> bytes:
    w = rnd.sample(WORDS, 4)
    lines = [" ".join(rnd.choice(WORDS) for _ in range(12)) for _ in range(60)]  # ~5 KB
    if i % 10 == 0:
        lines.insert(3, f"{rnd.choice(WORDS)} id: ABC-{i}")
    body = "\r\n".join(lines)
    return (f"From: User {i} <user.{w[3]}@{w[0]}.example>\r\nTo: support@example.org\r\n"
            f"Cc: other.{w[2]}@{w[1]}.example\r\nSubject: {w[2]} problem with {w[3]} #{i}\r\n"
            f"Message-ID: <bench{i}@{w[0]}.example>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
            f"X-Mailer: Thunderbird 128\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def prepare_once(rt: Runtime, raw: bytes) -> float:
    env = Envelope(mail_from="a@b.example", recipients=("support@example.org",), raw=raw)
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    t0 = time.perf_counter()
    pipeline.prepare(ctx, rt, build_stages().prepare)
    return time.perf_counter() - t0


def filters_once(rt: Runtime, raw: bytes) -> float:
    """Only the filter stage, on a message already through parse/trust."""
    env = Envelope(mail_from="a@b.example", recipients=("support@example.org",), raw=raw)
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    for name, fn, _dropped in build_stages().prepare:
        if name == "filters":
            break
        fn(ctx, rt)
    assert isinstance(rt.filters, FilterSet)
    t0 = time.perf_counter()
    run_filters(rt.filters, ctx)
    return time.perf_counter() - t0


def end_to_end(policy: str, msgs: list[bytes]) -> tuple[list[float], list[float]]:
    """Whole pipeline (prepare, follow-up, route, store, commit on SQLite) one message at
    a time, alternating between a gateway without filters and one with them."""
    import asyncio

    from gateway.app import Gateway

    with tempfile.TemporaryDirectory() as tmp:
        gws = []
        for name, pol in (("none", ""), ("filters", policy)):
            root = Path(tmp) / name
            (root / "conf.d").mkdir(parents=True)
            (root / "conf.d" / "10.toml").write_text(textwrap.dedent(CONF))
            (root / "policies").mkdir()
            if pol:
                (root / "policies" / "50-bench.toml").write_text(pol)
            gw = Gateway(load_config(root / "conf.d"))
            gw.prepare_store()
            gws.append(gw)
        times: tuple[list[float], list[float]] = ([], [])

        async def run() -> None:
            for i, raw in enumerate(msgs):
                order = (0, 1) if i % 2 else (1, 0)
                for k in order:
                    env = Envelope(mail_from="a@b.example", recipients=("support@example.org",),
                                   raw=raw)
                    t0 = time.perf_counter()
                    await gws[k].pipeline.deliver(env)
                    times[k].append(time.perf_counter() - t0)

        try:
            asyncio.run(run())
        finally:
            for gw in gws:
                gw.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--filters", type=int, default=200)
    ap.add_argument("--body-share", type=float, default=0.1,
                    help="share of filters with a Body condition")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--e2e", type=int, default=500, metavar="N",
                    help="also N messages through the whole pipeline into SQLite (0: skip)")
    args = ap.parse_args()
    setup_logging("warning")
    rnd = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "conf.d").mkdir()
        (root / "conf.d" / "10.toml").write_text(textwrap.dedent(CONF))
        (root / "policies").mkdir()
        rt0 = build_runtime(load_config(root / "conf.d"))
        policy = make_filters(args.filters, args.body_share, rnd)
        (root / "policies" / "50-bench.toml").write_text(policy)
        t0 = time.perf_counter()
        cfg = load_config(root / "conf.d")
        rtn = build_runtime(cfg)
        load_s = time.perf_counter() - t0
    assert isinstance(rtn.filters, FilterSet)
    msgs = [make_message(i, rnd) for i in range(args.messages)]
    for raw in msgs[:200]:          # warm-up
        prepare_once(rt0, raw)
        prepare_once(rtn, raw)
    base, withf, diff, stage = [], [], [], []
    matched = 0
    for i, raw in enumerate(msgs):
        # alternate which one runs first so drift and caches hit both alike
        if i % 2:
            a = prepare_once(rt0, raw)
            b = prepare_once(rtn, raw)
        else:
            b = prepare_once(rtn, raw)
            a = prepare_once(rt0, raw)
        base.append(a)
        withf.append(b)
        diff.append(b - a)
        stage.append(filters_once(rtn, raw))
    for raw in msgs[:200]:
        env = Envelope(mail_from="a@b.example", recipients=("x@y",), raw=raw)
        ctx = MessageContext(envelope=env, log=CommObj("Message"))
        pipeline.prepare(ctx, rtn, build_stages().prepare)
        matched += sum(1 for t in ctx.trace if t.startswith("filter "))

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:.3f} ms"

    print(f"filters loaded: {len(rtn.filters.filters)} (compile + config load {load_s:.2f} s), "
          f"{args.messages} messages of ~{len(msgs[0]) // 1024} KB, "
          f"uses Body: {rtn.filters.uses_body}")
    print(f"filter matches per message (first 200): {matched / 200:.2f}")
    print(f"prepare pipeline, no filters     median {ms(base)}  "
          f"p90 {statistics.quantiles(base, n=10)[-1] * 1000:.3f} ms")
    print(f"prepare pipeline, {len(rtn.filters.filters)} filters    median {ms(withf)}  "
          f"p90 {statistics.quantiles(withf, n=10)[-1] * 1000:.3f} ms")
    print(f"added per message (median of paired differences): {ms(diff)}  (target < 1 ms)")
    print(f"filter stage alone: median {ms(stage)}")
    print(f"ratio with/without: {statistics.median(withf) / statistics.median(base):.2f}x")
    if args.e2e:
        e0, e1 = end_to_end(policy, msgs[: args.e2e])
        print(f"whole pipeline into SQLite, {args.e2e} messages each, one at a time: "
              f"no filters median {ms(e0)}, {args.filters} filters "
              f"median {ms(e1)}; added (median of paired differences) "
              f"{ms([b - a for a, b in zip(e0, e1, strict=True)])} "
              f"({statistics.median(e1) / statistics.median(e0):.2f}x); fsync-bound and noisy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
