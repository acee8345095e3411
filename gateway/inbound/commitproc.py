"""The commit process: one process runs the inbound commit for every LMTP process.

With `[store] commit_process = true` (the default) `deskgate serve` forks one more
process before the LMTP workers. Each LMTP process (the main one and every
pre-forked worker) prepares a message on its own event loop (parse, decrypt,
filters, ...) and sends the prepared message over a socketpair to the commit
process, whose group-commit writer runs the commit stages (dedupe, follow-up,
route, store, hand-off, record, auto-response) for the messages of all LMTP
processes in one transaction per batch. The reply still waits for the commit
that holds the message: the commit process answers each request only after it.

Why a process: the writer's Python (building rows, the communication log) and
the event loop's Python (protocol, parsing) no longer take turns on one GIL, and
with several LMTP workers on SQLite their messages share one transaction and one
fsync instead of queueing on the database's single write lock.

The wire is a 4-byte length and a pickle per frame, over socketpairs made by
`deskgate serve` before it forks (no socket file, nothing else can connect).
  request  (id, "commit", MessageContext, Comm) → reply (id, True, result fields)
                                                  or   (id, False, (kind, text))
  request  (0, "comm", None, Comm)              → no reply (an LMTP connection record)
`kind` is "temporary" (the database is down or locked: the LMTP process answers
4xx), "integrity" or "error" (the LMTP process quarantines the message, as it does
for a commit that failed in its own writer).

If the commit process is gone, every message waiting for it gets a temporary
failure (its commit may or may not have happened; the MTA's retry is answered as a
duplicate if it did) and the LMTP process commits in its own writer from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pickle
import queue
import signal
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from sqlalchemy.exc import IntegrityError

from gateway.commlog import Comm, add_comm
from gateway.model import MessageContext
from gateway.store.db import is_temporary

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from gateway.config import Config
    from gateway.inbound.pipeline import Pipeline
    from gateway.runtime import Runtime
    from gateway.store import Deferred
    from gateway.store.db import BatchWriter


class CommitHost(Protocol):
    """What the commit process needs of the process's Gateway."""

    config: Config
    runtime: Runtime
    pipeline: Pipeline
    writer: BatchWriter
    engine: Engine

log = structlog.get_logger(__name__)

_LEN = struct.Struct("!I")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# What a committed message's context sends back: all the LMTP process needs for
# its reply, its log line and its metrics.
RESULT_FIELDS = ("verdict", "action", "ticket_id", "ticket_number", "article_id",
                 "handoff_id", "queue", "trace")


def frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=_PROTOCOL)
    return _LEN.pack(len(data)) + data


def portable(ctx: MessageContext) -> MessageContext:
    """The context as it is sent: without the prepare stages' rule results (`hits`,
    read by `filter test` only; what hit is in the trace and the log) and without
    the parsed email.message.Message object (the commit stages read the parsed
    fields; only the follow-up of a bounce reads the Message, so a bounce keeps it)."""
    _ = ctx.envelope.sha256     # hashed here: the commit process has the busier core
    new = object.__new__(MessageContext)
    new.__dict__.update(ctx.__dict__)
    new.hits = []
    p = ctx.parsed
    if p is not None and not ctx.is_bounce:
        parsed = object.__new__(type(p))
        parsed.__dict__.update(p.__dict__)
        parsed.msg = None  # type: ignore[assignment]
        new.parsed = parsed
    return new


class CommitUnavailable(Exception):
    """The commit process went away while the message waited for it."""


