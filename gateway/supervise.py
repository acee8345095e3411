"""Process supervision of `deskgate serve`: the entry point that forks the commit
process and the pre-forked LMTP workers, and what each of them runs; signals
(SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 wakes the sender).

The main process runs a Gateway with every service; each pre-forked worker runs
one with LMTP only, on the same sockets. The Gateway itself (what runs) is the
composition root in gateway.app; this module only decides how many and how long.
The commit process's supervision (a new one when it dies) is gateway.supervise_commit's;
forking, the pid file lock and the signal plumbing are gateway.supervise_fork's.
The directories serve needs are made here first, each failure named by its setting.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway import sdnotify
from gateway.app import Gateway
from gateway.config import Config
from gateway.supervise_commit import (
    COMMIT_GONE,
    COMMIT_UP,
    CommitKeeper,
    _commit_reporter,
    _connect_commit,
    _listen_for_commit_sockets,
    _serve_commits,
    spawn_commit_process,
)
from gateway.supervise_fork import (
    _PIDLOCK,
    _SIGNALS,
    COMMIT_PROCESS_NAME,
    LMTP_WORKER_NAME,
    _fork,
    _poke_main,
    _reap,
    _release_pidfile,
    _settle_heap,
    _signal_workers,
    lock_pidfile,
    pidfile_locked,
    pidfile_path,
)

__all__ = [     # the commit process's supervision and the pid file, importable from here
    "COMMIT_GONE", "COMMIT_PROCESS_NAME", "COMMIT_UP", "LMTP_WORKER_NAME", "CommitKeeper",
    "DirectoryProblem", "WorkDir", "directory_problem", "directory_warnings",
    "lock_pidfile", "pidfile_locked", "pidfile_path", "prepare_directories", "reload_everywhere",
    "reload_result_path", "run_serve",
    "serve", "serve_worker", "spawn_commit_process", "work_directories",
]

log = structlog.get_logger(__name__)


async def serve(config: Config, *, ready: Callable[[], Any] | None = None,
                socks: Sequence[socket.socket] | None = None,
                workers: Sequence[int] = (), commit_sock: socket.socket | None = None,
                commit_pid: int | None = None,
                worker_controls: Sequence[socket.socket] = ()) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. `workers` are the pre-forked LMTP
    processes sharing `socks` and the commit process; they get our signals and are
    waited for. `commit_sock` connects this process to the commit process;
    `worker_controls` reach each LMTP worker, to hand it the socket of a new
    commit process after a restart."""
    if _PIDLOCK["fd"] is None:      # serve() run without run_serve (tests)
        lock_pidfile(config)
    workers = list(workers)       # a commit process that dies leaves the list
    gw = Gateway(config)
    await _connect_commit(gw, commit_sock)
    keeper = None
    if commit_pid is not None and gw.pipeline.remote is not None:
        keeper = CommitKeeper(gw, workers, commit_pid, worker_controls)
    if socks is None:
        await asyncio.get_running_loop().run_in_executor(None, gw.prepare_store)
    servers = await gw.start(socks)
    _settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    gw.reload_others = lambda: _signal_workers(workers, signal.SIGHUP)

    async def reload() -> None:
        sdnotify.reloading()
        try:
            await reload_everywhere(gw, workers)
        finally:
            sdnotify.notify("READY=1", "STATUS=serving")

    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    loop.add_signal_handler(signal.SIGUSR1, _wake_sender)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # blocked by run_serve until now
    pidfile = pidfile_path(config)
    from gateway.config import process_advice

    for key, reason in process_advice(config):
        log.warning("configuration costs throughput on this machine", key=key, reason=reason)
    log.info("deskgate serving", lmtp=list(config.lmtp.listen),
             lmtp_workers=len(workers) + 1 - (commit_pid is not None),
             commit_process=gw.pipeline.remote is not None,
             services=gw.services_up(), not_running=gw.services_down(),
             database=_safe_url(config.database_url))
    sdnotify.notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")
    if ready:
        ready()
    await stop.wait()
    sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing messages in flight")
    log.info("stopping: no new connections, finishing messages in flight")
    if keeper is not None:
        keeper.stop()        # a commit process that dies now is not started again
    _signal_workers(workers, signal.SIGTERM)
    await gw.stop(servers)
    await loop.run_in_executor(None, _reap, workers)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    _release_pidfile()


