#!/usr/bin/env python3
"""Communication log read side on a big log (SQLite, WAL): how long the dashboard's and
`deskgate log`'s queries take against a plain `SELECT count(*)` baseline measured on the
same database in this invocation; plus the cost of the LMTP metrics per message.

    python bench/commlog.py [--communications 100000] [--rounds 5]

Each communication has one Message object with three entries (Info Envelope, Info
Ticket, and every 50th an Error), as the LMTP door writes them; 2 % are IMAPS poll runs
with a Connection object. Start times spread over 40 days.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from gateway import commlog_views as views  # noqa: E402
from gateway.store.db import make_engine, migrate  # noqa: E402
from gateway.store.tables import CommEntry, CommObject, Communication  # noqa: E402


def populate(engine, n: int) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        comms, objs, entries = [], [], []
        for i in range(1, n + 1):
            start = now - timedelta(seconds=rng.uniform(0, 40 * 86400))
            poll = i % 50 == 7
            status = "Failed" if i % 50 == 0 else "Successful"
            comms.append({"id": i, "direction": "Incoming", "status": status,
                          "account_type": "IMAPS" if poll else "LMTP",
                          "account": f"box{i % 5}" if poll else "unix", "start": start,
                          "end": start + timedelta(milliseconds=rng.uniform(2, 40))})
            objs.append({"id": i, "communication_id": i,
                         "type": "Connection" if poll else "Message", "status": status,
                         "start": start, "end": start + timedelta(milliseconds=5)})
            entries += [
                {"object_id": i, "communication_id": i, "priority": "Info", "key": "Envelope",
                 "value": f"from <cust{i}@customer.test> to <support@example.org>, 5120 bytes",
                 "time": start},
                {"object_id": i, "communication_id": i, "priority": "Info", "key": "Ticket",
                 "value": f"new ticket 2026112610{i:07d} in queue Support", "time": start}]
            if status == "Failed":
                entries.append({"object_id": i, "communication_id": i, "priority": "Error",
                                "key": "Store", "value": "database said no", "time": start})
            if len(comms) >= 5000:
                conn.execute(insert(Communication), comms)
                conn.execute(insert(CommObject), objs)
                conn.execute(insert(CommEntry), entries)
                comms, objs, entries = [], [], []
        if comms:
            conn.execute(insert(Communication), comms)
            conn.execute(insert(CommObject), objs)
            conn.execute(insert(CommEntry), entries)


def timed(fn: Callable[[], object], rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--communications", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(f"sqlite:///{d}/bench.db")
        migrate(engine)
        t0 = time.perf_counter()
        populate(engine, a.communications)
        print(f"populated {a.communications} communications in "
              f"{time.perf_counter() - t0:.1f} s")
        conn = engine.connect()

        def q(f: views.LogFilter) -> Callable[[], object]:
            return lambda: (views.list_communications(conn, f),
                            views.count_communications(conn, f))

        cases: list[tuple[str, Callable[[], object]]] = [
            ("baseline: SELECT count(*) FROM communication",
             lambda: conn.execute(select(func.count()).select_from(Communication)).scalar()),
            ("overview 24h", lambda: views.overview(conn)),
            ("overview 7d", lambda: views.overview(conn, period=7 * 86400)),
            ("list page 1 (newest 50 + count)", q(views.LogFilter(limit=50))),
            ("list --priority Error", q(views.LogFilter(priority="Error", limit=50))),
            ("list --since 24h --status Failed",
             q(views.LogFilter(since=datetime.now(UTC) - timedelta(days=1), status="Failed",
                               limit=50))),
            ("list --search cust4242@", q(views.LogFilter(search="cust4242@", limit=50))),
            ("list --sort -duration", q(views.LogFilter(sort="-duration", limit=50))),
            ("show one", lambda: views.get_communication(conn, a.communications // 2)),
        ]
        results = [(name, timed(fn, a.rounds)) for name, fn in cases]
        base = results[0][1]
        print(f"{'query':44} {'median ms':>10} {'x baseline':>11}")
        for name, t in results:
            print(f"{name:44} {t * 1000:10.2f} {t / base:11.1f}")
        conn.close()
        with engine.begin() as c:
            t0 = time.perf_counter()
            n = views.purge(c, successful_after=7 * 86400, all_after=31 * 86400)
        print(f"purge (7d/31d): {n} communications in {time.perf_counter() - t0:.2f} s")
        engine.dispose()

    from gateway import metrics
    k = 200_000
    t0 = time.perf_counter()
    for _ in range(k):
        pass
    empty = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(k):
        metrics.PIPELINE_SECONDS.labels("lmtp").observe(0.004)
        metrics.MESSAGES.labels("lmtp", "in", "new").inc()
    per = (time.perf_counter() - t0 - empty) / k
    print(f"LMTP metrics per message (histogram observe + counter inc): {per * 1e6:.2f} µs "
          f"({per / 2e-3 * 100:.3f} % of a 2 ms message)")


if __name__ == "__main__":
    main()