class RemoteCommitError(Exception):
    """The commit process could not commit the message."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind

    @property
    def temporary(self) -> bool:
        return self.kind == "temporary"


def failed_temporarily(exc: BaseException) -> bool:
    """A commit that failed in a way a retry can fix (4xx, never a quarantine)."""
    return (isinstance(exc, CommitUnavailable)
            or (isinstance(exc, RemoteCommitError) and exc.temporary))


# ---------------------------------------------------------------- LMTP process side

class CommitClient(asyncio.Protocol):
    """An LMTP process's connection to the commit process (on its event loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.buf = bytearray()
        self.next_id = 0
        self.up = False
        self.closing = False
        self.on_lost: Callable[[], None] = lambda: None    # after an unexpected loss

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self, sock=self.sock)
        self.up = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.up = False
        waiting = list(self.pending.values())
        self.pending.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(CommitUnavailable("the commit process went away"))
        if not self.closing:
            log.error("commit process gone; this process commits in its own writer from now "
                      "on (restart deskgate to get the commit process back)",
                      waiting=len(waiting))
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        at, size = 0, len(buf)
        while size - at >= 4:
            (n,) = _LEN.unpack_from(buf, at)
            if size - at - 4 < n:
                break
            # from the commit process over a socketpair made before the fork
            rid, ok, payload = pickle.loads(memoryview(buf)[at + 4:at + 4 + n])  # noqa: S301
            at += 4 + n
            fut = self.pending.pop(rid, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(payload)
            else:
                fut.set_exception(RemoteCommitError(*payload))
        if at:
            del buf[:at]

    # requests
    async def commit(self, ctx: MessageContext, comm: Comm) -> dict[str, Any]:
        """Commit a prepared message in the commit process; its result fields."""
        if not self.up or self.transport is None:
            raise CommitUnavailable("the commit process is not connected")
        self.next_id += 1
        rid = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.transport.write(frame((rid, "commit", portable(ctx), comm)))
        return await fut

    def log_connection(self, comm: Comm) -> bool:
        """Queue an LMTP connection record; False when the commit process is gone."""
        if not self.up or self.transport is None:
            return False
        self.transport.write(frame((0, "comm", None, comm)))
        return True

    def close(self) -> None:
        self.closing = True
        self.up = False
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()


# ---------------------------------------------------------------- commit process side

class _Conn:
    """One LMTP process's socket in the commit process: a reader and a sender thread."""

    def __init__(self, server: CommitServer, sock: socket.socket, n: int) -> None:
        self.server, self.sock = server, sock
        self.out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, name=f"commit-read-{n}", daemon=True)
        self.sender = threading.Thread(target=self._send, name=f"commit-send-{n}", daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.sender.start()

    def _read(self) -> None:
        sock = self.sock
        buf = bytearray()
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                buf += data
                at, size = 0, len(buf)
                while size - at >= 4:
                    (n,) = _LEN.unpack_from(buf, at)
                    if size - at - 4 < n:
                        break
                    # from our own LMTP process over a socketpair made before the fork
                    req = memoryview(buf)[at + 4:at + 4 + n]
                    at += 4 + n
                    self.server.take(self, req)
                if at:
                    del buf[:at]
        except OSError as exc:
            log.warning("commit process: LMTP process connection failed", error=repr(exc))
        finally:
            self.out.put(None)
            self.server.gone(self)

    def _send(self) -> None:
        out, sock = self.out, self.sock
        while True:
            first = out.get()
            if first is None:
                break
            chunks = [first]
            stop = False
            while True:
                try:
                    nxt = out.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                chunks.append(nxt)
            try:
                sock.sendall(b"".join(chunks))
            except OSError:
                break          # the LMTP process is gone; its reader ends too
            if stop:
                break

    def reply(self, rid: int, fut: Future[MessageContext]) -> None:
        """Writer thread, after the commit: the request's answer goes to the sender."""
        exc = fut.exception()
        if exc is None:
            c = fut.result()
            d = c.__dict__
            msg: tuple[Any, ...] = (rid, True, {k: d[k] for k in RESULT_FIELDS})
        else:
            kind = ("temporary" if is_temporary(exc) else
                    "integrity" if isinstance(exc, IntegrityError) else "error")
            msg = (rid, False, (kind, f"{type(exc).__name__}: {exc}"[:2000]))
        try:
            data = frame(msg)
        except Exception as pexc:       # an unpicklable result must not lose the reply
            data = frame((rid, False, ("error", f"result not sendable: {pexc!r}"[:2000])))
        self.out.put(data)


class CommitServer:
    """The commit process: runs the commit jobs of every LMTP process in one writer."""

    def __init__(self, gw: CommitHost, socks: list[socket.socket]) -> None:
        self.gw = gw
        self.conns = [_Conn(self, s, i) for i, s in enumerate(socks)]
        self.open = len(self.conns)
        self.all_gone = threading.Event()
        self._lock = threading.Lock()
        if not self.conns:
            self.all_gone.set()

    def start(self) -> None:
        for c in self.conns:
            c.start()

    def take(self, conn: _Conn, data: memoryview) -> None:
        """Reader thread: one request frame. A request that cannot be read or queued
        is answered with an error; the connection goes on."""
        rid = 0
        try:
            rid, op, ctx, comm = pickle.loads(data)  # noqa: S301 (see _read)
            self.handle(conn, rid, op, ctx, comm)
        except Exception as exc:
            log.exception("commit process: request failed", request=rid)
            if rid:
                conn.out.put(frame((rid, False, ("error", f"{type(exc).__name__}: {exc}"[:2000]))))
        finally:
            data.release()

    def handle(self, conn: _Conn, rid: int, op: str, ctx: MessageContext | None,
               comm: Comm) -> None:
        """Reader thread: queue one request's job on the writer."""
        gw = self.gw
        if op == "commit":
            assert ctx is not None
            job = gw.pipeline.commit_job(ctx, gw.runtime, comm)
            try:
                fut = gw.writer.submit_deferring(job)
            except Exception as exc:
                conn.out.put(frame((rid, False, ("temporary", f"writer: {exc!r}"[:2000]))))
                return
            fut.add_done_callback(functools.partial(conn.reply, rid))
        elif op == "comm":
            logged = gw.writer.submit_deferring(_comm_job(comm))
            logged.add_done_callback(_report_unlogged)
        else:
            log.error("commit process: unknown request", op=op)

    def gone(self, conn: _Conn) -> None:
        with self._lock:
            self.open -= 1
            if self.open <= 0:
                self.all_gone.set()

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


def _comm_job(comm: Comm) -> Callable[[Connection, Deferred], None]:
    return lambda conn, later: add_comm(conn, comm, later)


def _report_unlogged(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.warning("LMTP connection not logged", error=repr(exc)[:300])


# How long a stopping commit process waits for the LMTP processes to finish their
# messages in flight (they wait 60 s themselves, then close their socket).
STOP_WAIT = 90.0


def run_commit_process(gw: CommitHost, socks: list[socket.socket],
                       wake_main: Callable[[], None]) -> None:
    """The commit process's main thread: serve until every LMTP process has closed
    its socket after a stop (SIGTERM; SIGINT is the main process's to decide), reload
    on SIGHUP. The signals are blocked by `deskgate serve` before it forks."""
    from gateway.outbound.sender import add_waker

    # An auto-response committed here is sent by the main process's sender.
    add_waker(lambda _delay: wake_main())
    if gw.config.helpdesk.enabled:
        from gateway.helpdesk.worker import add_waker as add_handoff_waker

        add_handoff_waker(wake_main)
    server = CommitServer(gw, socks)
    gw.writer.start()
    server.start()
    log.debug("commit process serving", lmtp_processes=len(socks), pid=os.getpid())
    stopping = False
    waits = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1}
    while not server.all_gone.is_set():
        if stopping:
            if not server.all_gone.wait(STOP_WAIT):
                log.warning("commit process: LMTP processes still connected after "
                            f"{STOP_WAIT:.0f} s; stopping")
            break
        sig = signal.sigtimedwait(waits, 1.0)
        if sig is None:
            continue
        if sig.si_signo == signal.SIGHUP:
            server.reload()
        elif sig.si_signo == signal.SIGTERM:
            stopping = True
    # Not gw.close(): the gpg-agent of the GnuPG home is the main process's to stop.
    with contextlib.suppress(Exception):
        gw.writer.close()
    with contextlib.suppress(Exception):
        gw.engine.dispose()
