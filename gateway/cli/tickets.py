"""tickets list | show N."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.common import add_json, connect_store, load, load_readonly, print_json, print_table

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import ColumnElement, Connection

    from gateway.config import Config


# The articles `tickets show` prints unless --limit says otherwise: a ticket a mail loop
# grew to thousands of articles is not read into memory whole.
SHOW_LIMIT = 100


def register(sub: Any) -> None:
    p = sub.add_parser("tickets", help="tickets, articles, attachments, crypto results")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION")
    tsub.required = True
    lp = tsub.add_parser("list", help="list tickets, newest first")
    lp.add_argument("--queue", help="only this queue (its name in any case)")
    lp.add_argument("--state", help="only this state")
    lp.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    add_json(lp)
    lp.set_defaults(func=cmd_list)
    sp = tsub.add_parser("show", help="one ticket with its articles")
    sp.add_argument("number", help="the ticket number (the helpdesk's, with a helpdesk), "
                    "or id:N for a ticket whose number the helpdesk has not told yet")
    sp.add_argument("--limit", type=int, default=SHOW_LIMIT,
                    help=f"at most this many articles, oldest first (default {SHOW_LIMIT})")
    sp.add_argument("--offset", type=int, default=0,
                    help="leave out this many articles first (default 0)")
    add_json(sp)
    sp.set_defaults(func=cmd_show)
    mp = tsub.add_parser("move", help="move a ticket to another queue (and priority); the "
                                      "correction teaches the classifier")
    mp.add_argument("number", help="the ticket number, or id:N")
    mp.add_argument("queue", help="the new queue")
    mp.add_argument("--priority", help="also set this priority")
    mp.add_argument("--by", default="", help="who moved it (recorded with the move)")
    add_json(mp)
    mp.set_defaults(func=cmd_move)
    from gateway.cli.keys import register_redecrypt

    register_redecrypt(tsub)


def ticket_summary(t: Any) -> dict[str, Any]:
    return {"number": t.number or "", "id": t.id, "title": t.title, "queue": t.queue,
            "state": t.state, "priority": t.priority, "created": t.created, "changed": t.changed,
            "customer_user": t.customer_user}


def queue_spellings(cfg: Config) -> list[str]:
    """Every queue name the configuration writes: [[queue]] names and the keys that refer
    to a queue by name (case-insensitively, so a ticket may carry any of them)."""
    return ([q.name for q in cfg.queue] + [cfg.postmaster.default_queue]
            + [a.queue for a in cfg.address] + [a.queue for a in cfg.account]
            + [u.default_queue for u in cfg.submission.user])


def queue_condition(queue: str, spellings: Iterable[str]) -> ColumnElement[bool]:
    """Tickets of `queue` in any case, as the configuration compares queue names: SQL's
    lower() folds ASCII only on SQLite, so the names of `spellings` (queue_spellings)
    that fold to the same are matched as written too ("BÜRO" finds the tickets of
    [[queue]] "Büro"). `tickets list --queue` and the dashboard's ticket list."""
    from sqlalchemy import func, or_

    from gateway.store.tables import Ticket

    folded = queue.lower()
    names = sorted({queue, *(n for n in spellings if n.lower() == folded)})
    return or_(Ticket.queue.in_(names), func.lower(Ticket.queue) == folded)


