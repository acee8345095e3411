#!/usr/bin/env python3
"""Where one inbound message's time goes after the LMTP protocol layer, in-process.

Drives `Gateway.deliver` (what the LMTP listener calls after DATA) from
--concurrency coroutines on one event loop, as that many LMTP sessions would,
with the production stage table, the group-commit writer and SQLite with
synchronous=FULL. No network. Each run uses a fresh database; the full pipeline
and a baseline (`--baseline parse`: only the parse stage, no commit stage; the
communication log and the commit are still written) alternate for --rounds
rounds, and the medians are printed with their same-run ratio.

    python bench/profile_inbound.py [--messages 2000] [--concurrency 20] [--rcpts 1]
                                    [--size 5120] [--filter REGEX] [--rounds 3]
                                    [--baseline parse|none] [--cprofile 25] [--json]
                                    [--prefill N]

Per message it prints: wall time (1 / throughput), CPU time of the event-loop
thread and of the writer thread, each stage's own time, the writer's time in the
commit job outside the stages (context copy, log entries, communication log),
the deferred rows written at the end of the transaction, COMMIT with its fsync,
and the hand-off of the reply back to the event loop (a latency, not a cost).
`--prefill N` first writes the rows of N earlier messages into each run's store
(short bodies, random Message-IDs): the cost of a new message on a grown store,
whose random-keyed index pages no longer stay in SQLite's page cache.
`--cprofile N` adds one profiled run of the full pipeline and prints the N
functions with the most own time, over all threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONF = """
[gateway]
hostname = "bench.test"
state_dir = "var"
[lmtp]
listen = []
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
FILTER_POLICY = """
[[filter]]
name = "bench"
match = [{{ header = "Subject", value = {pattern} }}]
set = {{ "X-Deskgate-Queue" = "Support" }}
"""
RCPTS = ["support@example.org"] + [f"user{i}@example.org" for i in range(1, 10)]


