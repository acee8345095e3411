"""addresses | queues | accounts | filters list, accounts check: the effective inventory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gateway.cli import DashValue
from gateway.cli.common import add_json, load, print_json, print_table

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from gateway.config import Config


def register(sub: Any) -> None:
    lp = _list_parser(sub, "addresses", "system addresses (files and database)",
                      "list system addresses", cmd_addresses)[1]
    lp.add_argument("--valid", choices=("valid", "invalid", "invalid-temporarily"),
                    help="only addresses with this validity")
    lp.add_argument("--queue", metavar="Q", help="only addresses of this queue")

    _list_parser(sub, "queues", "queues with their policies and open tickets", "list queues",
                 cmd_queues)

    csub, _ = _list_parser(sub, "accounts", "mail accounts of the poller",
                           "list accounts with their last poll and status", cmd_accounts)
    cp = csub.add_parser("check", help="connect, authenticate, select the folder and count; "
                                       "fetch and delete nothing")
    cp.add_argument("name", metavar="NAME", help="the [[account]] name")
    add_json(cp)
    cp.set_defaults(func=cmd_accounts_check)

    _list_parser(sub, "filters", "postmaster filters in evaluation order", "list filters",
                 cmd_filters)


def _list_parser(sub: Any, name: str, help_: str, list_help: str,
                 func: Callable[[argparse.Namespace], int]) -> tuple[Any, argparse.ArgumentParser]:
    """`deskgate NAME list [--search TEXT] [--json]`; returns (actions, list parser)."""
    p = sub.add_parser(name, help=help_)
    actions = p.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    actions.required = True
    lp = actions.add_parser("list", help=list_help)
    _add_search(lp)
    add_json(lp)
    lp.set_defaults(func=func)
    return actions, lp


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search", action=DashValue, metavar="TEXT",
                   help="only rows with TEXT in a shown field (case-insensitive)")


class _Store:
    """The database of an inventory list: conn is None before the first `db upgrade`
    (nothing to read) and when the database does not answer (then `unreadable`)."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.unreadable = False


@contextmanager
def _store(cfg: Config) -> Iterator[_Store]:
    """The configured database when it exists; config only (with a warning naming
    gateway.database and the reason) when it does not answer."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway import inventory
    from gateway.cli.common import database_failure

    store = _Store()
    try:
        engine = inventory.open_store(cfg)
    except SQLAlchemyError as exc:
        line = database_failure(cfg.database_url, exc) or exc.__class__.__name__
        print(f"warning: database not readable, showing the configuration only: {line}",
              file=sys.stderr)
        store.unreadable = True
        engine = None
    if engine is None:
        yield store
        return
    try:
        with engine.connect() as conn:
            store.conn = conn
            yield store
    finally:
        engine.dispose()


def _cells(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[list[str]]:
    from gateway import inventory

    return [[inventory.display(r.get(f)) for f in fields] for r in rows]


def _headers(fields: tuple[str, ...]) -> list[str]:
    return [f.upper() for f in fields]


def cmd_addresses(args: argparse.Namespace) -> int:
    from gateway import inventory

    cfg = load(args)
    with _store(cfg) as store:
        rows = inventory.list_addresses(cfg, store.conn, text=args.search, valid=args.valid,
                                        queue=args.queue)
    if args.json:
        print_json(rows)
    else:
        print_table(_cells(rows, inventory.ADDRESS_FIELDS), _headers(inventory.ADDRESS_FIELDS))
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    from gateway import inventory

    cfg = load(args)
    with _store(cfg) as store:
        rows = inventory.list_queues(cfg, store.conn, text=args.search)
    if store.unreadable:     # not counted: unknown, not 0
        rows = [{**r, "open_tickets": None} for r in rows]
    if args.json:
        print_json(rows)
    else:
        print_table(_cells(rows, inventory.QUEUE_FIELDS), _headers(inventory.QUEUE_FIELDS))
    return 0


ACCOUNT_TABLE = ("name", "type", "host", "port", "login", "folder", "trusted", "dispatch",
                 "queue", "interval", "valid", "last_poll", "last_result", "status", "comment")


def cmd_accounts(args: argparse.Namespace) -> int:
    from gateway import inventory

    cfg = load(args)
    with _store(cfg) as store:
        rows = inventory.list_accounts(cfg, store.conn, text=args.search)
    if args.json:
        print_json(rows)
    else:
        print_table(_cells(rows, ACCOUNT_TABLE), _headers(ACCOUNT_TABLE))
    return 0


FILTER_TABLE = ("order", "name", "stop_after_match", "conditions", "settings", "source")


def cmd_filters(args: argparse.Namespace) -> int:
    from gateway import inventory

    cfg = load(args)
    rows = inventory.list_filters(cfg, text=args.search)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        stop = "  (stop after match)" if r["stop_after_match"] else ""
        print(f"{r['order']:>3}. {r['name']}{stop}\n     file: {r['source']}")
        for c in r["match"]:
            print(f"     match: {inventory.condition_text(c)}")
        for c in r["any"]:
            print(f"     any:   {inventory.condition_text(c)}")
        for k, v in r["settings"].items():
            print(f"     set:   {k} = {v}")
        if r["comment"]:
            print(f"     comment: {r['comment']}")
    if not rows:
        print("no filters")
    return 0


def cmd_accounts_check(args: argparse.Namespace) -> int:
    """Exit 0 when every step works; 1 when one fails or no such account is configured
    (the general "an error the message explains" code of docs/cli.md)."""
    from gateway.inbound.poller.check import check_account

    cfg = load(args)
    account = cfg.account_by_name(args.name)
    if account is None:
        known = ", ".join(a.name for a in cfg.account) or "none configured"
        print(f"accounts check: no [[account]] named {args.name!r} (accounts: {known})",
              file=sys.stderr)
        return 1
    result = check_account(account, cfg).as_dict()
    result["valid"] = account.valid
    if args.json:
        print_json(result)
        return 0 if result["ok"] else 1
    print(f"Account {account.name}: {account.type} {result['host']}:{result['port']}, "
          f"login {account.login}, folder {account.folder}"
          + ("" if account.valid else " (valid = false: the poller skips it)"))
    width = max(len(s["name"]) for s in result["steps"])
    for s in result["steps"]:
        verdict = "ok" if s["ok"] else ("FAILED" if s["ok"] is False else "-")
        print(f"  {s['name']:<{width}}  {verdict:<6}  {s['detail']}")
    if result["ok"]:
        print(f"OK: {result['messages']} message{'' if result['messages'] == 1 else 's'} "
              "waiting; nothing was fetched or deleted.")
        return 0
    failed = next((s for s in result["steps"] if s["ok"] is False), None)
    where = f" at {failed['name']}: {failed['detail']}" if failed else ""
    print(f"FAILED{where}")
    return 1