def list_tickets(conn: Connection, *, queue: str | None = None, state: str | None = None,
                 limit: int = 100, spellings: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Newest first. `queue` matches regardless of case (queue_condition)."""
    from sqlalchemy import select

    from gateway.store.tables import Ticket

    q = select(Ticket).order_by(Ticket.id.desc()).limit(limit)
    if queue:
        q = q.where(queue_condition(queue, spellings))
    if state:
        q = q.where(Ticket.state == state)
    return [ticket_summary(t) for t in conn.execute(q).all()]


def find_ticket(conn: Connection, number: str) -> Any:
    """By number (deskgate's or the helpdesk's), or `id:N` by deskgate's ticket id."""
    from gateway.store.repo import ticket_by_id, ticket_by_number

    if number.startswith("id:") and number[3:].isdigit() and len(number) < 22:
        return ticket_by_id(conn, int(number[3:]))
    return ticket_by_number(conn, number)


def helpdesk_state(conn: Connection, ticket_id: int, ticket_url: str = ""
                   ) -> dict[str, Any] | None:
    """`helpdesk{type, ticket_id, ticket_number, state, attempts, last_error, url}`."""
    from gateway.helpdesk.outbox import ticket_state
    from gateway.helpdesk.ticketlink import helpdesk_link

    hd = ticket_state(conn, ticket_id)
    if hd is not None:
        hd["url"] = helpdesk_link(ticket_url, hd)
    return hd


def ticket_detail(conn: Connection, number: str, ticket_url: str = "", *,
                  limit: int | None = None, offset: int = 0) -> dict[str, Any] | None:
    """The JSON of `tickets show N --json` (its field names are a stable contract).

    With `limit` (the dashboard's ticket page) only the articles offset ..
    offset+limit-1 in id order are read, and `article_count` counts them all."""
    from sqlalchemy import func, select

    from gateway.store.tables import Article, Attachment, Ticket, TicketMove

    t = find_ticket(conn, number)
    if t is None:
        return None
    query = select(Article).where(Article.ticket_id == t.id).order_by(Article.id)
    paged: dict[str, Any] = {}
    if limit is not None:
        query = query.limit(limit).offset(offset)
        paged["article_count"] = int(conn.execute(
            select(func.count()).select_from(Article)
            .where(Article.ticket_id == t.id)).scalar_one())
    arts = conn.execute(query).all()
    att_rows = conn.execute(select(Attachment.article_id, Attachment.filename,
                                   Attachment.content_type, Attachment.size)
                            .where(Attachment.article_id.in_([a.id for a in arts]))
                            .order_by(Attachment.id)).all() if arts else []
    atts: dict[int, list[dict[str, Any]]] = {}
    for r in att_rows:
        atts.setdefault(r.article_id, []).append(
            {"filename": r.filename, "content_type": r.content_type, "size": r.size})
    linked = None
    if t.linked_ticket_id:
        lt = conn.execute(select(Ticket.number).where(Ticket.id == t.linked_ticket_id)).first()
        linked = lt.number if lt else None
    return {
        **ticket_summary(t), "type": t.type, "service": t.service, "sla": t.sla,
        "customer_no": t.customer_no, "owner": t.owner, "responsible": t.responsible,
        "lock": t.lock, "pending_until": t.pending_until, "dynamic_fields": t.dynamic_fields,
        "linked_ticket": linked, "classification": t.classification or {},
        "moves": [{"from_queue": m.from_queue, "to_queue": m.to_queue,
                   "from_priority": m.from_priority, "to_priority": m.to_priority,
                   "by": m.by, "created": m.created}
                  for m in conn.execute(select(TicketMove).where(TicketMove.ticket_id == t.id)
                                        .order_by(TicketMove.id))],
        "helpdesk": helpdesk_state(conn, t.id, ticket_url),
        **paged,
        "articles": [{
            "id": a.id, "message_id": a.message_id, "direction": a.direction,
            "sender_type": a.sender_type, "is_visible_for_customer": a.is_visible_for_customer,
            "from": a.from_addr, "to": a.to_addr, "cc": a.cc_addr, "subject": a.subject,
            "in_reply_to": a.in_reply_to, "references": a.references, "body": a.body,
            "body_html": a.body_html, "loop": a.loop, "created": a.created,
            "transmission_status": a.transmission_status,
            "transmission_error": a.transmission_error,
            "attachments": atts.get(a.id, []),
            "crypto": {k: (a.crypto or {}).get(k, d) for k, d in (
                ("encrypted", False), ("decrypted", False), ("signed", False),
                ("signature_valid", None), ("signer", ""), ("method", ""), ("error", ""),
                ("partially_signed", False), ("signatures", []))},
        } for a in arts],
    }


def _connect(cfg: Config) -> contextlib.AbstractContextManager[Connection]:
    return connect_store(cfg, "tickets", "ticket", "tickets")


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.commlog_views import MAX_ROWS

    if not 0 <= args.limit <= MAX_ROWS:
        print(f"tickets list: --limit must be between 0 and {MAX_ROWS}", file=sys.stderr)
        return 2
    cfg = load_readonly(args)
    with _connect(cfg) as conn:
        rows = list_tickets(conn, queue=args.queue, state=args.state, limit=args.limit,
                            spellings=queue_spellings(cfg))
    if args.json:
        print_json(rows)
    else:
        print_table([(r["number"] or f"id:{r['id']}", r["queue"], r["state"], r["priority"],
                      r["created"].strftime("%Y-%m-%d %H:%M") if r["created"] else "",
                      r["title"])
                     for r in rows], ["NUMBER", "QUEUE", "STATE", "PRIORITY", "CREATED",
                                      "TITLE"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.commlog_views import MAX_ROWS

    for option, value in (("--limit", args.limit), ("--offset", args.offset)):
        if not 0 <= value <= MAX_ROWS:
            print(f"tickets show: {option} must be between 0 and {MAX_ROWS}", file=sys.stderr)
            return 2
    cfg = load_readonly(args)
    with _connect(cfg) as conn:
        detail = ticket_detail(conn, args.number, cfg.helpdesk.ticket_url,
                               limit=args.limit, offset=args.offset)
    if detail is None:
        print(f"tickets show: no ticket {args.number}", file=sys.stderr)
        return 1
    shown, count = len(detail["articles"]), detail["article_count"]
    detail["article_offset"] = args.offset
    detail["articles_left_out"] = count - shown
    if args.json:
        print_json(detail)
        return 0
    print(f"{cfg.gateway.ticket_hook}"
          f"{detail['number'] or '(number from the helpdesk pending)'}  {detail['title']}")
    print(f"  queue {detail['queue']}  state {detail['state']}  priority {detail['priority']}  "
          f"customer {detail['customer_user']}")
    hd = detail["helpdesk"]
    if hd is not None:
        print(f"  helpdesk {hd['type']}: {hd['state']}"
              + (f", ticket {hd['ticket_number'] or hd['ticket_id']}"
                 if hd["ticket_id"] else "")
              + (f" {hd['url']}" if hd["url"] else "")
              + (f" (after {hd['attempts']} attempt(s): {hd['last_error']})"
                 if hd["state"] != "delivered" and hd["last_error"] else ""))
    c = detail["classification"]
    if c:
        print(f"  classifier: {c.get('queue')} {c.get('confidence', 0):.2f}"
              + (f" (runner-up {c['runner_up']} {c['runner_up_confidence']:.2f})"
                 if c.get("runner_up") else "")
              + (" applied" if c.get("applied_queue") else " not applied (below "
                 "min_confidence)")
              + (f"; priority {c['priority']} {c['priority_confidence']:.2f}"
                 + (" applied" if c.get("applied_priority") else " not applied")
                 if c.get("priority") else ""))
    for m in detail["moves"]:
        print(f"  moved {m['created']:%Y-%m-%d %H:%M}{' by ' + m['by'] if m['by'] else ''}: "
              f"{m['from_queue']} → {m['to_queue']}"
              + (f", {m['from_priority']} → {m['to_priority']}"
                 if m["from_priority"] != m["to_priority"] else ""))
    for k, v in sorted(detail["dynamic_fields"].items()):
        print(f"  DynamicField {k}: {v}")
    print(f"  {_articles_line(count, args.offset, shown)}")
    for a in detail["articles"]:
        print(f"\n--- article {a['id']} ({a['direction']}, {a['sender_type']}) {a['created']}")
        print(f"From: {a['from']}\nTo: {a['to']}\nSubject: {a['subject']}")
        if a["crypto"]["encrypted"] or a["crypto"]["signed"]:
            from gateway.cli.keys import crypto_lines

            print("\n".join(crypto_lines(a["crypto"])))
        for att in a["attachments"]:
            print(f"Attachment: {att['filename']} ({att['content_type']}, {att['size']} bytes)")
        print()
        print(a["body"])
    return 0


def _articles_line(count: int, offset: int, shown: int) -> str:
    """How many articles the ticket has, and which of them are printed when not all."""
    if shown == count:
        return f"{count} article{'' if count == 1 else 's'}"
    if not shown:
        return f"no articles shown (--offset {offset}); {count} in all"
    after = (f" (--offset {offset + shown} for the next)"
             if offset + shown < count else "")
    return (f"articles {offset + 1} to {offset + shown} of {count} shown; "
            f"{count - shown} left out{after}")


def cmd_move(args: argparse.Namespace) -> int:
    from gateway.classify.data import move_ticket
    from gateway.store.db import make_engine

    cfg = load(args)
    q = cfg.queue_by_name(args.queue)
    if q is None:
        print(f"tickets move: no queue {args.queue!r} ([[queue]] names: "
              f"{', '.join(x.name for x in cfg.queue)})", file=sys.stderr)
        return 1
    if args.priority and args.priority not in cfg.postmaster.priorities:
        print(f"tickets move: no priority {args.priority!r} (postmaster.priorities: "
              f"{', '.join(cfg.postmaster.priorities)})", file=sys.stderr)
        return 1
    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        with engine.begin() as conn:
            t = find_ticket(conn, args.number)
            if t is None:
                print(f"tickets move: no ticket {args.number}", file=sys.stderr)
                return 1
            before = (t.queue, t.priority)
            after = (q.name, args.priority or t.priority)
            if before != after:
                move_ticket(conn, t, queue=after[0], priority=after[1], by=args.by)
    finally:
        engine.dispose()
    if args.json:
        print_json({"ticket": t.number or f"id:{t.id}", "moved": before != after,
                    "from": {"queue": before[0], "priority": before[1]},
                    "to": {"queue": after[0], "priority": after[1]}})
    elif before == after:
        print(f"ticket {t.number or f'id:{t.id}'} is already in {after[0]} ({after[1]})")
    else:
        print(f"ticket {t.number or f'id:{t.id}'}: {before[0]} ({before[1]}) → {after[0]} "
              f"({after[1]})")
    return 0