def message(i: int, size: int) -> bytes:
    """A plain-text message of about `size` bytes, CRLF line ends as LMTP delivers them."""
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    head = (f"From: Customer {i} <c{i}@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: printer {i} is broken\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@bench.test>\r\n"
            "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def make_root(base: Path, name: str, pattern: str) -> Path:
    conf = base / name / "conf.d"
    conf.mkdir(parents=True)
    (conf / "10-bench.toml").write_text(CONF)
    (base / name / "policies").mkdir()
    if pattern:
        (base / name / "policies" / "10-bench.toml").write_text(
            FILTER_POLICY.format(pattern=json.dumps(pattern)))
    return conf


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds a live thread has used (Linux: its pthread CPU clock)."""
    if thread is None or thread.ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


class Probe:
    """Timers around the stage functions, the commit jobs and the transaction."""

    def __init__(self) -> None:
        self.stage: dict[str, float] = defaultdict(float)
        self.reset()

    def reset(self) -> None:
        """Start counting (after the warm-up)."""
        self.stage.clear()
        self.job = self.job_end = 0.0
        self.flush = self.commit = self.commit_cpu = 0.0
        self.commit_at = self.commit_at_cpu = 0.0
        self.handoff: list[float] = []
        self.done_at: dict[int, float] = {}
        self.gc = 0.0
        self.gc_runs = [0, 0, 0]
        self._gc_t0 = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks hook: time spent collecting, on whichever thread it happens."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc += time.perf_counter() - self._gc_t0
            self.gc_runs[info["generation"]] += 1

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        # CPU time of the calling thread: the wall time of a stage on the writer
        # thread also holds the waits for the GIL while the event loop runs.
        stage, clock = self.stage, time.thread_time

        def timed(*args: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args)
            finally:
                stage[key] += clock() - t0
        return timed


def instrument(gw: Any, probe: Probe) -> None:
    """Time each commit job, the deferred rows + COMMIT (engine events) and the way back."""
    from sqlalchemy import event

    writer, wall, cpu = gw.writer, time.perf_counter, time.thread_time
    orig_run = writer.run_deferring

    async def run(job: Callable[[Any, Any], Any], **kw: Any) -> Any:
        batch = [0]

        def timed(conn: Any, later: Any) -> Any:
            batch[0] = writer.batches
            t0 = cpu()
            try:
                return job(conn, later)
            finally:
                probe.job_end = cpu()
                probe.job += probe.job_end - t0
        res = await orig_run(timed, **kw)
        done = probe.done_at.get(batch[0])
        if done is not None:
            probe.handoff.append(wall() - done)
        return res

    def on_commit(conn: Any) -> None:
        probe.commit_at, probe.commit_at_cpu = wall(), cpu()
        if probe.job_end:
            probe.flush += probe.commit_at_cpu - probe.job_end

    def committed() -> None:
        if probe.commit_at:
            now = wall()
            probe.commit += now - probe.commit_at
            probe.commit_cpu += cpu() - probe.commit_at_cpu
            probe.done_at[writer.batches] = now
            probe.commit_at = probe.job_end = 0.0

    orig_tx = writer._transaction

    @contextlib.contextmanager
    def transaction() -> Iterator[Any]:
        with orig_tx() as tx:
            yield tx
        committed()     # the transaction's context has committed (and unlocked)

    writer.run_deferring = run     # what the pipeline queues its commit jobs with
    writer._transaction = transaction
    event.listen(gw.engine, "commit", on_commit)


def stage_table(kind: str, probe: Probe | None) -> Any:
    from gateway.inbound.pipeline import Stages
    from gateway.inbound.stages import build_stages

    full = build_stages()
    if kind == "parse":
        table = Stages(prepare=tuple(s for s in full.prepare if s.name == "parse"), commit=())
    elif kind == "none":
        table = Stages(prepare=(), commit=())
    else:
        table = full
    if probe is None:
        return table
    return Stages(
        prepare=tuple(s._replace(fn=probe.wrap(f"prepare {s.name}", s.fn))
                      for s in table.prepare),
        commit=tuple(s._replace(fn=probe.wrap(f"commit {s.name}", s.fn)) for s in table.commit),
        offload=table.offload)


def prefill(gw: Any, n: int) -> None:
    """Rows of `n` earlier messages in the store, as the pipeline writes them (a raw
    message, a ticket, an article, a delivery, a communication log object with two
    entries; one communication per 50), with random Message-IDs and content hashes
    and short bodies: what matters is the size of the indexes a new message goes
    into, not the bytes of the old ones."""
    from sqlalchemy import insert

    from gateway.store.tables import (
        Article,
        CommEntry,
        CommObject,
        Communication,
        Delivery,
        RawMessage,
        Ticket,
    )

    when = datetime(2026, 11, 1, tzinfo=UTC)
    chunk = 10000
    with gw.engine.begin() as conn:
        for start in range(0, n, chunk):
            ids = range(start + 1, min(n, start + chunk) + 1)
            mids = {i: f"<{uuid.uuid4().hex}@old.test>" for i in ids}
            conn.execute(insert(RawMessage), [
                {"id": i, "sha256": uuid.uuid4().hex * 2, "size": 200, "data": b"x" * 200,
                 "created": when} for i in ids])
            conn.execute(insert(Ticket), [
                {"id": i, "number": f"20261101{i:010d}", "title": "old", "queue": "Raw",
                 "state": "new", "state_type": "new", "priority": "3 normal",
                 "created": when, "changed": when} for i in ids])
            conn.execute(insert(Article), [
                {"id": i, "ticket_id": i, "direction": "incoming", "sender_type": "customer",
                 "message_id": mids[i], "body": "old " * 50, "raw_id": i, "created": when}
                for i in ids])
            conn.execute(insert(Delivery), [
                {"message_id": mids[i], "content_hash": uuid.uuid4().hex * 2,
                 "recipient": "support@example.org", "article_id": i, "outcome": "stored",
                 "created": when} for i in ids])
            conn.execute(insert(Communication), [
                {"id": i, "direction": "Incoming", "status": "Successful",
                 "account_type": "LMTP", "start": when, "end": when}
                for i in ids if i % 50 == 1])
            conn.execute(insert(CommObject), [
                {"id": i, "communication_id": i - (i - 1) % 50, "type": "Message",
                 "status": "Successful", "start": when, "end": when, "article_id": i}
                for i in ids])
            conn.execute(insert(CommEntry), [
                {"object_id": i, "communication_id": i - (i - 1) % 50, "priority": "Info",
                 "key": k, "value": "old", "time": when}
                for i in ids for k in ("Envelope", "Ticket")])
    if gw.engine.dialect.name == "sqlite":
        # into the database file now, not by the checkpoint thread during the run
        with gw.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def run_once(base: Path, name: str, kind: str, a: argparse.Namespace,
             profile: bool = False) -> dict[str, Any]:
    """Deliver a.messages messages through a fresh gateway; the figures of the run."""
    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.logs import setup_logging

    cfg = load_config(make_root(base, name, a.filter))
    setup_logging(cfg.gateway.log_level, "json")
    probe = None if profile else Probe()
    gw = Gateway(cfg, stages=stage_table(kind, probe))
    gw.prepare_store()
    if a.prefill:
        prefill(gw, a.prefill)
    if probe is not None:
        instrument(gw, probe)
    msgs = [message(i, a.size) for i in range(a.messages)]
    rcpts = RCPTS[:a.rcpts]
    profiles: list[cProfile.Profile] = []
    profiling = threading.Event()

    def start_profile(*_: Any) -> None:
        """Installed in every new thread; takes over once the measured part begins."""
        if profiling.is_set():
            p = cProfile.Profile()
            profiles.append(p)
            p.enable()

    async def main() -> tuple[float, float, float]:
        todo = iter(msgs)

        if profile:
            threading.setprofile(start_profile)

        async def session() -> None:
            for raw in todo:
                out = await gw.deliver("sender@load.test", rcpts, raw, "127.0.0.1")
                if out.replies[0].code != 250 or out.action != "new":
                    raise SystemExit(f"delivery failed: {out}")
        # warm-up: imports, compiled statements, first connection
        await gw.deliver("sender@load.test", rcpts, message(-1, a.size), "127.0.0.1")
        if probe is not None:
            probe.reset()
        writer = next(t for t in threading.enumerate() if t.name == "db-writer")
        main_cpu, writer_cpu = time.thread_time(), thread_cpu(writer)
        if profile:
            profiling.set()
            profiles.append(mine := cProfile.Profile())
            mine.enable()
        if probe is not None:
            gc.callbacks.append(probe.on_gc)
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(session() for _ in range(a.concurrency)))
        finally:
            if probe is not None:
                gc.callbacks.remove(probe.on_gc)
        wall = time.perf_counter() - t0
        if profile:
            mine.disable()     # this thread's; the others end with their threads
        return wall, time.thread_time() - main_cpu, thread_cpu(writer) - writer_cpu

    batches0, jobs0 = gw.writer.batches, gw.writer.jobs
    stderr = sys.stderr
    with open(os.devnull, "w") as sink:   # the log lines are rendered, not shown
        sys.stderr = sink
        try:
            wall, loop_cpu, writer_cpu = run_loop(main())
        finally:
            sys.stderr = stderr
    batches, jobs = gw.writer.batches - batches0 - 1, gw.writer.jobs - jobs0 - 1
    gw.close()
    threading.setprofile(None)  # type: ignore[arg-type]
    n = a.messages
    us = 1e6 / n
    res: dict[str, Any] = {"kind": kind, "wall_us": wall * us, "msg_s": n / wall,
                           "loop_cpu_us": loop_cpu * us, "writer_cpu_us": writer_cpu * us,
                           "per_commit": jobs / max(1, batches)}
    if probe is not None:
        res["stages"] = {k: v * us for k, v in probe.stage.items()}
        commit_stages = sum(v for k, v in probe.stage.items() if k.startswith("commit "))
        res["job_rest_us"] = (probe.job - commit_stages) * us
        res["flush_us"] = probe.flush * us
        res["commit_us"] = probe.commit * us
        res["commit_cpu_us"] = probe.commit_cpu * us
        res["gc_us"] = probe.gc * us
        res["gc_runs"] = probe.gc_runs
        res["handoff_ms"] = sorted(probe.handoff)[len(probe.handoff) // 2] * 1e3 \
            if probe.handoff else float("nan")
    if profile:
        out = io.StringIO()
        stats = pstats.Stats(profiles[0], stream=out)
        for p in profiles[1:]:
            stats.add(p)
        stats.sort_stats(a.sort).print_stats(a.cprofile)
        res["cprofile"] = out.getvalue()
    return res


def run_loop(coro: Any) -> Any:
    """On uvloop when installed, as `deskgate serve` runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(full: list[dict[str, Any]], base: list[dict[str, Any]], a: argparse.Namespace
           ) -> dict[str, Any]:
    wall = med(full, "wall_us")
    loop_cpu, writer_cpu = med(full, "loop_cpu_us"), med(full, "writer_cpu_us")
    stages = {k: statistics.median(r["stages"].get(k, 0.0) for r in full)
              for k in full[0]["stages"]}
    ratio = statistics.median(b["wall_us"] / f["wall_us"] for f, b in zip(full, base, strict=True))
    print(f"\n{a.messages} messages of {a.size} bytes, {a.rcpts} recipient(s), "
          f"{a.concurrency} concurrent, filter={a.filter or '-'}, "
          f"medians of {a.rounds} rounds (CPUs: {os.cpu_count()})")
    print(f"full pipeline: {1e6 / wall:7.0f} msg/s  {wall:6.0f} µs/msg wall  "
          f"messages/commit {med(full, 'per_commit'):.1f}")
    print(f"baseline ({a.baseline}): {med(base, 'msg_s'):7.0f} msg/s  "
          f"{med(base, 'wall_us'):6.0f} µs/msg wall  (full/baseline throughput {ratio:.2f})")
    prepare = sum(v for k, v in stages.items() if k.startswith("prepare "))
    commit = sum(v for k, v in stages.items() if k.startswith("commit "))
    rows: list[tuple[str, str, float]] = []
    rows += [(k, "loop", v) for k, v in stages.items() if k.startswith("prepare ")]
    rows.append(("deliver outside the stages (context, reply, log line, ...)", "loop",
                 loop_cpu - prepare))
    rows += [(k, "writer", v) for k, v in stages.items() if k.startswith("commit ")]
    job_rest, flush = med(full, "job_rest_us"), med(full, "flush_us")
    rows.append(("commit job outside the stages (copy, log close, commlog)", "writer", job_rest))
    rows.append(("deferred rows at the end (deliveries, commlog)", "writer", flush))
    commit_cpu = med(full, "commit_cpu_us")
    rows.append(("COMMIT (CPU)", "writer", commit_cpu))
    rows.append(("writer outside the jobs: begin, queue, wake-ups", "writer",
                 writer_cpu - commit - job_rest - flush - commit_cpu))
    print(f"\n{'stage':<62} {'thread':<7} {'µs/msg':>7} {'share':>6}")
    total = loop_cpu + writer_cpu
    for name, thread, v in rows:
        print(f"{name:<62} {thread:<7} {v:7.1f} {v / total:6.1%}")
    print(f"{'event-loop thread CPU':<62} {'loop':<7} {loop_cpu:7.1f} {loop_cpu / total:6.1%}")
    print(f"{'writer thread CPU':<62} {'writer':<7} {writer_cpu:7.1f} "
          f"{writer_cpu / total:6.1%}")
    print(f"COMMIT + fsync (wall, per message) {med(full, 'commit_us'):.0f} µs; "
          f"writer → loop hand-off p50 {med(full, 'handoff_ms'):.2f} ms")
    print(f"garbage collection (included above, on either thread) {med(full, 'gc_us'):.0f} µs/msg; "
          f"collections of generation 0/1/2 in the last run: {full[-1]['gc_runs']}")
    return {"args": vars(a), "wall_us": wall, "loop_cpu_us": loop_cpu,
            "writer_cpu_us": writer_cpu, "ratio": ratio,
            "rows": [{"stage": n, "thread": t, "us": v} for n, t, v in rows],
            "full": full, "baseline": base}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=20, help="concurrent deliveries")
    ap.add_argument("--rcpts", type=int, default=1, choices=range(1, len(RCPTS) + 1))
    ap.add_argument("--size", type=int, default=5120, help="bytes per message")
    ap.add_argument("--filter", default="", metavar="REGEX",
                    help="one postmaster filter on the Subject with this pattern")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=0, metavar="N",
                    help="each run's store first holds the rows of N earlier messages")
    ap.add_argument("--baseline", choices=("parse", "none"), default="parse",
                    help="stage table of the baseline runs")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N",
                    help="one more, profiled run: the N functions with the most own time")
    ap.add_argument("--sort", choices=("tottime", "cumulative"), default="tottime",
                    help="order of the --cprofile listing")
    ap.add_argument("--json", action="store_true", help="write bench/results/profile_inbound.json")
    a = ap.parse_args()
    full: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dg-profile-") as td:
        tmp = Path(td)
        for i in range(a.rounds):
            base.append(run_once(tmp, f"base{i}", a.baseline, a))
            full.append(run_once(tmp, f"full{i}", "full", a))
            print(f"round {i + 1}: baseline {base[-1]['msg_s']:.0f} msg/s, "
                  f"full {full[-1]['msg_s']:.0f} msg/s", flush=True)
        out = report(full, base, a)
        if a.cprofile:
            prof = run_once(tmp, "profiled", "full", a, profile=True)
            print(f"\ncProfile of one full run (all threads, by {a.sort}; "
                  f"{prof['msg_s']:.0f} msg/s under the profiler):")
            print(prof["cprofile"])
    if a.json:
        results = ROOT / "bench" / "results"
        results.mkdir(exist_ok=True)
        with contextlib.suppress(KeyError):
            del out["args"]["func"]
        (results / "profile_inbound.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
