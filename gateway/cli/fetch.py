"""deskgate fetch [ACCOUNT]: poll mailboxes once from the shell."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import (
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    add_json,
    load,
    print_json,
    print_table,
)


def register(sub: Any) -> None:
    p = sub.add_parser("fetch", help="poll mail accounts now ([[account]])")
    p.add_argument("account", nargs="?", help="only this account (default: every valid one)")
    p.add_argument("--list-oversized", action="store_true",
                   help="list messages left on the server because they exceed max_message_size")
    p.add_argument("--status", action="store_true",
                   help="show the last run, the last error and the next attempt of each "
                   "account; poll nothing")
    add_json(p)
    p.set_defaults(func=cmd_fetch)


def _describe(r: Any) -> str:
    parts = [f"{r.fetched} fetched"]
    detail = [f"{n} {label}" for n, label in ((r.new, "new"), (r.followup, "follow-up"),
                                               (r.duplicate, "duplicate"), (r.ignored, "ignored"),
                                               (r.quarantined, "quarantined")) if n]
    if detail:
        parts[0] += " (" + ", ".join(detail) + ")"
    if r.failed:
        parts.append(f"{r.failed} failed")
    if r.oversized:
        parts.append(f"{r.oversized} oversized left on the server")
    if r.more:
        parts.append("more waiting (max_messages_per_run)")
    text = f"{r.account} ({r.type.upper()}): {r.status}: " + ", ".join(parts)
    if r.error:
        text += f" — {r.error}"
    return text


def cmd_fetch(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.app import Gateway

    cfg = load(args)
    acc = cfg.account_by_name(args.account) if args.account else None
    if args.account and acc is None:
        print(f"fetch: no [[account]] named {args.account!r}", file=sys.stderr)
        return EX_NOUSER
    if args.list_oversized:
        return _list_oversized(args, cfg)
    if args.status:
        return _status(args, cfg)
    if acc is not None:
        if not acc.valid:
            print(f"fetch: account {acc.name!r} has valid = false", file=sys.stderr)
            return EX_NOUSER
        accounts = [acc]
    else:
        accounts = [a for a in cfg.account if a.valid]
    gw = Gateway(cfg)
    try:
        gw.prepare_store()
        from gateway.inbound.poller.run import Poller

        poller = Poller(gw)

        async def run_all() -> list[Any]:
            return [await poller.poll(a, trigger="manual") for a in accounts]

        results = asyncio.run(run_all())
    finally:
        gw.close()
    if args.json:
        print_json([r.as_dict() for r in results])
    else:
        if not results:
            print("fetch: no valid [[account]] configured")
        for r in results:
            print(_describe(r))
    bad = [r for r in results if r.status in ("Failed", "Skipped")]
    return EX_TEMPFAIL if bad else EX_OK


def _list_oversized(args: argparse.Namespace, cfg: Any) -> int:
    from gateway.inbound.poller import state
    from gateway.store.db import ensure_schema, make_engine

    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        ensure_schema(engine)
        with engine.connect() as conn:
            rows = state.list_oversized(conn, args.account)
    finally:
        engine.dispose()
    if args.json:
        print_json([r.as_dict() for r in rows])
    else:
        # LIMIT: the max_message_size it was left under ("-": recorded before that was kept)
        print_table([(r.account, r.folder or "-", r.key, r.size,
                      "-" if r.limit is None else r.limit, r.sender, r.subject,
                      r.first_seen.strftime("%Y-%m-%d %H:%M")) for r in rows],
                    ("ACCOUNT", "FOLDER", "KEY", "SIZE", "LIMIT", "FROM", "SUBJECT", "SINCE"))
    return EX_OK


def _status(args: argparse.Namespace, cfg: Any) -> int:
    from gateway.inbound.poller import state
    from gateway.store.db import ensure_schema, make_engine

    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        ensure_schema(engine)
        with engine.connect() as conn:
            known = {s.account: s for s in state.account_status(conn)}
    finally:
        engine.dispose()
    rows = []
    for acc in cfg.account:
        if args.account and acc.name != args.account:
            continue
        st = known.get(acc.name)
        d = st.as_dict() if st else {"account": acc.name, "status": "", "last_start": None,
                                     "last_end": None, "last_fetched": 0, "last_error": "",
                                     "last_error_at": None, "last_success": None,
                                     "communication_id": None, "next_attempt": None}
        d.update(type=acc.type, valid=acc.valid)
        if not acc.valid:   # not polled: a time stored while it was valid does not hold
            d["next_attempt"] = None
        rows.append(d)
    if args.json:
        print_json(rows)
    else:
        _table_with_full_last_column(
            [(r["account"], r["type"], "yes" if r["valid"] else "no",
              r["status"] or "never ran", _when(r["last_end"] or r["last_start"]),
              r["last_fetched"], _when(r["next_attempt"]), r["last_error"]) for r in rows],
            ("ACCOUNT", "TYPE", "VALID", "STATUS", "LAST RUN", "FETCHED", "NEXT ATTEMPT",
             "LAST ERROR"))
    return EX_OK


def _table_with_full_last_column(rows: list[tuple[Any, ...]], headers: tuple[str, ...]) -> None:
    """A table whose last column (the error, read here and nowhere else in text) is
    printed whole: the server's answer comes at the end of a long reason."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(headers[i]), *(len(r[i]) for r in cells)])
              for i in range(len(headers) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*headers).rstrip())
    for r in cells:
        print(fmt.format(*r).rstrip())


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"