async def serve_worker(config: Config, socks: Sequence[socket.socket],
                       commit_sock: socket.socket | None = None,
                       control: socket.socket | None = None) -> None:
    """A pre-forked LMTP worker: LMTP on the shared sockets, no other service.
    `control` brings the socket of a commit process the main process started again."""
    gw = Gateway(config)
    report = _commit_reporter(gw, control) if commit_sock is not None else None
    await _connect_commit(gw, commit_sock, report)
    if control is not None:
        _listen_for_commit_sockets(gw, control, report)
    servers = await gw.start(socks, services=False)
    _settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)   # the main process decides
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: asyncio.ensure_future(_reload_and_settle(gw)))
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    # The outbound sender runs in the main process only: an auto-response queued
    # here wakes it with SIGUSR1 instead of waiting for its next poll.
    from gateway.outbound.sender import add_waker

    main_pid = os.getppid()
    add_waker(lambda _delay: _poke_main(main_pid))
    if config.helpdesk.enabled:      # so is the hand-off worker
        from gateway.helpdesk.worker import add_waker as add_handoff_waker

        add_handoff_waker(lambda: _poke_main(main_pid))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    await stop.wait()
    await gw.stop(servers)


async def _reload_and_settle(gw: Gateway) -> bool:
    try:
        return await gw.reload()
    finally:
        _settle_heap()


async def reload_everywhere(gw: Gateway, others: Sequence[int]) -> bool:
    """SIGHUP in the main process: reload here first (validate, write queues and
    addresses to the database), then, only if that worked, the LMTP workers and the
    commit process, as the dashboard's admin pages do. A reload this process refused
    or failed leaves every process on the running configuration, never some on
    the old one and some on the new."""
    try:
        ok = await _reload_and_settle(gw)
    except Exception as exc:
        log.exception("reload failed; the other processes keep the running configuration")
        _write_reload_result(gw, {"result": "refused", "reason": repr(exc)[:4000],
                                  "restart_needed": []})
        return False
    if ok:
        _signal_workers(others, signal.SIGHUP)
    _write_reload_result(gw, getattr(gw, "last_reload", {}))
    return ok


_RELOAD_COUNT = {"n": 0}


def reload_result_path(config: Config) -> Path:
    """Where the main process leaves the outcome of each SIGHUP reload, next to its
    pid file, for `deskgate reload` to wait for and report."""
    return pidfile_path(config).with_name("reload.json")


def _write_reload_result(gw: Gateway, result: dict[str, object]) -> None:
    """Replace reload.json atomically: {"count", "pid", "result", "reason",
    "restart_needed"}; count grows with each reload of this process."""
    _RELOAD_COUNT["n"] += 1
    body = {"count": _RELOAD_COUNT["n"], "pid": os.getpid(), "result": "refused",
            "reason": "", "restart_needed": [], **result}
    try:        # never a reason for a reload to fail
        path = reload_result_path(gw.config)
        tmp = path.with_name(f".reload.json.{os.getpid()}")
        tmp.write_text(json.dumps(body, default=str) + "\n")
        tmp.replace(path)
    except Exception as exc:
        log.warning("reload result not written; `deskgate reload` cannot report it",
                    error=repr(exc)[:300])


