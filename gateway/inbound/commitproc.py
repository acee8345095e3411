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
  request  (id, "commit", pack(context, comm)) → reply (id, True, result fields)
                                                  or   (id, False, (kind, text))
  request  (0, "comm", comm_out(comm))        → no reply (an LMTP connection record)
`kind` is "temporary" (the database is down or locked: the LMTP process answers
4xx), "integrity" or "error" (the LMTP process quarantines the message, as it does
for a commit that failed in its own writer).

If the commit process is gone, every message waiting for it gets a temporary
failure (its commit may or may not have happened; the MTA's retry is answered as a
duplicate if it did) and the LMTP process commits in its own writer until the main
process has started a new commit process (gateway.supervise, a fresh interpreter)
and handed it new socketpairs: its own directly, each worker's over the worker's control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import os
import pickle
import selectors
import signal
import socket
import struct
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import structlog
from sqlalchemy.exc import IntegrityError

from gateway.commlog import Comm, CommObj, Entry, add_comm
from gateway.model import Envelope, MessageContext, Parsed
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

_T = TypeVar("_T")
# A frame: the pickle's length, the request id, the pickle. The id is outside the
# pickle so that a frame whose pickle cannot be read is still answered.
_HEAD = struct.Struct("!IQ")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# What a committed message's context sends back: all the LMTP process needs for
# its reply, its log line and its metrics.
RESULT_FIELDS = ("verdict", "action", "ticket_id", "ticket_number", "article_id",
                 "handoff_id", "queue", "trace")


# What a commit process started again (gateway.supervise) sends first, once it can serve.
READY = b"DGREADY\n"


def fingerprint() -> str:
    """What both ends of the wire must agree on: deskgate's version and the field
    order of every object sent as a tuple. A commit process started from other code
    (installed since `deskgate serve` started) refuses to serve (gateway.supervise)."""
    import gateway

    text = repr((gateway.__version__, _PROTOCOL, _ENV, _PARSED, _OBJ, _COMM, _CTX_REST,
                 RESULT_FIELDS))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def frame(rid: int, obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=_PROTOCOL)
    return _HEAD.pack(len(data), rid) + data


def split(buf: bytearray) -> list[tuple[int, bytes]]:
    """The whole frames at the start of buf as (id, pickle), removed from it."""
    at, size, out = 0, len(buf), []
    hsize = _HEAD.size
    while size - at >= hsize:
        n, rid = _HEAD.unpack_from(buf, at)
        if size - at - hsize < n:
            break
        out.append((rid, bytes(buf[at + hsize:at + hsize + n])))
        at += hsize + n
    if at:
        del buf[:at]
    return out


def portable(ctx: MessageContext) -> MessageContext:
    """The context as it is sent: without the prepare stages' rule results (`hits`,
    read by `filter test` only; what hit is in the trace and the log) and without
    the parsed email.message.Message object (the commit stages read the parsed
    fields; only the follow-up of a bounce reads the Message, so a bounce keeps it)."""
    _ = ctx.envelope.sha256     # hashed in the LMTP process, not by the commit's writer
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


# The wire form of a message: its objects as tuples of their fields (by name, in
# dataclass order; both ends run the same code: forked from one process, or checked
# with fingerprint() when the commit process was started again). Pickling
# tuples of plain values costs a fraction of pickling the dataclasses, whose
# generic reduce runs Python code per object on both sides. Whatever a field holds
# (Crypto, Verdict, attachments, a bounce's Message) is pickled as it is.
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_ENV = _names(Envelope)
_PARSED = _names(Parsed)
_OBJ = _names(CommObj)
_COMM = _names(Comm)
_CTX_REST = tuple(n for n in _names(MessageContext)
                  if n not in ("envelope", "parsed", "log"))
_TIMES = frozenset({"start", "end", "received_at"})     # of CommObj, Comm, Envelope


# Times travel as integer microseconds since the epoch when they are UTC (what
# deskgate makes): a pickled datetime runs its reduce and a timezone's on both
# sides, about a third of a message's pickling. Any other value travels as it is.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _t_out(v: Any) -> Any:
    if type(v) is datetime and v.tzinfo is UTC:
        return (v - _EPOCH) // _US
    return v


def _t_in(v: Any) -> Any:
    return _EPOCH + timedelta(microseconds=v) if type(v) is int else v


def _build(cls: type[_T], names: tuple[str, ...], values: Any) -> _T:
    obj = object.__new__(cls)
    obj.__dict__.update(zip(names, values, strict=True))
    return obj


def _obj_out(o: CommObj) -> tuple[Any, ...]:
    d = o.__dict__
    entries = [(e.priority, e.key, e.value, _t_out(e.time)) for e in o.entries]
    return tuple([entries if n == "entries" else _t_out(d[n]) if n in _TIMES else d[n]
                  for n in _OBJ])


