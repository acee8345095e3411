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
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway import errors, heap, sdnotify
from gateway.app import Gateway
from gateway.config import Config
from gateway.metrics import COMMIT_RESTARTS

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


async def _connect_commit(gw: Gateway, sock: socket.socket | None,
                          report: Callable[[], None] | None = None) -> None:
    """Send this LMTP process's prepared messages to the commit process. `report`
    (an LMTP worker's) tells the main process now and whenever the connection is lost."""
    if sock is None:
        return
    from gateway.inbound.commitproc import CommitClient

    client = CommitClient(sock)
    await client.connect()
    old, gw.pipeline.remote = gw.pipeline.remote, client
    if report is not None:
        client.on_lost = report
        report()
    if old is not None:
        # A commit process that still runs (only this connection broke, or another
        # process's did): what it is committing is answered; then this end closes,
        # so it stops once no LMTP process is left on it.
        old.retire()


COMMIT_UP, COMMIT_GONE = b"commit up", b"commit gone"


def _commit_reporter(gw: Gateway, control: socket.socket | None
                     ) -> Callable[[], None] | None:
    """A worker's report to the main process, over its control socket, of whether it
    sends its messages to the commit process (COMMIT_UP) or commits itself (COMMIT_GONE)."""
    if control is None:
        return None

    def report() -> None:
        remote = gw.pipeline.remote
        with contextlib.suppress(OSError):      # a main process that is gone: SIGTERM
            control.send(COMMIT_UP if remote is not None and remote.up else COMMIT_GONE)

    return report


