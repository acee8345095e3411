"""The commit process of `deskgate serve` (gateway.inbound.commitproc) as the main
process and the LMTP workers see it: connecting an LMTP process to it, the workers'
control sockets, the main process's watch that starts a new one when it dies
(CommitKeeper), and the entry of that new one (a new interpreter, run as
`python -m gateway.supervise_commit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from gateway.app import Gateway
from gateway.config import Config
from gateway.metrics import COMMIT_RESTARTS
from gateway.supervise_fork import (
    _SIGNALS,
    COMMIT_PROCESS_NAME,
    _die_with,
    _poke_main,
    _reap_now,
    _set_name,
    _settle_heap,
)

log = structlog.get_logger(__name__)


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
    from gateway.inbound.commitwire import READY

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
    from gateway.inbound.commitserver import run_commit_process
    from gateway.inbound.commitwire import READY

    gw = Gateway(config)
    _settle_heap()
    if announce:
        socks[0].sendall(READY)
    return run_commit_process(gw, socks, lambda: _poke_main(parent))


def spawn_commit_process(config: Config, ends: Sequence[socket.socket], parent: int) -> int:
    """Start a commit process serving `ends` (the commit ends of new socketpairs, one
    per LMTP process) for the main process `parent`, with `config` (the running
    configuration, not the files as they are now); its pid.

    A new interpreter (posix_spawn), not a fork: the main process has threads
    running by now (its writer, the sender, ...), and a forked copy of a process
    with threads may inherit a lock another thread held. A new interpreter imports
    deskgate as installed now: it refuses to serve when that is another version, lays
    out the messages between the processes differently or has other code in the
    modules that make the wire (an upgrade or reinstall since `deskgate serve`
    started), as the two would read each other's messages by field order
    (gateway.inbound.commitwire.fingerprint). Once it can serve it
    sends READY on its first socket (_wait_ready).
    """
    import tempfile

    import gateway
    from gateway.inbound.commitwire import fingerprint

    with tempfile.TemporaryFile() as conf:
        pickle.dump(config, conf, protocol=pickle.HIGHEST_PROTOCOL)
        conf.flush()
        conf.seek(0)            # the child's descriptor shares this offset
        fds = [conf.fileno(), *(s.fileno() for s in ends)]
        root = str(Path(gateway.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        # -P: the package from `root`, never a gateway/ in the current directory
        argv = [sys.executable, "-P", "-m", "gateway.supervise_commit", str(parent), fingerprint(),
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
    from gateway.inbound.commitwire import fingerprint
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