def _obj_in(t: tuple[Any, ...]) -> CommObj:
    o = _build(CommObj, _OBJ, t)
    d = o.__dict__
    d["start"], d["end"] = _t_in(d["start"]), _t_in(d["end"])
    entries: list[tuple[Any, ...]] = d["entries"]
    o.entries = [Entry(p, k, v, _t_in(tm)) for p, k, v, tm in entries]
    return o


def comm_out(comm: Comm) -> tuple[Any, ...]:
    d = comm.__dict__
    objects = [_obj_out(o) for o in comm.objects]
    return tuple([objects if n == "objects" else _t_out(d[n]) if n in _TIMES else d[n]
                  for n in _COMM])


def comm_in(t: tuple[Any, ...]) -> Comm:
    comm = _build(Comm, _COMM, t)
    d = comm.__dict__
    d["start"], d["end"] = _t_in(d["start"]), _t_in(d["end"])
    objects: list[tuple[Any, ...]] = d["objects"]
    comm.objects = [_obj_in(o) for o in objects]
    return comm


def pack(ctx: MessageContext, comm: Comm) -> tuple[Any, ...]:
    """A prepared message and its communication as the commit process gets them."""
    ctx = portable(ctx)
    env, p = ctx.envelope.__dict__, ctx.parsed
    d = ctx.__dict__
    return (tuple([_t_out(env[n]) if n in _TIMES else env[n] for n in _ENV]), env["sha256"],
            None if p is None else tuple([p.__dict__[n] for n in _PARSED]),
            _obj_out(ctx.log), tuple([d[n] for n in _CTX_REST]), comm_out(comm))


def unpack(t: tuple[Any, ...]) -> tuple[MessageContext, Comm]:
    envt, sha, pt, logt, rest, commt = t
    env = _build(Envelope, _ENV, envt)
    env.__dict__["received_at"] = _t_in(env.__dict__["received_at"])
    env.__dict__["sha256"] = sha            # the cached_property's value
    ctx = _build(MessageContext, _CTX_REST, rest)
    ctx.envelope, ctx.log = env, _obj_in(logt)
    ctx.parsed = None if pt is None else _build(Parsed, _PARSED, pt)
    return ctx, comm_in(commt)


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
        self._out: list[bytes] = []     # requests of this loop iteration, one write

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
            log.error("commit process gone; this process commits in its own writer until "
                      "the main process has started a new one", waiting=len(waiting))
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for rid, body in split(self.buf):
            fut = self.pending.pop(rid, None)
            if fut is None or fut.done():
                continue
            try:
                # from the commit process over a socketpair made before the fork
                ok, payload = pickle.loads(body)  # noqa: S301
                result = (dict(zip(RESULT_FIELDS, payload, strict=True)) if ok
                          else RemoteCommitError(*payload))
            except Exception as exc:
                fut.set_exception(RemoteCommitError("error", f"unreadable reply: {exc!r}"))
                continue
            if isinstance(result, RemoteCommitError):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        if self.closing and not self.pending:
            self.close()            # retired, and the last answer is in

    # requests
    async def commit(self, ctx: MessageContext, comm: Comm) -> dict[str, Any]:
        """Commit a prepared message in the commit process; its result fields."""
        if not self.up or self.transport is None:
            raise CommitUnavailable("the commit process is not connected")
        self.next_id += 1
        rid = self.next_id
        data = frame(rid, ("commit", pack(ctx, comm)))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self._send(data)
        return await fut

    def _send(self, data: bytes) -> None:
        """Queue a request; the requests of one event-loop iteration go out in one
        write (one system call and one wake-up of the commit process, not one each)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._write_out)
        self._out.append(data)

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def log_connection(self, comm: Comm) -> bool:
        """Queue an LMTP connection record; False when the commit process is gone."""
        if not self.up or self.transport is None:
            return False
        self._send(frame(0, ("comm", comm_out(comm))))
        return True

    def retire(self) -> None:
        """Take no more requests; close once the requests sent have their answers
        (or the commit process goes away)."""
        self.closing = True
        self.up = False
        if not self.pending:
            self.close()

    def close(self) -> None:
        self.closing = True
        self.up = False
        if self.transport is not None:
            if self._out:           # queued this loop iteration (connection records)
                self._write_out()   # the transport sends them before it closes
            self.transport.close()
        else:
            self.sock.close()


# ---------------------------------------------------------------- commit process side

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
    woken = threading.Event()

    def on_signal(signo: int, _frame: object) -> None:
        got.add(signo)
        woken.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP,
                                                signal.SIGINT, signal.SIGUSR1})
    log.debug("commit process serving", lmtp_processes=len(socks), pid=os.getpid())
    while not server.all_gone.is_set():
        woken.wait(1.0)
        woken.clear()
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