def _listen_for_commit_sockets(gw: Gateway, control: socket.socket,
                               report: Callable[[], None] | None = None) -> None:
    """A worker's side of its control socket: each message carries the socket of a
    new commit process, which this process sends its prepared messages to from then on."""
    loop = asyncio.get_running_loop()
    control.setblocking(False)

    def readable() -> None:
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(control, 64, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # (a datagram socket does not report its peer's close: a worker whose
            # main process is gone gets SIGTERM instead, _die_with)
            loop.remove_reader(control.fileno())
            return
        for fd in fds:
            task = asyncio.ensure_future(_connect_commit(gw, socket.socket(fileno=fd),
                                                         report))
            connecting.add(task)
            task.add_done_callback(connecting.discard)

    connecting: set[asyncio.Future[None]] = set()
    loop.add_reader(control.fileno(), readable)


class CommitKeeper:
    """The main process's watch on the commit process: when it dies, its pid leaves
    the list of children (reaped at once, never signalled again: the pid may belong to
    another process by then) and a new one is started after a pause (1 s, doubling
    up to 60 s while new ones die within a minute): its socket goes to this process
    and, over their control sockets, to the LMTP workers. Meanwhile each LMTP process
    commits in its own writer (nothing waits for the new one)."""

    FIRST_PAUSE = 1.0
    MAX_PAUSE = 60.0
    READY_WAIT = 120.0   # for a new interpreter's imports and database, on a cold cache
    STEADY = 60.0        # a commit process that lived this long resets the pause

    def __init__(self, gw: Gateway, workers: list[int], pid: int,
                 controls: Sequence[socket.socket]) -> None:
        self.gw, self.workers, self.controls = gw, workers, list(controls)
        # Per LMTP worker (numbered from 1, as its control socket): whether it sends its
        # messages to the commit process, as it last reported.
        self.worker_up = [True] * len(self.controls)
        loop = asyncio.get_running_loop()
        for n, control in enumerate(self.controls):
            control.setblocking(False)  # a worker that stops reading never blocks us
            loop.add_reader(control.fileno(), self._read_report, n, control)
        gw.commit_lost_by_workers = lambda: [f"lmtp worker {n + 1}" for n, up
                                             in enumerate(self.worker_up) if not up]
        self.pid: int | None = pid
        self.pause = self.FIRST_PAUSE
        self.started = time.monotonic()
        self.restarts = 0
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._watch()

    def _read_report(self, n: int, control: socket.socket) -> None:
        """A worker's COMMIT_UP or COMMIT_GONE (_commit_reporter)."""
        while True:
            try:
                msg = control.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                asyncio.get_running_loop().remove_reader(control.fileno())
                return
            if msg in (COMMIT_UP, COMMIT_GONE):
                self.worker_up[n] = msg == COMMIT_UP

    def _watch(self) -> None:
        remote = self.gw.pipeline.remote
        if remote is not None:
            remote.on_lost = self._lost

    def _lost(self) -> None:
        pid, self.pid = self.pid, None
        if pid is not None:
            if pid in self.workers:
                self.workers.remove(pid)
            # Most often it died; if only the connection broke, it stops (it finishes
            # what the LMTP workers still send it first). The pid is still ours to
            # signal: it is reaped only below.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _reap_now(pid)
        if self.stopping:
            return
        if time.monotonic() - self.started >= self.STEADY:
            self.pause = self.FIRST_PAUSE
        log.warning("commit process gone; starting a new one", pause=self.pause)
        self._task = asyncio.ensure_future(self._restart(self.pause))
        self.pause = min(self.pause * 2, self.MAX_PAUSE)

    def stop(self) -> None:
        self.stopping = True
        for control in self.controls:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(control.fileno())
        if self._task is not None:
            self._task.cancel()

    async def _restart(self, pause: float) -> None:
        await asyncio.sleep(pause)
        if self.stopping:
            return
        # An attempt counts as a start for the pause: one that fails at once is
        # tried again after a longer one.
        self.started = time.monotonic()
        self.restarts += 1
        COMMIT_RESTARTS.inc()
        pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(1 + len(self.controls)):
                pairs.append(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
            self.pid = spawn_commit_process(self.gw.config, [end for _, end in pairs],
                                            os.getpid())
            self.workers.append(self.pid)
            for _, end in pairs:
                end.close()
            # Nothing goes to it before it said it is ready (it may refuse: other code
            # installed); meanwhile every LMTP process goes on committing itself.
            await _wait_ready(pairs[0][0], self.READY_WAIT)
            # This process first: from here on its loss is watched (and the pid
            # signalled and reaped), whatever happens to the workers' hand-over.
            await _connect_commit(self.gw, pairs[0][0])
            self._watch()
        except Exception as exc:      # no socket (EMFILE), no process, not ready
            log.error("commit process not started", error=str(exc) or type(exc).__name__)
            for client, end in pairs:
                client.close()
                end.close()
            self._lost()
            return
        for control, (client, _) in zip(self.controls, pairs[1:], strict=True):
            try:
                socket.send_fds(control, [b"commit"], [client.fileno()])
            except BlockingIOError:
                log.warning("an LMTP worker does not read its control socket; it goes on "
                            "committing in its own writer")
            except OSError:
                pass        # a worker that is gone: the commit process sees that end close
            client.close()
        log.warning("commit process started again", pid=self.pid, restarts=self.restarts)


async def _wait_ready(sock: socket.socket, within: float) -> None:
    """Wait for a new commit process's READY on its socket to this process; raises
    when it closes the socket first (it refused or failed to start) or takes longer
    than `within` seconds. Reads only those bytes: replies come only after requests."""
    from gateway.inbound.commitproc import READY

    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(within):
        while len(got) < len(READY):
            chunk = await loop.sock_recv(sock, len(READY) - len(got))
            if not chunk:
                raise ConnectionError("it stopped before it was ready (see its error above)")
            got += chunk
    if got != READY:
        raise ConnectionError(f"unexpected greeting {got!r}")


def _serve_commits(config: Config, socks: list[socket.socket], parent: int, *,
                   announce: bool = False) -> int:
    """The commit process (gateway.inbound.commitproc): the inbound commit of every
    LMTP process, in one writer; its exit status. `announce`: tell the main process
    (on the first socket) that it is ready, before any request can come."""
    from gateway.inbound.commitproc import READY, run_commit_process

    gw = Gateway(config)
    _settle_heap()
    if announce:
        socks[0].sendall(READY)
    return run_commit_process(gw, socks, lambda: _poke_main(parent))


def _settle_heap() -> None:
    """Freeze the start-up heap (gateway.heap); again after each reload, once the
    reload has swapped everything (services switched and restarted included)."""
    frozen = heap.settle()
    log.debug("heap frozen", objects=frozen)


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
    except Exception:
        log.exception("reload failed; the other processes keep the running configuration")
        return False
    if ok:
        _signal_workers(others, signal.SIGHUP)
    return ok


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


# ---------------------------------------------------------------- a new commit process

def spawn_commit_process(config: Config, ends: Sequence[socket.socket], parent: int) -> int:
    """Start a commit process serving `ends` (the commit ends of new socketpairs, one
    per LMTP process) for the main process `parent`, with `config` (the running
    configuration, not the files as they are now); its pid.

    A new interpreter (posix_spawn), not a fork: the main process has threads
    running by now (its writer, the sender, ...), and a forked copy of a process
    with threads may inherit a lock another thread held. A new interpreter imports
    deskgate as installed now: it refuses to serve when that is another version or
    lays out the messages between the processes differently (an upgrade since
    `deskgate serve` started), as the two would read each other's messages by
    field order (gateway.inbound.commitproc.fingerprint). Once it can serve it
    sends READY on its first socket (_wait_ready).
    """
    import tempfile

    import gateway
    from gateway.inbound.commitproc import fingerprint

    with tempfile.TemporaryFile() as conf:
        pickle.dump(config, conf, protocol=pickle.HIGHEST_PROTOCOL)
        conf.flush()
        conf.seek(0)            # the child's descriptor shares this offset
        fds = [conf.fileno(), *(s.fileno() for s in ends)]
        root = str(Path(gateway.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        # -P: the package from `root`, never a gateway/ in the current directory
        argv = [sys.executable, "-P", "-m", "gateway.supervise", str(parent), fingerprint(),
                *map(str, fds)]
        for fd in fds:
            os.set_inheritable(fd, True)
        try:
            # signals blocked from the start, as after run_serve's fork: a SIGHUP
            # forwarded to it while it imports must not kill it
            return os.posix_spawn(sys.executable, argv, env, setsigmask=_SIGNALS)
        finally:
            for fd in fds:
                os.set_inheritable(fd, False)


def _commit_process_main(argv: list[str]) -> int:
    """The entry of a spawned commit process: PARENT_PID FINGERPRINT CONFIG_FD FD..."""
    from gateway.inbound.commitproc import fingerprint
    from gateway.logs import setup_logging

    parent, wanted = int(argv[0]), argv[1]
    conf_fd, fds = int(argv[2]), [int(a) for a in argv[3:]]
    # as after the fork in run_serve (posix_spawn blocked them already): run_commit_
    # process unblocks them once its handlers are in place, on this thread only
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    _set_name(COMMIT_PROCESS_NAME)
    _die_with(parent)
    socks = [socket.socket(fileno=fd) for fd in fds]
    if fingerprint() != wanted:
        import gateway

        print(f"deskgate commit process: not started: the deskgate installed now "
              f"({gateway.__version__}, {Path(gateway.__file__).parent}) is not the one "
              "`deskgate serve` runs; the LMTP processes commit in their own writer until "
              "deskgate serve is restarted", file=sys.stderr)
        return 3
    with os.fdopen(conf_fd, "rb") as f:
        # written by our main process (spawn_commit_process), same code as checked above
        config: Config = pickle.load(f)  # noqa: S301
    setup_logging(config.gateway.log_level, config.gateway.log_format)
    return _serve_commits(config, socks, parent, announce=True)


if __name__ == "__main__":
    raise SystemExit(_commit_process_main(sys.argv[1:]))
