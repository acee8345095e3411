#!/usr/bin/env python3
"""The classifier at helpdesk scale: training time on 10,000 stored tickets and the
inference latency per message (p50/p99), in this one invocation.

1. Generates the test corpus (four queues, en/de/fr, typos, quoted replies) and
   stores --tickets of it through the real pipeline (SQLite in a temp dir).
2. Trains as `deskgate classify train` does (load from the store, held-out
   evaluation of both algorithms, refit, write the model) and times each step.
3. Loads the written model and times, for --messages mails it never saw, the
   prepare stage `classify` (text normalisation + features + both heads) and the
   prediction alone; reports p50/p99 and the held-out accuracy.

    python bench/classify.py [--tickets 10000] [--messages 2000] [--evaluate]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import Gateway  # noqa: E402
from gateway.commlog import CommObj  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.logs import setup_logging  # noqa: E402
from gateway.model import Envelope, MessageContext  # noqa: E402
from tests.integration.classify.conftest import ADDRESS, write_conf  # noqa: E402
from tests.integration.classify.corpus import generate, to_bytes  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def store(gw: Gateway, mails: list, batch: int = 100) -> float:
    async def run() -> None:
        for i in range(0, len(mails), batch):
            envs = [Envelope(mail_from="", recipients=(ADDRESS[m.queue],),
                             raw=f"X-Deskgate-Priority: {m.priority}\r\n".encode()
                             + to_bytes(m, ADDRESS[m.queue]), source="STDIN",
                             account="bench", trusted=True) for m in mails[i:i + batch]]
            await asyncio.gather(*(gw.pipeline.deliver(e) for e in envs))
    t0 = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", type=int, default=10000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--evaluate", action="store_true", help="also time a 5-fold evaluate")
    args = ap.parse_args()
    setup_logging("error", "console")

    from gateway.classify import predict_stage
    from gateway.classify.model import cross_validate, load
    from gateway.classify.text import message_text
    from gateway.classify.train import examples_for, train_and_activate
    from gateway.inbound.parse import parse_message

    mails = generate(args.tickets + args.messages, seed=2026)
    history, unseen = mails[:args.tickets], mails[args.tickets:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = root / "var" / "classifier"
        cfg = load_config(write_conf(root, model_dir, "enabled = true\nmin_confidence = 0.7"))
        gw = Gateway(cfg)
        gw.prepare_store()
        took = store(gw, history)
        print(f"stored {len(history)} tickets through the pipeline in {took:.1f} s")

        t0 = time.perf_counter()
        examples = examples_for(cfg, gw.engine)
        load_s = time.perf_counter() - t0
        steps: list[str] = []
        t0 = time.perf_counter()
        res = train_and_activate(cfg, gw.engine, progress=steps.append)
        train_s = time.perf_counter() - t0
        print(f"training on {len(examples)} tickets: {train_s:.1f} s in all "
              f"(loading them from the store alone {load_s:.1f} s)")
        for s in steps:
            print(f"  {s}")
        ev = res.meta["queue"]["evaluation"]
        print(f"  activated: {res.activated}; held-out queue accuracy {ev['accuracy']:.3f} "
              f"(majority baseline {ev['majority_baseline']:.3f}), macro-F1 {ev['macro_f1']:.3f}")
        npz = next(model_dir.glob("*.npz"))
        print(f"  model file {npz.stat().st_size / 1e6:.1f} MB")
        if args.evaluate:
            t0 = time.perf_counter()
            cv = cross_validate(examples, folds=5, min_per_class=cfg.classifier.min_per_class)
            print(f"evaluate (5-fold, both algorithms): {time.perf_counter() - t0:.1f} s; best "
                  f"{cv['best']} accuracy {cv['algorithms'][cv['best']]['accuracy']:.3f}")

        t0 = time.perf_counter()
        model = load(model_dir)
        print(f"model load: {(time.perf_counter() - t0) * 1000:.0f} ms")
        rt = gw.runtime
        raws = [to_bytes(m, "helpdesk@example.org") for m in unseen]
        for r in raws[:50]:     # warm-up
            model.predict(message_text(*_st(r, parse_message)))
        predict_ms, stage_ms = [], []
        right = 0
        for m, raw in zip(unseen, raws, strict=True):
            parsed = parse_message(raw)
            text = message_text(parsed.subject, parsed.body, parsed.body_html)
            t0 = time.perf_counter()
            p = model.predict(text)
            predict_ms.append((time.perf_counter() - t0) * 1000)
            right += p["queue"] == m.queue
            ctx = MessageContext(envelope=Envelope(mail_from="", recipients=(
                "helpdesk@example.org",), raw=raw), log=CommObj("Message"), parsed=parsed)
            t0 = time.perf_counter()
            predict_stage(ctx, rt)
            stage_ms.append((time.perf_counter() - t0) * 1000)
            assert ctx.classification is not None
        gw.close()
    print(f"inference on {len(unseen)} unseen mails (accuracy {right / len(unseen):.3f}):")
    print(f"  prediction       p50 {statistics.median(predict_ms):.3f} ms  "
          f"p99 {pct(predict_ms, 0.99):.3f} ms")
    print(f"  classify stage   p50 {statistics.median(stage_ms):.3f} ms  "
          f"p99 {pct(stage_ms, 0.99):.3f} ms  (text normalisation + prediction)")


def _st(raw: bytes, parse: object) -> tuple[str, str, str | None]:
    p = parse(raw)  # type: ignore[operator]
    return p.subject, p.body, p.body_html


if __name__ == "__main__":
    main()
