"""send, outqueue list|show|retry|delete|flush, dkim keygen."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import (
    EX_DATAERR,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    MAX_ID,
    add_json,
    envelope_problem,
    load,
    load_readonly,
    open_gateway,
    print_json,
    print_table,
    read_stdin_message,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection


def register(sub: Any) -> None:
    p = sub.add_parser("send", help="submit an outbound message from stdin")
    p.add_argument("--queue", "-q", help="queue whose system address sends it")
    p.add_argument("-r", "--recipient", action="append", default=[], metavar="RCPT",
                   help="envelope recipient (repeatable); default: To, Cc and Bcc")
    p.add_argument("-f", "--from", dest="mail_from", default="",
                   help="where failure notices go (default: the From address)")
    add_json(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("outqueue", help="the outbound queue (like postqueue)")
    osub = p.add_subparsers(dest="outqueue_command", metavar="ACTION")
    osub.required = True
    lp = osub.add_parser("list", help="messages waiting for delivery")
    lp.add_argument("--all", action="store_true", help="include sent and failed messages")
    lp.add_argument("--limit", type=int, default=1000,
                    help="at most this many rows, oldest first (default 1000)")
    add_json(lp)
    lp.set_defaults(func=cmd_list)
    sp = osub.add_parser("show", help="one message with its recipients")
    sp.add_argument("id", type=int, help="queue id (as outqueue list shows it)")
    add_json(sp)
    sp.set_defaults(func=cmd_show)
    rp = osub.add_parser("retry", help="try one message again now")
    rp.add_argument("id", type=int, help="queue id of a queued message")
    rp.set_defaults(func=cmd_retry)
    dp = osub.add_parser("delete", help="remove a message from the queue")
    dp.add_argument("id", type=int, help="queue id")
    add_json(dp)
    dp.set_defaults(func=cmd_delete)
    fp = osub.add_parser("flush", help="try every queued message again now")
    fp.set_defaults(func=cmd_flush)

    p = sub.add_parser("dkim", help="DKIM keys")
    dsub = p.add_subparsers(dest="dkim_command", metavar="ACTION")
    dsub.required = True
    kp = dsub.add_parser("keygen", help="write a DKIM key and print its DNS TXT record")
    kp.add_argument("domain", type=_dkim_domain, help="the signing domain (d=)")
    kp.add_argument("selector", type=_dkim_selector,
                    help="the selector (s=): letters, digits, hyphens, dots")
    kp.add_argument("--ed25519", action="store_true", help="Ed25519 instead of RSA-2048")
    kp.add_argument("--out", help="key file (default: the key_file of the [[dkim]] with this "
                    "domain and selector, else keys/dkim/DOMAIN.SELECTOR.pem)")
    kp.add_argument("--force", action="store_true", help="overwrite an existing file")
    kp.set_defaults(func=cmd_keygen)


def cmd_send(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.outbound.context import OutboundContext, unique_recipients
    from gateway.outbound.received import Received
    from gateway.outbound.rewrite import from_address, recipients_from_headers
    from gateway.outbound.service import outbound_pipeline

    problem = envelope_problem(args.mail_from, args.recipient)
    if problem:
        print(f"send: {problem}", file=sys.stderr)
        return EX_USAGE
    cfg = load(args)
    raw = read_stdin_message("send")
    if raw is None:
        return EX_DATAERR
    from email import message_from_bytes
    from email.policy import compat32

    msg = message_from_bytes(raw, policy=compat32)
    # As given (a relay keeps the local part's case, RFC 5321 2.4), each address once.
    rcpts = unique_recipients(args.recipient) or recipients_from_headers(msg)
    if not rcpts:
        print("send: no recipients (give -r or To/Cc/Bcc)", file=sys.stderr)
        return EX_DATAERR
    if args.queue and cfg.queue_by_name(args.queue) is None:
        print(f"send: no [[queue]] named {args.queue!r}", file=sys.stderr)
        return EX_DATAERR
    gw = open_gateway(cfg, "send")
    if gw is None:
        return EX_TEMPFAIL
    try:
        ctx = OutboundContext(
            mail_from=args.mail_from or from_address(msg),
            recipients=rcpts, raw=raw, msg=msg, source="STDIN",
            account=os.environ.get("USER", "stdin"), trusted=True,
            requested_queue=args.queue or "",
            # As Postfix's pickup: by this host, from the user id that ran send.
            received=Received.local(cfg.gateway.hostname, uid=os.getuid()))
        result = asyncio.run(outbound_pipeline(gw, one_shot=True).submit(ctx))
    finally:
        gw.close()
    if args.json:
        print_json({"reply": str(result.reply), "id": result.outbound_id,
                    "ids": list(result.outbound_ids), "ticket": result.ticket_number,
                    "article_id": result.article_id, "message_id": result.message_id})
    elif result.reply.ok:
        ids = ", ".join(str(i) for i in result.outbound_ids or (result.outbound_id,))
        print(f"queued as {ids} (ticket {result.ticket_number or '-'}, {result.message_id})")
    else:
        print(f"send: {result.reply}", file=sys.stderr)
    if result.reply.ok:
        return EX_OK
    return EX_TEMPFAIL if result.reply.temporary else EX_DATAERR


def _engine(args: argparse.Namespace, *, readonly: bool = False) -> Any:
    """An engine on the migrated database; `readonly` commands run on a broken config."""
    from gateway.store.db import ensure_schema, make_engine

    cfg = load_readonly(args) if readonly else load(args)
    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    ensure_schema(engine)
    return engine


def cmd_list(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from gateway.outbound.queue import list_queue
    from gateway.store.tables import OutboundMessage

    if not 1 <= args.limit <= MAX_ID:
        print(f"outqueue list: --limit must be between 1 and {MAX_ID}", file=sys.stderr)
        return 2
    engine = _engine(args, readonly=True)
    with engine.connect() as conn:
        rows = list_queue(conn, include_done=args.all, limit=args.limit)
        total = len(rows)
        if total == args.limit:     # perhaps cut: count what the list would hold
            q = select(func.count()).select_from(OutboundMessage)
            if not args.all:
                q = q.where(OutboundMessage.status == "queued")
            total = conn.execute(q).scalar_one()
    engine.dispose()
    cut = ""
    if total > len(rows):
        cut = f"showing {len(rows)} of {total} (use --limit to see more)"
    if args.json:
        print_json(rows)
        if cut:
            print(f"outqueue list: {cut}", file=sys.stderr)
        return EX_OK
    if not rows:
        print("outbound queue is empty")
        return EX_OK
    print_table([[r["id"], r["queue"], r["sender"] or "<>", ", ".join(r["recipients"]),
                  r["attempts"], f"{r['next_attempt']:%Y-%m-%d %H:%M:%S}",
                  r.get("status", ""), r["last_error"]] for r in rows],
                ["ID", "QUEUE", "SENDER", "RECIPIENTS", "TRIES", "NEXT", "STATUS", "LAST ERROR"])
    if cut:
        print(cut)
    return EX_OK


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.outbound.queue import show

    engine = _engine(args, readonly=True)
    with engine.connect() as conn:
        d = show(conn, args.id) if args.id <= MAX_ID else None
    engine.dispose()
    if d is None:
        print(f"outqueue: no message {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print_json(d)
        return EX_OK
    for k in ("id", "status", "kind", "queue", "sender", "return_path", "submitter",
              "message_id", "attempts", "next_attempt", "last_error", "ticket_id",
              "article_id", "size", "created"):
        print(f"{k:13} {d[k]}")
    if d["status"] == "queued" and d["claimed_by"] and d["lease_until"] is not None:
        from gateway.outbound.queue import utcnow

        if d["lease_until"] > utcnow():
            print(f"{'in delivery':13} by {d['claimed_by']} (lease until {d['lease_until']})")
        else:
            print(f"{'lost attempt':13} {d['claimed_by']} did not finish its attempt (its lease "
                  f"ran out at {d['lease_until']}); the next sender to take the message "
                  "sends it again (an interrupted attempt does not count)")
    print("recipients:")
    for r in d["recipient_status"]:
        # A failure's reply names its code (since the reason is stored), a delivery's not.
        code = "" if str(r["last_code"]) in r["last_reply"].split() else f"{r['last_code']} "
        print(f"  <{r['address']}> {r['status']} after {r['attempts']} tries"
              + (f": {code}{r['last_reply']}" if r["last_code"] else ""))
    print("\n" + d["headers"])
    return EX_OK


@contextlib.contextmanager
def _transaction(args: argparse.Namespace) -> Iterator[Connection]:
    """One write transaction on the configured database, engine disposed afterwards."""
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def cmd_retry(args: argparse.Namespace) -> int:
    from gateway.outbound.queue import retry_now

    with _transaction(args) as conn:
        n = retry_now(conn, args.id) if args.id <= MAX_ID else 0
    if not n:
        print(f"outqueue: no queued message {args.id}", file=sys.stderr)
        return 1
    print(f"message {args.id} will be tried again now")
    return EX_OK


def cmd_delete(args: argparse.Namespace) -> int:
    from gateway.outbound.queue import remove

    with _transaction(args) as conn:
        gone = remove(conn, args.id) if args.id <= MAX_ID else None
    if gone is None:
        print(f"outqueue: no message {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"id": gone.id, "deleted": True, "status": gone.status,
                    "in_delivery": gone.in_delivery, "claimed_by": gone.claimed_by,
                    "lease_until": gone.lease_until})
    elif gone.in_delivery:
        print(f"message {args.id} deleted while {gone.claimed_by} was delivering it: that "
              "attempt may still hand it to the relay, but its outcome is not recorded and "
              "the message is not tried again")
    else:
        print(f"message {args.id} deleted ({gone.status})")
    return EX_OK


def cmd_flush(args: argparse.Namespace) -> int:
    from gateway.outbound.queue import retry_now

    with _transaction(args) as conn:
        n = retry_now(conn)
    print(f"{n} queued message(s) will be tried again now")
    return EX_OK


def _dkim_selector(value: str) -> str:
    """The selector (s=), checked as `check` checks [[dkim]] selector."""
    from gateway.outbound.dkim import selector_problem

    problem = selector_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def _dkim_domain(value: str) -> str:
    """The signing domain (d=), checked as `check` checks [[dkim]] domain."""
    from gateway.outbound.dkim import domain_problem

    problem = domain_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def _keygen_file(args: argparse.Namespace) -> tuple[Path | None, str, bool]:
    """Where keygen writes the key: (path, '', whether a [[dkim]] names it), or
    (None, why it cannot tell, False).

    Only conf.d's [[dkim]] entries are read, not the whole configuration: the key
    file an entry names does not exist yet, and a broken unrelated setting must not
    keep the key from being made (`check` reports those)."""
    from gateway.outbound.dkim import dns_form
    from gateway.rawconf import config_dir, read_entries

    if args.out:
        return Path(args.out), "", False
    conf = config_dir(args.config)
    if not conf.is_dir():
        return None, f"{conf}: configuration directory does not exist", False
    # DNS names compare without case and an internationalised one by its A-labels, as
    # `check` compares [[dkim]] entries.
    named = sorted({e["key_file"] for e in read_entries(conf, "dkim")
                    if isinstance(e.get("domain"), str)
                    and dns_form(e["domain"]) == dns_form(args.domain)
                    and isinstance(e.get("selector"), str)
                    and e["selector"].lower() == args.selector.lower()
                    and isinstance(e.get("key_file"), str) and e["key_file"].strip()})
    if len(named) > 1:
        return None, (f"the [[dkim]] entries for {args.domain} selector {args.selector} "
                      f"name different key files ({', '.join(named)}); give --out"), False
    # Relative paths are relative to the parent of conf.d, as Config.path resolves them.
    path = Path(named[0] if named else f"keys/dkim/{args.domain}.{args.selector}.pem")
    return (path if path.is_absolute() else conf.parent / path), "", bool(named)


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.outbound.dkim import dns_record, generate_key, key_pem, zone_line
    from gateway.privatefiles import write_private

    out, problem, configured = _keygen_file(args)
    if out is None:
        print(f"dkim keygen: {problem}", file=sys.stderr)
        return 1
    if out.exists() and not args.force:
        print(f"dkim keygen: {out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    key = generate_key(args.ed25519)
    write_private(out, key_pem(key))
    print(f"; key written to {out}", file=sys.stderr)
    if configured:
        print(f"; the [[dkim]] for {args.domain} selector {args.selector} names this file",
              file=sys.stderr)
    else:
        print(f"; add to the configuration:\n; [[dkim]]\n; domain = \"{args.domain}\"\n"
              f"; selector = \"{args.selector}\"\n; key_file = \"{out}\"", file=sys.stderr)
    print(zone_line(args.domain, args.selector, dns_record(key)))
    return EX_OK
