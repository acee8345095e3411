"""log overview | list | show ID | purge — the communication log."""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway import commlog_names as names
from gateway.cli import DashValue
from gateway.cli.common import add_json, connect_store, load, load_readonly, print_json, print_table

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config


def parse_duration(value: str) -> float:
    """gateway.config.parse_duration, imported when an option needs it."""
    from gateway.config import parse_duration as parse

    return parse(value)


def _connect(cfg: Config, *, write: bool = False) -> contextlib.AbstractContextManager[Connection]:
    return connect_store(cfg, "log", "communication", "communication log", write=write)


def parse_when(value: str) -> datetime:
    """'2026-11-26', '2026-11-26T10:00', or a duration ago ('24h', '7d')."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{value!r} reaches back before year 1") from None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a time (2026-11-26T10:00) nor a duration ago (24h)"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _priority(value: str) -> str:
    try:
        return names.priorities_at_least(value)[-1]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    p = sub.add_parser("log", help="communication log: overview, list, show, purge")
    lsub = p.add_subparsers(dest="log_command", metavar="ACTION")
    lsub.required = True

    op = lsub.add_parser("overview", help="account status, failures, in progress, timing")
    op.add_argument("--period", type=_duration, default=86400.0,
                    help="look back this far (default 24h)")
    op.add_argument("--since", type=parse_when,
                    help="from this time on (a time, or a duration ago as --period)")
    op.add_argument("--status", choices=names.STATUSES,
                    help="only communications with this status")
    op.add_argument("--priority", type=_priority,
                    help="only communications with an entry at this priority or worse "
                         "(Error, Warn, Notice, Info, Debug)")
    op.add_argument("--search", action=DashValue,
                    help="only communications with this text in an entry "
                         "(case-insensitive) or the account")
    add_json(op)
    op.set_defaults(func=cmd_overview)

    lp = lsub.add_parser("list", help="communications, newest first")
    lp.add_argument("--since", type=parse_when, help="start at or after (time or '24h' ago)")
    lp.add_argument("--until", type=parse_when, help="start before (time or duration ago)")
    lp.add_argument("--direction", choices=names.DIRECTIONS, help="only this direction")
    lp.add_argument("--status", choices=names.STATUSES, help="only this status")
    lp.add_argument("--account", help="account name or type (LMTP, IMAPS, SMTP, ...)")
    lp.add_argument("--priority", type=_priority,
                    help="only communications with an entry at this priority or worse "
                         "(Error, Warn, Notice, Info, Debug)")
    lp.add_argument("--search", action=DashValue,
                    help="text in any entry (case-insensitive) or the account")
    lp.add_argument("--sort", action=DashValue, default="-start",
                    help=f"column: {', '.join(names.SORT_COLUMNS)}; prefix - to reverse "
                         "(default -start)")
    lp.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    lp.add_argument("--offset", type=int, default=0,
                    help="skip this many first (default 0), to page with --limit")
    add_json(lp)
    lp.set_defaults(func=cmd_list)

    sp = lsub.add_parser("show", help="one communication with its objects and entries")
    sp.add_argument("id", type=int, help="communication id (as log list shows it)")
    sp.add_argument("--priority", type=_priority, help="only entries at this priority or worse")
    add_json(sp)
    sp.set_defaults(func=cmd_show)

    pp = lsub.add_parser("purge", help="delete old communications now (serve does it daily)")
    add_json(pp)
    pp.set_defaults(func=cmd_purge)


def _fmt(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else ""


def cmd_overview(args: argparse.Namespace) -> int:
    from gateway import commlog_views as views

    cfg = load_readonly(args)
    with _connect(cfg) as conn:
        data = views.overview(conn, period=args.period, since=args.since, status=args.status,
                              priority=args.priority, search=args.search)
    if args.json:
        print_json(data)
        return 0
    avg = data["average_processing_seconds"]
    print(f"failed: {data['failed']}   processing now: {data['processing']}   "
          f"average processing: {'-' if avg is None else f'{avg:.3f} s'}")
    if data["accounts"]:
        print()
        print_table([(a["account_type"], a["account"], a["status"]) for a in data["accounts"]],
                    ["TYPE", "ACCOUNT", "STATUS"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gateway import commlog_views as views

    cfg = load_readonly(args)
    f = views.LogFilter(since=args.since, until=args.until, direction=args.direction,
                        status=args.status, account=args.account, priority=args.priority,
                        search=args.search, sort=args.sort, limit=args.limit,
                        offset=args.offset)
    try:
        f.validate()
    except ValueError as exc:
        print(f"log list: {exc}", file=sys.stderr)
        return 2
    with _connect(cfg) as conn:
        rows = views.list_communications(conn, f)
    if args.json:
        print_json(rows)
    else:
        print_table([(r["id"], r["direction"], r["status"], r["account_type"], r["account"],
                      _fmt(r["start"]), _fmt(r["end"])) for r in rows],
                    ["ID", "DIRECTION", "STATUS", "TYPE", "ACCOUNT", "START", "END"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gateway import commlog_views as views

    cfg = load_readonly(args)
    data = None
    if 0 < args.id <= views.MAX_ROWS:     # anything else is no database id
        with _connect(cfg) as conn:
            data = views.get_communication(conn, args.id, priority=args.priority)
    if data is None:
        print(f"log show: no communication {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print_json(data)
        return 0
    print(f"#{data['id']} {data['direction']} {data['account_type']} {data['account']}  "
          f"{data['status']}  {_fmt(data['start'])} → {_fmt(data['end'])}")
    for o in data["objects"]:
        links = []
        if o["ticket_number"]:
            links.append(f"ticket {o['ticket_number']}")
        if o["outbound_id"]:
            links.append(f"outbound #{o['outbound_id']}")
        print(f"\n  {o['type']} {o['status']}  {_fmt(o['start'])} → {_fmt(o['end'])}"
              + (f"  ({', '.join(links)})" if links else ""))
        for e in o["entries"]:
            print(f"    {_fmt(e['time'])}  {e['priority']:<6}  {e['key']}: {e['value']}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway import commlog_views as views

    cfg = load(args)
    with _connect(cfg, write=True) as conn:
        n = views.purge(conn, successful_after=cfg.gateway.purge_successful_after,
                        all_after=cfg.gateway.purge_all_after)
    if args.json:
        print_json({"purged": n})
    else:
        print(f"purged {n} communications")
    return 0
