"""serve, check, deliver, reload, db upgrade."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    add_json,
    load,
    open_gateway,
    print_json,
    read_stdin_message,
)


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run LMTP, submission, sender, poller and dashboard")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate conf.d and policies")
    add_json(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("deliver", help="run the inbound pipeline on a message from stdin")
    p.add_argument("-r", "--recipient", action="append", default=[], metavar="RCPT",
                   help="envelope recipient (repeatable); default: route by To/Cc")
    p.add_argument("-f", "--from", dest="mail_from", default="", help="envelope sender")
    p.add_argument("--account", help="process as if fetched by this [[account]]")
    p.add_argument("--trusted", action="store_true", help="honour X-Deskgate-/X-OTOBO- headers")
    add_json(p)
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("reload", help="ask the running gateway to re-read its configuration")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    u = dsub.add_parser("upgrade", help="run migrations")
    u.set_defaults(func=cmd_db_upgrade)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import run_serve

    cfg = load(args, quiet_logs=False)

    run_serve(cfg)
    return EX_OK


def prepare_serve_process(args: argparse.Namespace) -> None:
    """Runs before the plugins are imported. With [lmtp] workers > 1, switch
    prometheus_client to multi-process mode (it must be chosen before its first
    import), so /metrics adds up the counters of every LMTP process."""
    from gateway.config import load_config
    from gateway.errors import ConfigErrors

    try:
        cfg = load_config(args.config)
    except ConfigErrors:
        return              # `serve` reports the errors itself
    if cfg.lmtp.workers > 1:
        _metrics_multiprocess(cfg.state_dir / "run" / "metrics")


def _metrics_multiprocess(directory: Path) -> None:
    if "prometheus_client" in sys.modules or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.glob("*.db"):
        f.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import ConfigErrors

    try:
        cfg = load_config(args.config)
    except ConfigErrors as exc:
        if args.json:
            print_json({"ok": False, "errors": [
                {"file": e.file, "key": e.key, "reason": e.reason} for e in exc.errors]})
        else:
            for err in exc.errors:
                print(str(err), file=sys.stderr)
        return 1
    if cfg.classifier.enabled:
        from gateway.classify import check_model

        problem = check_model(cfg)
        if problem:
            if args.json:
                print_json({"ok": False, "errors": [
                    {"file": "", "key": "classifier.enabled", "reason": problem}]})
            else:
                print(f"classifier.enabled: {problem}", file=sys.stderr)
            return 1
    summary = {"ok": True, "config": str(cfg.conf_dir), "queues": len(cfg.queue),
               "addresses": len(cfg.address), "accounts": len(cfg.account),
               "filters": len(cfg.filters), "dkim_keys": len(cfg.dkim)}
    if args.json:
        print_json(summary)
    else:
        print(f"{cfg.conf_dir}: OK ({summary['queues']} queues, {summary['addresses']} "
              f"addresses, {summary['accounts']} accounts, {summary['filters']} filters)")
    return EX_OK


def cmd_deliver(args: argparse.Namespace) -> int:
    from gateway.model import Envelope

    cfg = load(args)
    raw = read_stdin_message("deliver")
    if raw is None:
        return EX_DATAERR
    account = None
    if args.account:
        account = cfg.account_by_name(args.account)
        if account is None:
            print(f"deliver: no [[account]] named {args.account!r}", file=sys.stderr)
            return EX_NOUSER
    gw = open_gateway(cfg, "deliver")
    if gw is None:
        return EX_TEMPFAIL
    try:
        rcpts = [r.lower() for r in args.recipient]
        if rcpts:
            statuses = [gw.rcpt_status(r) for r in rcpts]
            ok = [r for r, s in zip(rcpts, statuses, strict=True) if s.ok]
            for r, s in zip(rcpts, statuses, strict=True):
                if not s.ok:
                    print(f"deliver: <{r}>: {s}", file=sys.stderr)
            if not ok:
                return EX_TEMPFAIL if any(s.temporary for s in statuses) else EX_NOUSER
            rcpts = ok
        trusted = args.trusted or (account.trusted if account else False)
        env = Envelope(mail_from=args.mail_from, recipients=tuple(rcpts) or ("",), raw=raw,
                       source=account.type.upper() if account else "STDIN",
                       account=account.name if account else "stdin", trusted=trusted,
                       dispatch_queue=account.queue if account and account.dispatch == "queue"
                       else "")
        outcome = asyncio.run(gw.pipeline.deliver(env))
    finally:
        gw.close()
    reply = outcome.replies[0]
    if args.json:
        print_json({"action": outcome.action, "ticket": outcome.ticket_number,
                    "article_id": outcome.article_id, "reply": str(reply),
                    "detail": outcome.detail})
    elif reply.ok:
        print(f"{outcome.action}: ticket {outcome.ticket_number or '-'} "
              f"article {outcome.article_id or '-'}")
    else:
        print(f"deliver: {reply}", file=sys.stderr)
    if reply.ok:
        return EX_OK
    return EX_TEMPFAIL if reply.temporary else EX_DATAERR


def cmd_reload(args: argparse.Namespace) -> int:
    from gateway.app import pidfile_path

    cfg = load(args)
    path = pidfile_path(cfg)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"reload: no running gateway ({path}: {exc})", file=sys.stderr)
        return 1
    print(f"reload signal sent to {pid}")
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.store import repo
    from gateway.store.db import current_revision, make_engine, migrate

    cfg = load(args)
    engine = make_engine(cfg.database_url)
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, cfg)
    print(f"database at revision {current_revision(engine)}")
    engine.dispose()
    return EX_OK
