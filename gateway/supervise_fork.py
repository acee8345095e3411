"""The process plumbing of `deskgate serve` (gateway.supervise): forking a named child
that dies with the main process, the signals held back until handled, signalling
and reaping children, the start-up heap, and the pid file lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from gateway import errors, heap
from gateway.config import Config

log = structlog.get_logger(__name__)


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


def _poke_main(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGUSR1)


def _settle_heap() -> None:
    """Freeze the start-up heap (gateway.heap); again after each reload, once the
    reload has swapped everything (services switched and restarted included)."""
    frozen = heap.settle()
    log.debug("heap frozen", objects=frozen)


def pidfile_path(config: Config) -> Path:
    return config.state_dir / "run" / "deskgate.pid"


# The open, flock'ed pid file of this process (inherited by pre-forked workers).
_PIDLOCK: dict[str, int | None] = {"fd": None}
# How long serve waits for the pid file's lock: reload's probe holds it for
# microseconds, a running serve for good.
_PIDLOCK_WAIT = 1.0


def lock_pidfile(config: Config) -> None:
    """Take an exclusive flock on the pid file before anything is bound, and write our pid.

    A second `deskgate serve` on the same configuration fails here, before it can
    touch the first one's sockets. The lock goes with the process (however it dies).
    A lock that goes within _PIDLOCK_WAIT seconds was `deskgate reload`'s probe
    (pidfile_locked), not a running serve: it is waited for.
    """
    path = pidfile_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + _PIDLOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                holder = _read_pid(path)
                raise errors.InUse(f"{path} is locked by a running deskgate serve "
                                   f"(pid {holder or 'unknown'}); stop it first") from None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _PIDLOCK["fd"] = fd


def pidfile_locked(path: Path) -> bool:
    """Whether a running serve holds the pid file's lock (FileNotFoundError: no file).

    A shared lock, let go at once, is refused only while a serve holds its exclusive
    one: then the pid in the file is that serve's, not a process that got the pid of a
    gateway that died. Shared, so that two probes do not disturb each other.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        return True
    finally:
        os.close(fd)        # also lets go of a lock just taken
    return False


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
