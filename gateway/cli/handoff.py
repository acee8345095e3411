"""handoff list|show|retry|delete, helpdesk check."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.cli.common import (
    EX_OK,
    MAX_ID,
    add_json,
    load,
    load_readonly,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection


def register(sub: Any) -> None:
    p = sub.add_parser("handoff", help="hand-offs of processed mail to the helpdesk")
    hsub = p.add_subparsers(dest="handoff_command", metavar="ACTION")
    hsub.required = True
    lp = hsub.add_parser("list", help="hand-offs not delivered yet (pending, failed)")
    lp.add_argument("--status", choices=("pending", "failed", "delivered", "all"),
                    help="only this status (default: everything not delivered)")
    lp.add_argument("--limit", type=int, default=1000)
    add_json(lp)
    lp.set_defaults(func=cmd_list)
    sp = hsub.add_parser("show", help="one hand-off with its decisions and last error")
    sp.add_argument("id", type=int)
    add_json(sp)
    sp.set_defaults(func=cmd_show)
    rp = hsub.add_parser("retry", help="try a pending or failed hand-off again now "
                         "(all of them with --all)")
    rp.add_argument("id", type=int, nargs="?")
    rp.add_argument("--all", action="store_true", help="every pending and failed hand-off")
    add_json(rp)
    rp.set_defaults(func=cmd_retry)
    dp = hsub.add_parser("delete", help="remove a hand-off that is not delivered (the "
                         "ticket stays in deskgate; the helpdesk never gets this article)")
    dp.add_argument("id", type=int)
    add_json(dp)
    dp.set_defaults(func=cmd_delete)

    p = sub.add_parser("helpdesk", help="the helpdesk behind deskgate")
    hsub = p.add_subparsers(dest="helpdesk_command", metavar="ACTION")
    hsub.required = True
    cp = hsub.add_parser("check", help="log in to the helpdesk and report what was found")
    add_json(cp)
    cp.set_defaults(func=cmd_check)


@contextlib.contextmanager
def _connection(args: argparse.Namespace, *, write: bool = False) -> Iterator[Connection]:
    from gateway.store.db import ensure_schema, make_engine

    cfg = load(args) if write else load_readonly(args)
    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        ensure_schema(engine)
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.helpdesk.outbox import attempt_note, list_handoffs

    if not 0 <= args.limit <= MAX_ID:
        print(f"handoff list: --limit must be between 0 and {MAX_ID}", file=sys.stderr)
        return 2
    with _connection(args) as conn:
        rows = list_handoffs(conn, status=args.status, limit=args.limit)
    if args.json:
        print_json(rows)
        return EX_OK
    if not rows:
        print("no hand-offs" + (f" with status {args.status}" if args.status else " waiting"))
        return EX_OK
    print_table([[r["id"], r["ticket"] or f"id:{r['ticket_id']}", r["kind"], r["status"],
                  r["attempts"], attempt_note(r) or (f"{r['next_attempt']:%Y-%m-%d %H:%M:%S}"
                  if r["next_attempt"] else ""), r["helpdesk_ticket_number"]
                  or r["helpdesk_ticket_id"], r["last_error"]] for r in rows],
                ["ID", "TICKET", "KIND", "STATUS", "TRIES", "NEXT", "HELPDESK TICKET",
                 "LAST ERROR"])
    return EX_OK


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.helpdesk.outbox import attempt_note, show

    with _connection(args) as conn:
        d = show(conn, args.id) if args.id <= MAX_ID else None
    if d is None:
        print(f"handoff: no hand-off {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print_json(d)
        return EX_OK
    for k in ("id", "status", "kind", "helpdesk", "ticket", "ticket_id", "article_id",
              "subject", "from", "message_id", "attempts", "earlier_attempts",
              "next_attempt", "last_error",
              "created", "delivered", "helpdesk_ticket_id", "helpdesk_ticket_number", "key",
              "claimed_by", "lease_until", "in_delivery", "waiting_for"):
        print(f"{k:22} {'' if d[k] is None else d[k]}")
    if attempt_note(d):
        print(f"{'attempt':22} {attempt_note(d)}")
    print("decisions:")
    for k, v in sorted(d["decisions"].items()):
        print(f"  {k}: {v}")
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Each row retried starts a fresh cycle of attempts (`postsuper -r`); a row being
    handed off right now is left to that attempt."""
    from gateway.helpdesk.outbox import retry_now, show, status_of

    if (args.id is None) == (not args.all):
        print("handoff retry: give an ID or --all", file=sys.stderr)
        return 2
    if args.id is not None and args.id > MAX_ID:
        print(f"handoff: hand-off {args.id} does not exist", file=sys.stderr)
        return 1
    with _connection(args, write=True) as conn:
        res = retry_now(conn, args.id)
        status = status_of(conn, args.id) if args.id is not None else None
        busy = {args.id: show(conn, args.id)} if args.id in res.in_delivery else {}
    if not args.all and not res.retried and not res.in_delivery:
        why = "is already delivered" if status == "delivered" else "does not exist"
        print(f"handoff: hand-off {args.id} {why}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"retried": res.retried, "in_delivery": res.in_delivery})
        return EX_OK
    fresh = "with a fresh cycle of attempts on [helpdesk] retry"
    if args.all:
        print(f"{len(res.retried)} hand-off(s) will be tried again now, {fresh}")
        if res.in_delivery:
            print(f"{len(res.in_delivery)} being handed off right now: left to that attempt")
    elif res.retried:
        print(f"hand-off {args.id} will be tried again now, {fresh}")
    else:
        d = busy.get(args.id) or {}
        print(f"hand-off {args.id} is being handed off right now by "
              f"{d.get('claimed_by') or 'another node'}: its result decides what happens "
              "next (nothing changed)")
    return EX_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """The delete wins over an attempt under way (`postsuper -d` on the active queue):
    that attempt may still reach the helpdesk, but its result is not recorded."""
    from gateway.helpdesk.outbox import remove, status_of

    if args.id > MAX_ID:
        print(f"handoff: hand-off {args.id} does not exist", file=sys.stderr)
        return 1
    with _connection(args, write=True) as conn:
        gone = remove(conn, args.id)
        status = status_of(conn, args.id) if gone is None else None
    if gone is None:
        why = ("is already delivered; nothing to delete" if status == "delivered"
               else "does not exist")
        print(f"handoff: hand-off {args.id} {why}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"id": gone.id, "deleted": True, "status": gone.status,
                    "attempts": gone.attempts, "in_delivery": gone.in_delivery,
                    "claimed_by": gone.claimed_by, "lease_until": gone.lease_until})
    elif gone.in_delivery:
        print(f"hand-off {args.id} deleted while {gone.claimed_by} was handing it off: that "
              "attempt may still reach the helpdesk, but its result is not recorded and "
              "the hand-off is not tried again")
    else:
        print(f"hand-off {args.id} deleted ({gone.status})")
    return EX_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when every step is ok or warn, 1 when one failed or no helpdesk is set."""
    from gateway.helpdesk.worker import make_connector

    cfg = load(args)
    if not cfg.helpdesk.enabled:
        print("helpdesk check: no helpdesk configured ([helpdesk] type = \"none\"); "
              "deskgate runs standalone", file=sys.stderr)
        return 1
    connector = make_connector(cfg)
    try:
        steps = connector.check()
    except Exception as exc:
        steps = [("fail", "check", f"{type(exc).__name__}: {exc}")]
    finally:
        connector.close()
    ok = all(s != "fail" for s, _, _ in steps)
    if args.json:
        print_json({"type": cfg.helpdesk.type, "account": connector.account, "ok": ok,
                    "steps": [{"status": s, "step": k, "text": t} for s, k, t in steps]})
    else:
        print(f"helpdesk {cfg.helpdesk.type} at {connector.account}")
        for s, k, t in steps:
            print(f"  {s.upper():5} {k}: {t}")
        print("OK" if ok else "FAILED")
    return EX_OK if ok else 1