def _wake_sender() -> None:
    """SIGUSR1: something was queued (by an LMTP worker, or an admin asks): look now."""
    from gateway.helpdesk.worker import notify_queued as handoff_queued
    from gateway.outbound.sender import notify_queued

    notify_queued()
    handoff_queued()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run_serve(config: Config) -> None:
    """`deskgate serve`: make its directories, lock the pid file, migrate, bind, fork the
    commit process ([store] commit_process) and [lmtp] workers - 1 LMTP workers, serve.
    Raises DirectoryProblem when a directory cannot be made or written, errors.InUse
    when another gateway runs on this configuration."""
    prepare_directories(config)
    lock_pidfile(config)
    gw = Gateway(config)
    try:
        gw.prepare_store()
        socks = gw.bind()
    finally:
        gw.close()
    # A SIGTERM between the first fork and the handlers of serve() would kill this
    # process with the default action and leave the workers serving as orphans:
    # block the signals now; serve() and serve_worker() unblock them once handled.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: list[int] = []
    # One socketpair per LMTP process (the main one first): client end, commit end.
    pairs = ([socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
              for _ in range(config.lmtp.workers)] if config.store.commit_process else [])
    commit_pid = None
    if pairs:
        def commit_process(parent: int) -> int:
            for sock in socks:     # it never accepts LMTP: a stopped gateway's
                sock.close()       # socket must not go on queueing connections
            for client, _ in pairs:
                client.close()
            return _serve_commits(config, [end for _, end in pairs], parent)

        commit_pid = _fork(COMMIT_PROCESS_NAME, "commit process", commit_process)
        workers.append(commit_pid)
        for _, end in pairs:
            end.close()
    clients = [client for client, _ in pairs]
    # One control socket per worker (main end, worker end), made after the commit
    # process's fork: the socket of a restarted commit process travels on it.
    controls = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in clients[1:]]
    for n in range(1, config.lmtp.workers):
        def lmtp_worker(_parent: int, n: int = n) -> int:
            for i, client in enumerate(clients):
                if i != n:
                    client.close()
            for i, (main_end, worker_end) in enumerate(controls, start=1):
                main_end.close()
                if i != n:
                    worker_end.close()
            _run(serve_worker(config, socks, clients[n] if clients else None,
                              controls[n - 1][1] if controls else None))
            return 0

        workers.append(_fork(LMTP_WORKER_NAME, "LMTP worker", lmtp_worker))
    for client in clients[1:]:
        client.close()
    for _, worker_end in controls:
        worker_end.close()
    try:
        _run(serve(config, socks=socks, workers=workers,
                   commit_sock=clients[0] if clients else None, commit_pid=commit_pid,
                   worker_controls=[main_end for main_end, _ in controls]))
    except BaseException:
        _signal_workers(workers, signal.SIGTERM)   # workers never outlive a failed main
        for client in clients[:1]:
            client.close()     # the commit process stops once every LMTP process is gone
        _reap(workers)
        raise


# ---------------------------------------------------------------- directories


class DirectoryProblem(Exception):
    """A directory serve needs cannot be created or written; the text names the setting."""


@dataclass(frozen=True)
class WorkDir:
    """A directory deskgate creates or writes, and the setting that puts it there."""

    key: str            # as configuration errors name it: relay.maildir, lmtp.listen[0]
    value: str          # the key's value as written, or its default
    resolved: Path      # what the value resolves to (the file, for a socket or database)
    directory: Path     # the directory to create or write
    use: str = ""       # who writes it later; "" for serve, which makes it before serving

    def setting(self, config: Config) -> str:
        """`"VALUE" (in FILE)`, or `(the default)` when no file sets the key."""
        file = config.key_files.get(self.key)
        where = f"in {file}" if file else "the default"
        return f"{json.dumps(self.value, ensure_ascii=False)} ({where})"


