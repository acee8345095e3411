"""serve, check, deliver, reload, db upgrade."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import errors
from gateway.cli.common import (
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    add_json,
    envelope_problem,
    load,
    open_gateway,
    print_json,
    read_stdin_message,
)

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config import Config


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
    p.add_argument("--via-socket", nargs="?", const="", default=None, metavar="SOCKET",
                   help="hand the message to the running gateway over LMTP (SOCKET: a unix "
                        "socket path or HOST:PORT; default: the first of [lmtp] listen) and "
                        "exit with its answer; deliver in-process when none listens")
    add_json(p)
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("reload", help="ask the running gateway to re-read its configuration")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the gateway's answer (default 60)")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    u = dsub.add_parser("upgrade", help="run migrations")
    u.set_defaults(func=cmd_db_upgrade)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.errors import InUse
    from gateway.inline_secrets import log_inline_secret_warnings
    from gateway.supervise import DirectoryProblem, run_serve

    cfg = load(args, quiet_logs=False)
    log_inline_secret_warnings(cfg.conf_dir)
    try:
        run_serve(cfg)
    except (InUse, DirectoryProblem) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        reason = startup_failure(cfg, exc)
        if reason is None:
            raise
        print(f"serve: {reason}", file=sys.stderr)
        return EX_TEMPFAIL if reason.startswith("gateway.database") else 1
    return EX_OK


def startup_failure(cfg: Config, exc: BaseException) -> str | None:
    """One line naming the setting and the reason for what `check` cannot foresee (the
    database down, a file removed since); None for anything else (a bug: traceback)."""
    import ssl

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        detail = " ".join(str(orig).split()) or type(orig).__name__
        url = make_url(cfg.database_url).render_as_string(hide_password=True)
        return f"gateway.database ({url}): {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"submission.tls_cert/tls_key: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return None


def prepare_serve_process(args: argparse.Namespace) -> None:
    """Runs before the services' modules are imported. With [lmtp] workers > 1, switch
    prometheus_client to multi-process mode (it must be chosen before its first
    import), so /metrics adds up the counters of every LMTP process. The section
    checks are left out here (their modules import prometheus_client); serve runs
    them when it loads the configuration again."""
    from gateway.config import load_config
    from gateway.errors import ConfigErrors

    try:
        cfg = load_config(args.config, section_checks=False)
    except ConfigErrors:
        return              # `serve` reports the errors itself
    if cfg.lmtp.workers > 1:
        with contextlib.suppress(OSError):    # serve names the setting and stops
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
    from gateway.store.db import sqlite_location_problem

    problem = sqlite_location_problem(cfg.database_url)
    if problem is not None:
        file, why = cfg.database_origin()
        problem = f"{problem} ({why})" if why else problem
        if args.json:
            print_json({"ok": False, "errors": [
                {"file": file, "key": "gateway.database", "reason": problem}]})
        else:
            print(f"{file}: gateway.database: {problem}", file=sys.stderr)
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
    from gateway.config import process_advice
    from gateway.inline_secrets import inline_secret_warnings
    from gateway.outbound.dkim import dkim_warnings
    from gateway.supervise import directory_warnings

    advice = (process_advice(cfg) + inline_secret_warnings(cfg.conf_dir)
              + directory_warnings(cfg) + dkim_warnings(cfg))
    summary = {"ok": True, "config": str(cfg.conf_dir), "queues": len(cfg.queue),
               "addresses": len(cfg.address), "accounts": len(cfg.account),
               "filters": len(cfg.filters), "dkim_keys": len(cfg.dkim),
               "warnings": [{"key": key, "reason": reason} for key, reason in advice]}
    if args.json:
        print_json(summary)
    else:
        for key, reason in advice:   # valid, but slow, exposes a secret or serve stops on it
            print(f"warning: {key}: {reason}", file=sys.stderr)
        print(f"{cfg.conf_dir}: OK ({summary['queues']} queues, {summary['addresses']} "
              f"addresses, {summary['accounts']} accounts, {summary['filters']} filters)")
    return EX_OK


def _no_system_address(gw: Gateway, raw: bytes) -> int | None:
    """Without -r, To/Cc stand in for the envelope: with unknown_recipient = "reject"
    and none of them a valid system address, refuse as LMTP would (67, or 75 when
    one is only invalid-temporarily); None when the message may be delivered."""
    from gateway.inbound.parse import addresses, parse_message

    parsed = parse_message(raw, with_attachments=False)
    found = list(dict.fromkeys(addresses(parsed.to_addr) + addresses(parsed.cc_addr)))
    statuses = [gw.rcpt_status(r) for r in found]
    if any(s.ok for s in statuses):
        return None
    reason = statuses[0] if statuses else errors.RCPT_UNKNOWN
    print(f"deliver: no system address among To/Cc ({', '.join(found) or 'none'}): {reason}",
          file=sys.stderr)
    code = EX_TEMPFAIL if any(s.temporary for s in statuses) else EX_NOUSER
    _log_refused(gw, "", [(f"To/Cc ({', '.join(found) or 'none'})", str(reason))],
                 code, delivered=False)
    return code


def _log_refused(gw: Gateway, mail_from: str, refused: list[tuple[str, str]], code: int,
                 *, delivered: bool, source: tuple[str, str] = ("STDIN", "stdin")) -> None:
    """Recipients deliver refused, in the communication log (only then: a delivery that
    goes well costs nothing more): a Notice per recipient with its reply and, when
    nothing was delivered, an Error with the exit code the MTA got (Failed); beside a
    delivery (the MTA got one exit code for all) a Warning. Never raises."""
    from gateway.commlog import Comm, Status, write_comm

    comm = Comm("Incoming", *source)
    obj = comm.obj("Message")
    obj.log("Info", "Envelope", f"from <{mail_from}>, deliver")
    for rcpt, reply in refused:
        rcpt = rcpt if rcpt.startswith("To/Cc") else f"<{rcpt}>"
        obj.log("Notice", "RCPT", f"{rcpt} refused: {reply}")
    if delivered:
        obj.log("Warn", "Deliver", f"delivered to the other recipients; exit {code} "
                "stands for all of them")
    else:
        obj.log("Error", "Deliver", f"nothing delivered; exit {code} "
                + ("(the MTA tries again)" if code == EX_TEMPFAIL else "(the MTA bounces)"))
    status: Status = "Warning" if delivered else "Failed"
    obj.close(status)
    comm.close(status)
    try:
        with gw.engine.begin() as conn:
            write_comm(conn, comm)
    except Exception as exc:
        print(f"deliver: not written to the communication log: {exc}", file=sys.stderr)


def cmd_deliver(args: argparse.Namespace) -> int:
    if args.via_socket is not None and (not args.recipient or args.account or args.trusted):
        print("deliver: --via-socket needs -r RCPT and takes neither --account nor "
              "--trusted (LMTP trust is [lmtp] trusted)", file=sys.stderr)
        return EX_USAGE
    problem = envelope_problem(args.mail_from, args.recipient)
    if problem:
        print(f"deliver: {problem}", file=sys.stderr)
        return EX_USAGE
    raw = read_stdin_message("deliver")
    if raw is None:
        return EX_DATAERR
    if args.via_socket is not None:
        rc = _deliver_via_socket(args, raw)
        if rc is not None:
            return rc
    return _deliver_in_process(args, raw)


def _deliver_via_socket(args: argparse.Namespace, raw: bytes) -> int | None:
    """The exit code of an LMTP delivery to the running gateway; None when none listens."""
    from gateway.cli import via_socket
    from gateway.rawconf import config_dir, lmtp_listen, lmtp_target

    target: via_socket.Target | None
    if args.via_socket:
        value: str = args.via_socket
        _, sep, port = value.rpartition(":")
        tcp = bool(sep) and port.isdigit() and not value.startswith("/")
        target = lmtp_target((value if tcp or value.startswith("unix:")
                              else f"unix:{value}",), Path.cwd())
    else:
        conf = config_dir(args.config)
        target = lmtp_target(lmtp_listen(conf), conf.parent)
    if target is None:
        return None
    where = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    rcpts = [r.lower() for r in args.recipient]
    try:
        result = via_socket.deliver(target, args.mail_from, rcpts, raw)
    except ValueError as exc:
        print(f"deliver: {exc}", file=sys.stderr)
        return EX_USAGE
    except via_socket.NoGateway as exc:
        print(f"deliver: no gateway on {where} ({exc}); delivering in-process",
              file=sys.stderr)
        return None
    except via_socket.LmtpFailed as exc:
        print(f"deliver: LMTP session to the gateway failed: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if args.json:
        print_json({"via": where, "recipients": [
            {"recipient": r, "stage": stage, "reply": str(rep)}
            for stage, pairs in (("rcpt", result.refused), ("data", result.delivered))
            for r, rep in pairs],
            "refused": str(result.refused_message) if result.refused_message else None})
    else:
        for r, rep in result.refused:
            print(f"deliver: <{r}>: {rep}", file=sys.stderr)
        if result.refused_message is not None:
            print(f"deliver: {result.refused_message}", file=sys.stderr)
        for r, rep in result.delivered:
            print(f"<{r}>: {rep}", file=sys.stdout if rep.ok else sys.stderr)
    return result.exit_code()


def _deliver_in_process(args: argparse.Namespace, raw: bytes) -> int:
    import asyncio

    from gateway.inbound.lmtp_session import least_quoted_path
    from gateway.model import Envelope

    cfg = load(args, refused=EX_TEMPFAIL)   # a file being edited: the MTA retries later
    account = None
    if args.account:
        account = cfg.account_by_name(args.account)
        if account is None:
            # conf.d and the MTA's command disagree (an account renamed or removed): as
            # with a refused configuration the MTA keeps the mail; 67 would bounce it
            # as "user unknown" though its recipients are known.
            print(f"deliver: no [[account]] named {args.account!r}", file=sys.stderr)
            return EX_TEMPFAIL
    gw = open_gateway(cfg, "deliver")
    if gw is None:
        return EX_TEMPFAIL
    mail_from = least_quoted_path(args.mail_from)
    deferred = False
    refused: list[tuple[str, str]] = []
    source = (account.type.upper(), account.name) if account else ("STDIN", "stdin")
    try:
        rcpts = [least_quoted_path(r).lower() for r in args.recipient]
        if rcpts:
            statuses = [gw.rcpt_status(r) for r in rcpts]
            ok = [r for r, s in zip(rcpts, statuses, strict=True) if s.ok]
            for r, s in zip(rcpts, statuses, strict=True):
                if not s.ok:
                    print(f"deliver: <{r}>: {s}", file=sys.stderr)
            refused = [(r, str(s)) for r, s in zip(rcpts, statuses, strict=True) if not s.ok]
            if not ok:
                code = EX_TEMPFAIL if any(s.temporary for s in statuses) else EX_NOUSER
                _log_refused(gw, mail_from, refused, code, delivered=False, source=source)
                return code
            # The others are delivered; one exit code stands for every recipient, so a
            # 4xx for one of them makes it 75 (the retry is a duplicate for the others).
            deferred = any(s.temporary for s in statuses)
            rcpts = ok
        elif account is None and cfg.lmtp.unknown_recipient == "reject":
            no_address = _no_system_address(gw, raw)
            if no_address is not None:
                return no_address
        trusted = args.trusted or (account.trusted if account else False)
        env = Envelope(mail_from=mail_from, recipients=tuple(rcpts) or ("",), raw=raw,
                       source=source[0], account=source[1], trusted=trusted,
                       dispatch_queue=account.queue if account and account.dispatch == "queue"
                       else "")
        outcome = asyncio.run(gw.pipeline.deliver(env))
        if rcpts and refused:
            _log_refused(gw, mail_from, refused,
                         EX_TEMPFAIL if deferred or outcome.replies[0].temporary else
                         EX_OK if outcome.replies[0].ok else EX_DATAERR, delivered=True,
                         source=source)
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
        return EX_TEMPFAIL if deferred else EX_OK
    return EX_TEMPFAIL if reply.temporary else EX_DATAERR


# LSB's exit status of an init script's action (reload) when the program is not running.
EX_NOT_RUNNING = 7


def _pid_in(path: Path) -> int:
    """The pid a pid file names (ValueError: none)."""
    pid = int(path.read_text().strip())
    if pid <= 0:        # kill(0) and kill(-1) would signal process groups
        raise ValueError(pid)
    return pid


def _pid_alive(pid: int) -> bool:
    """Whether a process has this pid (signal 0: nothing is sent)."""
    try:
        with contextlib.suppress(PermissionError):     # another user's process
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate conf.d as `check` does (errors: nothing is sent, exit 1), send SIGHUP
    and wait for the gateway's answer in its reload.json: exit 0 when it reloaded
    (naming the changed settings that need a restart), 1 when it refused, 7 when no
    gateway runs (nothing was refused: it reads conf.d when it starts)."""
    import json
    import time

    from gateway.config import load_config
    from gateway.errors import ConfigErrors
    from gateway.supervise import pidfile_locked, pidfile_path, reload_result_path

    try:
        cfg = load_config(args.config)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(str(err), file=sys.stderr)
        print("reload refused: the configuration has errors; nothing was sent and a "
              "running gateway keeps its current configuration", file=sys.stderr)
        return 1
    path = pidfile_path(cfg)
    result_path = reload_result_path(cfg)

    def result() -> dict[str, Any] | None:
        try:
            got = json.loads(result_path.read_text())
        except (OSError, ValueError):
            return None
        return got if isinstance(got, dict) else None

    before = result()
    pid = 0
    try:
        # Only a serve holding the pid file's lock is signalled: the pid of a gateway
        # that died may run another process now (SIGHUP kills many). The pid is read
        # after the lock was seen held, so it is the holder's.
        if not pidfile_locked(path):
            pid = _pid_in(path)
            alive = _pid_alive(pid)
            print(f"reload: no gateway is running ({path}: stale pid file, no deskgate "
                  f"serve holds its lock; pid {pid} "
                  f"{'is another process' if alive else 'is not running'}); "
                  "nothing was signalled, `deskgate serve` reads the configuration when "
                  "it starts", file=sys.stderr)
            return EX_NOT_RUNNING
        pid = _pid_in(path)
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ProcessLookupError, ValueError) as exc:
        why = (f"pid {pid} is not running" if isinstance(exc, ProcessLookupError)
               else "no pid file" if isinstance(exc, FileNotFoundError) else "no pid in it")
        print(f"reload: no gateway is running ({path}: {why}); nothing to reload, "
              "`deskgate serve` reads the configuration when it starts", file=sys.stderr)
        return EX_NOT_RUNNING
    except OSError as exc:    # not allowed to read the pid file or to signal the gateway
        print(f"reload: cannot signal the gateway ({path}: {exc.strerror or exc}); "
              "run it as the gateway's user or root", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.wait
    while (got := result()) is None or got == before or got.get("pid") != pid:
        if time.monotonic() >= deadline:
            print(f"reload signal sent to {pid}; no answer in {result_path} within "
                  f"{args.wait:g} s: see the gateway's log", file=sys.stderr)
            return EX_TEMPFAIL
        time.sleep(0.1)
    if got.get("result") != "ok":
        print(f"reload refused by the gateway (pid {pid}); it keeps running with its "
              f"current configuration: {got.get('reason', '')}", file=sys.stderr)
        return 1
    print(f"reloaded (pid {pid})")
    if restart := got.get("restart_needed"):
        print("changed settings that take effect only after a restart "
              f"(systemctl restart deskgate): {', '.join(map(str, restart))}")
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.store import repo
    from gateway.store.db import current_revision, make_engine, migrate

    cfg = load(args)
    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, cfg)
    print(f"database at revision {current_revision(engine)}")
    engine.dispose()
    return EX_OK
