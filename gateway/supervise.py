"""Process supervision of `deskgate serve`: the pid file lock, the pre-forked LMTP
workers, signals (SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 wakes the sender).

The main process runs a Gateway with every service; each pre-forked worker runs
one with LMTP only, on the same sockets. The Gateway itself (what runs) is the
composition root in gateway.app; this module only decides how many and how long.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway import errors, heap, sdnotify
from gateway.app import Gateway
from gateway.config import Config

log = structlog.get_logger(__name__)


async def serve(config: Config, *, ready: Callable[[], Any] | None = None,
                socks: Sequence[socket.socket] | None = None,
                workers: Sequence[int] = (), commit_sock: socket.socket | None = None,
                commit_pid: int | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. `workers` are the pre-forked LMTP
    processes sharing `socks` and the commit process; they get our signals and are
    waited for. `commit_sock` connects this process to the commit process."""
    if _PIDLOCK["fd"] is None:      # serve() run without run_serve (tests)
        lock_pidfile(config)
    workers = list(workers)       # a commit process that dies leaves the list
    gw = Gateway(config)
    await _connect_commit(gw, commit_sock)
    if commit_pid is not None and gw.pipeline.remote is not None:
        def commit_process_died() -> None:
            # reaped at once (no zombie until the stop), and never signalled again:
            # its pid may belong to another process by then
            if commit_pid in workers:
                workers.remove(commit_pid)
            _reap_now(commit_pid)
        gw.pipeline.remote.on_lost = commit_process_died
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
        _signal_workers(workers, signal.SIGHUP)
        try:
            await _reload_and_settle(gw)
        finally:
            sdnotify.notify("READY=1", "STATUS=serving")

    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    loop.add_signal_handler(signal.SIGUSR1, _wake_sender)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # blocked by run_serve until now
    pidfile = pidfile_path(config)
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
    _signal_workers(workers, signal.SIGTERM)
    await gw.stop(servers)
    await loop.run_in_executor(None, _reap, workers)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    _release_pidfile()


async def serve_worker(config: Config, socks: Sequence[socket.socket],
                       commit_sock: socket.socket | None = None) -> None:
    """A pre-forked LMTP worker: LMTP on the shared sockets, no other service."""
    gw = Gateway(config)
    await _connect_commit(gw, commit_sock)
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


async def _connect_commit(gw: Gateway, sock: socket.socket | None) -> None:
    """Send this LMTP process's prepared messages to the commit process."""
    if sock is None:
        return
    from gateway.inbound.commitproc import CommitClient

    client = CommitClient(sock)
    await client.connect()
    gw.pipeline.remote = client


def _serve_commits(config: Config, socks: list[socket.socket], parent: int) -> int:
    """The commit process (gateway.inbound.commitproc): the inbound commit of every
    LMTP process, in one writer; its exit status."""
    from gateway.inbound.commitproc import run_commit_process

    gw = Gateway(config)
    _settle_heap()
    return run_commit_process(gw, socks, lambda: _poke_main(parent))


def _settle_heap() -> None:
    """Freeze the start-up heap (gateway.heap); again after each reload, once the
    reload has swapped everything (services switched and restarted included)."""
    frozen = heap.settle()
    log.debug("heap frozen", objects=frozen)


async def _reload_and_settle(gw: Gateway) -> None:
    try:
        await gw.reload()
    finally:
        _settle_heap()


def _poke_main(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGUSR1)


def _wake_sender() -> None:
    """SIGUSR1: something was queued (by an LMTP worker, or an admin asks): look now."""
    from gateway.helpdesk.worker import notify_queued as handoff_queued
    from gateway.outbound.sender import notify_queued

    notify_queued()
    handoff_queued()


# Held back from fork until the event loops have their handlers (see run_serve).
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


def _die_with(parent: int) -> None:
    """A worker gets SIGTERM when the main process dies, however it dies (SIGKILL,
    OOM killer): no orphaned worker keeps accepting LMTP on the shared socket.
    SIGTERM is blocked until serve_worker handles it, so it stops gracefully."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):      # not Linux: the main process still reaps us
        return
    if os.getppid() != parent:             # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# Process names (ps -o comm, top, /proc/PID/comm) of the forked processes.
LMTP_WORKER_NAME = "deskgate-lmtp"
COMMIT_PROCESS_NAME = "deskgate-commit"


def _set_name(name: str) -> None:
    """Name this process as `ps` and `top` show it (Linux; 15 bytes at most)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _signal_workers(workers: Sequence[int], sig: int) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(workers: Sequence[int]) -> None:
    for pid in workers:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _reap_now(pid: int) -> None:
    """Reap a child whose socket just closed: it is exiting, but may not be a
    zombie yet, so wait for it on a thread of its own."""
    def wait() -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    threading.Thread(target=wait, name="reap", daemon=True).start()


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
    """`deskgate serve`: lock the pid file, migrate, bind, fork the commit process
    ([store] commit_process) and [lmtp] workers - 1 LMTP workers, serve.
    Raises errors.InUse when another gateway runs on this configuration."""
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
    for n in range(1, config.lmtp.workers):
        def lmtp_worker(_parent: int, n: int = n) -> int:
            for i, client in enumerate(clients):
                if i != n:
                    client.close()
            _run(serve_worker(config, socks, clients[n] if clients else None))
            return 0

        workers.append(_fork(LMTP_WORKER_NAME, "LMTP worker", lmtp_worker))
    for client in clients[1:]:
        client.close()
    try:
        _run(serve(config, socks=socks, workers=workers,
                   commit_sock=clients[0] if clients else None, commit_pid=commit_pid))
    except BaseException:
        _signal_workers(workers, signal.SIGTERM)   # workers never outlive a failed main
        for client in clients[:1]:
            client.close()     # the commit process stops once every LMTP process is gone
        _reap(workers)
        raise


def _fork(name: str, what: str, body: Callable[[int], int]) -> int:
    """Fork a child named `name` (ps, top) that runs body(parent pid) and leaves
    with its exit status, without running atexit; its pid. Only the main process
    holds the pid file lock (closing the child's copy keeps it): a new serve may
    start as soon as the main one is gone. The child gets SIGTERM when the main
    process dies (_die_with)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    _release_pidfile()
    try:
        _set_name(name)
        _die_with(parent)
        code = body(parent)
    except BaseException:
        log.exception(f"{what} failed")
    finally:
        os._exit(code)


def pidfile_path(config: Config) -> Path:
    return config.state_dir / "run" / "deskgate.pid"


# The open, flock'ed pid file of this process (inherited by pre-forked workers).
_PIDLOCK: dict[str, int | None] = {"fd": None}


def lock_pidfile(config: Config) -> None:
    """Take an exclusive flock on the pid file before anything is bound, and write our pid.

    A second `deskgate serve` on the same configuration fails here, before it can
    touch the first one's sockets. The lock goes with the process (however it dies).
    """
    path = pidfile_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        holder = _read_pid(path)
        raise errors.InUse(f"{path} is locked by a running deskgate serve "
                    f"(pid {holder or 'unknown'}); stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _PIDLOCK["fd"] = fd


def _release_pidfile() -> None:
    fd = _PIDLOCK["fd"]
    if fd is not None:
        _PIDLOCK["fd"] = None
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
