"""filter test MESSAGE: explain the postmaster filters and the routing of one message.

Runs the prepare stages (with the filter stage explaining itself), then the
follow-up decision with read-only lookups when a database exists, then routing.
Nothing is stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EX_DATAERR, EX_OK, add_json, load, print_json

if TYPE_CHECKING:
    from gateway.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("filter", help="postmaster filters")
    fsub = p.add_subparsers(dest="filter_command", metavar="ACTION")
    fsub.required = True
    t = fsub.add_parser("test", help="explain the filters and the routing of one message "
                                     "(stores nothing)")
    t.add_argument("message", help="file with the raw message, - for stdin")
    t.add_argument("--trusted", action="store_true",
                   help="treat the source as trusted (keep X-Deskgate-/X-OTOBO- headers)")
    t.add_argument("-r", "--recipient", action="append", default=[], metavar="RCPT",
                   help="envelope recipient (repeatable); default: route by To/Cc")
    t.add_argument("--account", help="as if fetched by this [[account]] (its trusted flag "
                                     "and dispatch queue)")
    add_json(t)
    t.set_defaults(func=cmd_test)


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _open_db(cfg: Config) -> tuple[Any, str]:
    """(engine or None, status) without creating anything."""
    from sqlalchemy import inspect

    from gateway.store.db import make_engine

    url = cfg.database_url
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:" and not Path(path).exists():
            return None, "no database"
    try:
        # deskgate's own engine: its connect and (PostgreSQL) lock timeouts
        engine = make_engine(url, fast_path=cfg.store.fast_path)
        with engine.connect() as conn:
            if not inspect(conn).has_table("ticket"):
                engine.dispose()
                return None, "no database (schema not created)"
    except Exception as exc:
        return None, f"no database ({type(exc).__name__})"
    return engine, "ok"


def explain(cfg: Config, raw: bytes, *, trusted: bool = False,
            recipients: tuple[str, ...] = (), dispatch_queue: str = "") -> dict[str, Any]:
    """The report of `filter test` as a dict (also what --json prints)."""
    from gateway.commlog import CommObj
    from gateway.inbound import followup
    from gateway.inbound.filters import FilterSet, FilterTrace, run_filters
    from gateway.inbound.route import route
    from gateway.inbound.stages import build_stages
    from gateway.model import Envelope, MessageContext
    from gateway.runtime import build_runtime

    rt = build_runtime(cfg)
    env = Envelope(mail_from="", recipients=recipients, raw=raw, source="FilterTest",
                   account="filter-test", trusted=trusted, dispatch_queue=dispatch_queue)
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    traces: list[FilterTrace] = []
    headers_before = 0
    for name, fn, _dropped in build_stages().prepare:
        if name == "ignore":
            continue
        if name == "trust" and ctx.parsed is not None:
            headers_before = len(ctx.parsed.headers)
        if name == "filters":
            if isinstance(rt.filters, FilterSet):
                run_filters(rt.filters, ctx, traces)
            continue
        verdict = fn(ctx, rt)
        if verdict is not None and verdict.kind != "continue":
            break
        if name == "trust" and ctx.parsed is not None:
            headers_before -= len(ctx.parsed.headers)
    p = ctx.parsed
    assert p is not None
    report: dict[str, Any] = {
        "message": {"subject": p.subject, "from": p.from_addr, "message_id": p.message_id},
        "trusted": trusted, "stripped_x_headers": headers_before,
        "filters": [t.as_dict() for t in traces],
        "hits": [h.as_dict() for h in ctx.hits],
        "params": dict(sorted(ctx.params.items())),
        "loop": ctx.loop, "bounce": ctx.is_bounce,
        "bounced_message_id": ctx.bounced_message_id,
        "trace": list(ctx.trace), "log": [
            {"priority": e.priority, "key": e.key, "value": e.value} for e in ctx.log.entries],
    }
    decision: dict[str, Any] = {}
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.inbound.ticket import is_true

    engine, db_status = _open_db(cfg)
    report["database"] = db_status
    if is_true(ctx.param("Ignore")):
        decision = {"action": "ignore", "reason": "Ignore is set: dropped, answered 250"}
    else:
        d = None
        notes: list[str] = []
        if engine is not None:
            try:
                with engine.connect() as conn:
                    d = followup.decide(ctx, rt, conn, notes)
                    conn.rollback()
            except SQLAlchemyError as exc:
                # a table locked by another session (lock timeout), the server gone
                report["database"] = (
                    f"database busy or gone ({type(getattr(exc, 'orig', exc)).__name__})")
                notes.append("follow-up detection skipped: the database did not answer")
            finally:
                engine.dispose()
        if d is not None and d.kind != "new-ticket":
            decision = {"action": "followup", **d.as_dict()}
            if d.kind == "followup":
                decision["new_state"] = d.new_state
        else:
            route(ctx, rt)
            from gateway.classify import apply_decision

            apply_decision(ctx, rt)
            decision = {"action": "new", "queue": ctx.queue,
                        "reason": "; ".join(t for t in ctx.trace if t.startswith("queue "))}
            if d is not None:
                decision["linked_ticket"] = d.ticket_number
                decision["reason"] = d.reason + "; " + decision["reason"]
        decision["notes"] = notes
        if decision["action"] == "new" and ctx.classification is not None:
            decision["classifier"] = ctx.classification
            decision["priority"] = ctx.param("Priority") or cfg.postmaster.default_priority
    report["decision"] = decision
    return report


def _print(report: dict[str, Any]) -> None:
    m = report["message"]
    print(f"message: {m['subject']!r} from {m['from']} {m['message_id']}")
    print(f"source: {'trusted' if report['trusted'] else 'untrusted'}"
          + (f" ({report['stripped_x_headers']} X-header(s) removed before the filters)"
             if report["stripped_x_headers"] else ""))
    print(f"filters: {len(report['filters'])}")
    for f in report["filters"]:
        verdict = "MATCHED" if f["matched"] else "no match"
        print(f"  {f['name']}: {verdict}  ({f['file']})")
        for c in f["conditions"]:
            mark = "+" if c["held"] else "-"
            neg = "not " if c["not"] else ""
            print(f"    {mark} {c['condition']} {c['header']} {neg}{c['kind']} "
                  f"'{c['pattern']}': {c['reason']}")
        for k, v in f["set"].items():
            print(f"    set {k} = {v!r}")
        if f["stop_after_match"]:
            print("    stop_after_match: no further filters")
    print("params:" + ("" if report["params"] else " (none)"))
    for k, v in report["params"].items():
        print(f"  {k} = {v!r}")
    print(f"loop: {'yes' if report['loop'] else 'no'}")
    if report["bounce"]:
        print(f"bounce: DSN for {report['bounced_message_id'] or 'an unknown message'}")
    print(f"database: {report['database']}")
    d = report["decision"]
    if d["action"] == "ignore":
        print(f"decision: ignore ({d['reason']})")
    elif d["action"] == "followup":
        print(f"decision: {d['kind']} of ticket {d['ticket']} in queue {d['queue']} "
              f"(state {d['state']}" + (f" → {d['new_state']}" if d.get("new_state") else "")
              + f"): {d['reason']}")
    else:
        linked = f", linked to {d['linked_ticket']}" if d.get("linked_ticket") else ""
        print(f"decision: new ticket in queue {d['queue']}{linked}: {d['reason']}")
    c = d.get("classifier")
    if c is not None:
        print(f"  classifier: {c['queue']} {c['confidence']:.2f}"
              + (f", runner-up {c['runner_up']} {c['runner_up_confidence']:.2f}"
                 if c.get("runner_up") else "")
              + (" (applied)" if c.get("applied_queue") else " (below min_confidence: "
                 "default queue kept)"))
        if c.get("priority"):
            print(f"  classifier priority: {c['priority']} {c['priority_confidence']:.2f}"
                  + (" (applied)" if c.get("applied_priority") else " (not applied)")
                  + f"; priority {d['priority']}")
    for n in d.get("notes", []):
        print(f"  note: {n}")


def cmd_test(args: argparse.Namespace) -> int:
    cfg = load(args)
    try:
        raw = _read(args.message)
    except OSError as exc:
        print(f"filter test: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return EX_DATAERR
    if b"\r\n" not in raw:
        raw = raw.replace(b"\n", b"\r\n")
    trusted, dispatch = args.trusted, ""
    if args.account:
        account = cfg.account_by_name(args.account)
        if account is None:
            print(f"filter test: no [[account]] named {args.account!r}", file=sys.stderr)
            return EX_DATAERR
        trusted = trusted or account.trusted
        dispatch = account.queue if account.dispatch == "queue" else ""
    report = explain(cfg, raw, trusted=trusted,
                     recipients=tuple(r.lower() for r in args.recipient),
                     dispatch_queue=dispatch)
    if args.json:
        print_json(report)
    else:
        _print(report)
    return EX_OK
