"""The commit process's side of gateway.inbound.commitproc: it reads the prepared
messages of every LMTP process, commits them in batches with its writer and
answers each after the commit that holds it (a failure with its `kind`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import select
import selectors
import signal
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy.exc import IntegrityError

from gateway.commlog import Comm, add_comm
from gateway.inbound.commitwire import RESULT_FIELDS, comm_in, frame, split, unpack
from gateway.store.db import is_temporary

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from gateway.config import Config
    from gateway.inbound.pipeline import Pipeline
    from gateway.runtime import Runtime
    from gateway.store import Deferred
    from gateway.store.writer import BatchWriter


class CommitHost(Protocol):
    """What the commit process needs of the process's Gateway."""

    config: Config
    runtime: Runtime
    pipeline: Pipeline
    writer: BatchWriter
    engine: Engine


log = structlog.get_logger(__name__)


class _Conn:
    """One LMTP process's socket in the commit process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out = bytearray()         # replies not yet sent
        self.open = True
        # One read buffer for the connection's life: recv(1 MB) allocated a fresh
        # megabyte per read (mmap, shrink, munmap, and a page fault per page the
        # kernel filled), a few per cent of the commit process's time.
        self._rbuf = bytearray(self.READ_SIZE)
        self._rview = memoryview(self._rbuf)

    READ_SIZE = 1 << 20

    def frames(self) -> list[tuple[int, bytes]] | None:
        """Read what is there (the socket is ready); the whole request frames in it,
        or None when the LMTP process is gone (end of file, or a reset: it died with
        replies unread)."""
        try:
            n = self.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not n:
            return None
        self.buf += self._rview[:n]
        return split(self.buf)

    def send(self) -> bool:
        """Send what the socket takes now; the rest waits for it to be writable.
        False when the LMTP process is gone."""
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        del self.out[:n]
        return True


class CommitServer:
    """The commit process: one thread reads the requests of every LMTP process,
    commits them in batches with the process's writer (on this thread: nothing
    else in the commit process writes) and sends each reply after its commit.

    Whatever arrived while a transaction ran is the next batch, so the group
    commit works as in an LMTP process; having no second thread means no hand-off
    of Python's interpreter lock per message, which measured more than the
    commit stages' own Python.
    """

    def __init__(self, gw: CommitHost, socks: list[socket.socket]) -> None:
        self.gw = gw
        self.conns = [_Conn(s) for s in socks]
        self.all_gone = threading.Event()
        self.failed = False
        self._thread = threading.Thread(target=self._loop, name="commit-loop", daemon=True)
        if not self.conns:
            self.all_gone.set()

    def start(self) -> None:
        self._thread.start()

    def loop_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for c in self.conns:
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, c)
        try:
            while any(c.open for c in self.conns):
                jobs: list[tuple[Callable[[Connection, Deferred], Any],
                                 Callable[[bool, Any], None]]] = []
                for key, events in sel.select(timeout=1.0):
                    conn: _Conn = key.data
                    if events & selectors.EVENT_WRITE and not conn.send():
                        self._gone(sel, conn)
                        continue
                    if events & selectors.EVENT_READ:
                        frames = conn.frames()
                        if frames is None:
                            self._gone(sel, conn)
                            continue
                        for rid, body in frames:
                            self.take(conn, rid, body, jobs)
                if jobs:
                    self.gw.writer.run_here(jobs, after=lambda: self._flush(sel))
                self._flush(sel)
        except Exception:
            self.failed = True
            log.exception("commit process: the commit loop failed")
        finally:
            sel.close()
            self.all_gone.set()

    def _flush(self, sel: selectors.BaseSelector) -> None:
        """After each transaction: send the replies it made (what a socket does not
        take now is sent when it is writable)."""
        for c in self.conns:
            if not c.open or not c.out:
                continue
            if not c.send():
                self._gone(sel, c)
            elif c.out:
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            else:
                sel.modify(c.sock, selectors.EVENT_READ, c)

    def _gone(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """An LMTP process went away: its replies have nobody to go to."""
        if not conn.open:
            return
        conn.open = False
        if conn.out:
            log.warning("commit process: an LMTP process went away before its replies",
                        bytes=len(conn.out))
            conn.out.clear()
        sel.unregister(conn.sock)
        conn.sock.close()

    def take(self, conn: _Conn, rid: int, data: bytes,
             jobs: list[tuple[Callable[[Connection, Deferred], Any],
                              Callable[[bool, Any], None]]]) -> None:
        """One request frame: its job joins the batch. A request that cannot be read
        or queued is answered with an error; the connection goes on."""
        try:
            # from our own LMTP process over a socketpair made before the fork
            op, body = pickle.loads(data)  # noqa: S301
            if op == "commit":
                gw = self.gw
                ctx, comm = unpack(body)
                jobs.append((gw.pipeline.commit_job(ctx, gw.runtime, comm),
                             functools.partial(_reply, conn, rid)))
            elif op == "comm":
                jobs.append((_comm_job(comm_in(body)), _report_unlogged))
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            log.exception("commit process: request failed", request=rid)
            if rid:
                conn.out += frame(rid, (False, ("error", f"{type(exc).__name__}: {exc}"[:2000])))

    def reload(self) -> None:
        """SIGHUP: the configuration the commit stages see (the main process
        synchronizes queues and addresses into the database itself)."""
        from gateway.config import load_config
        from gateway.runtime import build_runtime

        try:
            cfg = load_config(self.gw.config.conf_dir)
            rt = build_runtime(cfg)
        except Exception as exc:
            log.error("commit process: reload refused; keeping the running configuration",
                      error=str(exc)[:2000])
            return
        self.gw.config, self.gw.runtime = cfg, rt
        log.info("commit process: configuration reloaded")


def _reply(conn: _Conn, rid: int, ok: bool, value: Any) -> None:
    """After the commit (or its failure): the request's answer, sent with the batch's."""
    if ok:
        d = value.__dict__
        msg: tuple[Any, ...] = (True, tuple([d[k] for k in RESULT_FIELDS]))
    else:
        kind = ("temporary" if is_temporary(value) else
                "integrity" if isinstance(value, IntegrityError) else "error")
        msg = (False, (kind, f"{type(value).__name__}: {value}"[:2000]))
    try:
        data = frame(rid, msg)
    except Exception as pexc:       # an unpicklable result must not lose the reply
        data = frame(rid, (False, ("error", f"result not sendable: {pexc!r}"[:2000])))
    if conn.open:
        conn.out += data


def _comm_job(comm: Comm) -> Callable[[Connection, Deferred], None]:
    return lambda conn, later: add_comm(conn, comm, later)


def _report_unlogged(ok: bool, value: Any) -> None:
    if not ok:
        log.warning("LMTP connection not logged", error=repr(value)[:300])


# How long a stopping commit process waits for the LMTP processes to finish their
# messages in flight (they wait 60 s themselves, then close their socket).
STOP_WAIT = 90.0


def run_commit_process(gw: CommitHost, socks: list[socket.socket],
                       wake_main: Callable[[], None]) -> int:
    """The commit process's main thread: serve until every LMTP process has closed
    its socket after a stop (SIGTERM; SIGINT is the main process's to decide), reload
    on SIGHUP; the exit status (1 when the commit loop failed).

    `deskgate serve` forks with the signals blocked: the loop thread keeps them
    blocked, this thread handles them and unblocks them (so a gpg-agent started by
    a reload gets a normal signal mask)."""
    from gateway import heap
    from gateway.outbound.sender import add_waker

    # An auto-response committed here is sent by the main process's sender.
    add_waker(lambda _delay: wake_main())
    if gw.config.helpdesk.enabled:
        from gateway.helpdesk.worker import add_waker as add_handoff_waker

        add_handoff_waker(wake_main)
    server = CommitServer(gw, socks)
    server.start()
    got: set[int] = set()

    # The handler only notes the signal; the wake-up is the byte Python's own C handler
    # writes to the wake-up pipe. A handler that set a threading.Event took the
    # Event's lock: a second signal arriving while the first handler held it (systemd
    # sends SIGTERM to the whole unit next to the main process's, `deskgate reload`
    # twice) ran the handler again inside the first, which waited for that lock
    # forever, and the commit process neither reloaded nor stopped.
    def on_signal(signo: int, _frame: object) -> None:
        got.add(signo)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP,
                                                signal.SIGINT, signal.SIGUSR1})
    log.debug("commit process serving", lmtp_processes=len(socks), pid=os.getpid())
    while not server.all_gone.is_set():
        select.select([wake_r], [], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 512):
                pass
        if signal.SIGHUP in got:
            got.discard(signal.SIGHUP)
            server.reload()
            heap.settle()
        if signal.SIGTERM in got:
            if not server.all_gone.wait(STOP_WAIT):
                log.warning("commit process: LMTP processes still connected after "
                            f"{STOP_WAIT:.0f} s; stopping")
            break
    if server.loop_alive():
        return 1        # still in a transaction: exit without closing under it
    # Not gw.close(): the gpg-agent of the GnuPG home is the main process's to stop.
    with contextlib.suppress(Exception):
        gw.writer.close()
    with contextlib.suppress(Exception):
        gw.engine.dispose()
    return 1 if server.failed else 0