def work_directories(config: Config) -> list[WorkDir]:
    """The directories `serve` makes before it serves (the pid file's, the SQLite
    database's, the metrics', the LMTP sockets', the outbox Maildir), then those written
    later on (the key stores, the classifier's model); each directory once."""
    from sqlalchemy.engine import make_url

    state, gw = config.state_dir, config.gateway
    found = [WorkDir("gateway.state_dir", gw.state_dir, state, state / "run")]
    url = make_url(config.database_url)
    db = url.database or ""
    if url.get_backend_name() == "sqlite" and db and db != ":memory:" \
            and not db.startswith("file:"):
        found.append(WorkDir("gateway.database", gw.database, Path(db), Path(db).parent)
                     if gw.database else         # the default, in state_dir
                     WorkDir("gateway.state_dir", gw.state_dir, state, state))
    if config.lmtp.workers > 1:
        found.append(WorkDir("gateway.state_dir", gw.state_dir, state, state / "run" / "metrics"))
    for i, spec in enumerate(config.lmtp.listen):
        if spec.startswith("unix:"):
            sock = config.path(spec[5:])
            found.append(WorkDir(f"lmtp.listen[{i}]", spec, sock, sock.parent))
    if config.relay.mode == "maildir":
        outbox = config.path(config.relay.maildir)
        found.append(WorkDir("relay.maildir", config.relay.maildir, outbox, outbox))
    c = config.crypto
    found += [WorkDir("crypto.gnupg_home", c.gnupg_home, config.path(c.gnupg_home),
                      config.path(c.gnupg_home), "gpg writes there whenever deskgate signs, "
                      "encrypts or decrypts with PGP or PGP keys are imported"),
              WorkDir("crypto.smime_dir", c.smime_dir, config.path(c.smime_dir),
                      config.path(c.smime_dir), "importing S/MIME keys (`deskgate keys "
                      "smime import`, the dashboard's key pages) writes there")]
    if config.classifier.enabled:
        model = config.classifier.model
        found.append(WorkDir("classifier.model", model, config.path(model), config.path(model),
                             "training the classifier writes its model there") if model else
                     WorkDir("gateway.state_dir", gw.state_dir, state, state / "classifier",
                             "training the classifier writes its model there "
                             "(classifier.model is empty)"))
    unique: dict[Path, WorkDir] = {}
    for w in found:
        unique.setdefault(w.directory, w)
    return list(unique.values())


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK,
                     effective_ids=os.access in os.supports_effective_ids)


def directory_problem(directory: Path, *, create: bool) -> str | None:
    """Why this process's user cannot create or write `directory`; None when it can.
    With `create` the missing directories are made; without it nothing is, and the
    nearest existing one is asked (os.access): what `check` can tell cheaply."""
    missing: list[Path] = []
    existing = directory
    # os.path.exists: Path.exists raises on a directory we may not search (3.11)
    while not os.path.exists(existing) and existing != existing.parent:  # noqa: PTH110
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        return (f"cannot create {missing[-1]}: {existing} is not a directory" if missing
                else f"{existing} is not a directory")
    if missing and not create:
        return (None if _writable(existing) else
                f"cannot create {missing[-1]}: {existing} is not writable by user {_user()}")
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:       # made meanwhile, or a symlink that leads nowhere
            if not path.is_dir():
                return f"cannot create {path}: it exists and is not a directory"
        except OSError as exc:
            return f"cannot create {path}: {exc.strerror or exc}"
    if not _writable(directory):
        return f"{directory} is not writable by user {_user()}"
    return None


def prepare_directories(config: Config) -> None:
    """Make the directories serve needs before it serves; the first it cannot make or
    write raises DirectoryProblem naming the key, the file that sets it and the reason."""
    for w in work_directories(config):
        if not w.use:
            problem = directory_problem(w.directory, create=True)
            if problem is not None:
                raise DirectoryProblem(f"{w.key} = {w.setting(config)} resolves to "
                                       f"{w.resolved}: {problem}")


def directory_warnings(config: Config) -> list[tuple[str, str]]:
    """For `check`: (key, reason) for every directory of work_directories that its user
    could not create or write. Creates nothing."""
    warnings = []
    for w in work_directories(config):
        problem = directory_problem(w.directory, create=False)
        if problem is not None:
            warnings.append((w.key, f"{w.setting(config)} resolves to {w.resolved}: {problem}; "
                             f"{w.use or '`serve` stops on it'} (checked as user {_user()}: "
                             "run `deskgate check` as the user `deskgate serve` runs as)"))
    return warnings
