"""The group-commit writer: one thread runs write jobs, many per transaction.

Every caller's reply waits for the commit that holds its writes; a failed batch is
run again job by job (gateway.store.db decides what is temporary).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gateway.store.checkpoint import Checkpointer
from gateway.store.db import PG_RETRY_SQLSTATES, PG_UNAVAILABLE_SQLSTATES
from gateway.store.fast import Deferred

log = structlog.get_logger(__name__)
T = TypeVar("T")


Job = Callable[[Connection], T]

def _plain(job: Callable[[Connection], T]) -> Callable[[Connection, Deferred], T]:
    return lambda conn, _later: job(conn)


@dataclass
class _Item:
    job: Callable[[Connection, Deferred], Any]
    future: Future[Any] | None        # for threads (submit)
    isolated: bool
    afuture: asyncio.Future[Any] | None = None   # for coroutines (run)
    callback: Callable[[bool, Any], None] | None = None   # for run_here: (ok, result)

    def start(self) -> bool:
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return True


def _settle(pairs: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Runs on the event loop: resolve every waiter of one commit in one callback."""
    for fut, ok, value in pairs:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


_Settled = dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]


class BatchWriter:
    """One thread that runs write jobs, many per transaction (group commit).

    Each job is a function of a Connection that runs inside the shared
    transaction. Every caller's future resolves only after the commit that
    holds its writes. When a batch fails, each job is retried in a transaction
    of its own, so one bad message cannot take its neighbours down with it.

    Jobs queued with `run_deferring`/`submit_deferring` also get the
    transaction's Deferred buffer as their second argument: rows added to it are
    written, many per statement, after the last job of the transaction and
    before its commit, and are dropped with a failed transaction.
    """

    def __init__(self, engine: Engine, *, batch_max: int = 64, name: str = "db-writer") -> None:
        self.engine = engine
        self.batch_max = batch_max
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self.batches = 0
        self.jobs = 0
        self._lock_path = _sqlite_lock_path(engine)
        self._lock_fd: int | None = None
        self._conn: Connection | None = None     # the writer thread's own connection
        self._holding = False      # the writer thread holds the lock file (_write_lock)
        self._ping = engine.dialect.name != "sqlite"     # a file cannot hang up
        self._commit_failed = False   # the last transaction failed in its COMMIT
        db = engine.url.database
        self._checkpointer = (Checkpointer(db, self._lock_path)
                              if self._lock_path is not None and db else None)

    def _transaction(self) -> contextlib.AbstractContextManager[tuple[Connection, Deferred]]:
        """A write transaction; on SQLite, serialized across processes by a file lock.

        SQLite lets one writer in at a time and makes the others sleep in its busy
        handler (1, 2, 5, 10 ms ...), and a transaction that read before another
        process committed cannot write at all (SQLITE_BUSY_SNAPSHOT). Pre-forked
        LMTP workers and `deskgate deliver` therefore queue on an flock first,
        which wakes the next writer the moment the previous one commits.
        """
        if self._lock_path is None or self._holding:
            return self._begin()
        return self._locked_begin(self._lock_path)

    @contextlib.contextmanager
    def _begin(self) -> Iterator[tuple[Connection, Deferred]]:
        """A transaction and its buffer; the deferred rows are written before the commit.

        The writer keeps one connection for all its transactions: taking one from the
        pool and giving it back (with the pool's rollback) cost more than the
        statements of a small batch. A server database's connection is pinged before
        each transaction, as the pool's pre-ping did, and replaced when the server cut
        it (a restart, an idle timeout): a transaction is never run again after its
        connection failed, because its COMMIT may have reached the server. A
        transaction that fails closes it, so the next one starts on a fresh one.
        """
        conn = self._conn
        if conn is not None and not (conn.closed or conn.invalidated) and self._ping \
                and not self._alive(conn):
            self._drop_connection()
            conn = None
        if conn is None or conn.closed or conn.invalidated:
            conn = self._conn = self.engine.connect()
            if self._checkpointer is not None:
                dbapi = conn.connection.dbapi_connection
                assert dbapi is not None
                # The Checkpointer copies the WAL back off this thread; the writer
                # itself only checkpoints when that falls far behind.
                dbapi.execute(f"PRAGMA wal_autocheckpoint={Checkpointer.FALLBACK_PAGES}")
                # Statement journals in memory: on disk, every few batches opened,
                # wrote and unlinked a file in /var/tmp. The writer runs small
                # statements only (no big sorts that would want the disk).
                dbapi.execute("PRAGMA temp_store=MEMORY")
        tx = conn.begin()
        try:
            later = Deferred()
            yield conn, later
            later.flush(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                tx.rollback()
            self._drop_connection()
            raise
        try:
            tx.commit()
        except BaseException:
            # Whether the database has it is unknown (the connection may have broken
            # after the server committed): the jobs are not run again (_run_items).
            self._commit_failed = True
            self._drop_connection()
            raise
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _alive(self, conn: Connection) -> bool:
        """The pool's pre-ping on the kept connection (a server database only)."""
        try:
            dbapi_conn = conn.connection.dbapi_connection
            return dbapi_conn is not None and bool(conn.dialect.do_ping(dbapi_conn))
        except Exception:
            return False

    def _conflict(self, exc: OperationalError) -> bool:
        """A failure that running the transaction again may avoid. PostgreSQL's by its
        SQLSTATE: its message text quotes the statement's values (a subject "account
        locked"), and a lock timeout run again would only wait as long again."""
        if self.engine.dialect.name == "postgresql":
            return getattr(exc.orig, "sqlstate", None) in PG_RETRY_SQLSTATES
        return "locked" in str(exc).lower()

    def _pause(self, seconds: float) -> None:
        """Sleep before a retry without keeping the other processes from the lock file."""
        fd = self._lock_fd
        if self._holding and fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                time.sleep(seconds)
            finally:
                fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            time.sleep(seconds)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _locked_begin(self, path: str) -> Iterator[tuple[Connection, Deferred]]:
        fd = self._lock_file(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with self._begin() as tx:
                yield tx
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, job: Callable[[Connection], T], *, isolated: bool = False) -> Future[T]:
        """Queue a job from any thread; isolated jobs run in a transaction of their own."""
        return self.submit_deferring(_plain(job), isolated=isolated)

    def submit_deferring(self, job: Callable[[Connection, Deferred], T], *,
                         isolated: bool = False) -> Future[T]:
        """Like submit, for a job of (Connection, the transaction's Deferred buffer)."""
        self.start()
        fut: Future[T] = Future()
        self._q.put(_Item(job, fut, isolated))
        return fut

    async def run(self, job: Callable[[Connection], T], *, isolated: bool = False) -> T:
        """Queue a job from a coroutine and wait for the commit that holds it.

        All waiters of one commit are woken by a single loop callback, which keeps
        the writer thread from handing the GIL back and forth once per message.
        """
        return await self.run_deferring(_plain(job), isolated=isolated)

    async def run_deferring(self, job: Callable[[Connection, Deferred], T], *,
                            isolated: bool = False) -> T:
        """Like run, for a job of (Connection, the transaction's Deferred buffer)."""
        self.start()
        afut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._q.put(_Item(job, None, isolated, afut))
        return await afut

    def run_here(self, jobs: Sequence[tuple[Callable[[Connection, Deferred], Any],
                                            Callable[[bool, Any], None]]],
                 after: Callable[[], None] | None = None) -> None:
        """Run jobs in batches of up to batch_max on the calling thread, with the
        same transactions, lock, retries and deferred rows as the writer thread;
        each callback gets (ok, result or exception) after its job's commit, and
        `after` runs after each batch's callbacks (to send their replies at once).

        For a process in which this calling thread is the writer's only user (the
        commit process, gateway.inbound.commitproc): the writer thread is not
        started, so the two never share the kept connection.
        """
        if self._started:
            raise RuntimeError("run_here on a writer whose thread runs")
        items = [_Item(job, None, False, None, cb) for job, cb in jobs]
        for at in range(0, len(items), self.batch_max):
            with self._write_lock():
                self._run_batch(items[at:at + self.batch_max])
            if after is not None:
                after()

    def close(self, timeout: float = 30.0) -> None:
        if self._started:
            self._q.put(None)
            self._thread.join(timeout)
            self._started = False
        if self._thread.is_alive():
            # Still in a transaction after `timeout`: its connection and lock file stay
            # its own (closing them under it would drop the lock mid-transaction).
            log.warning("database writer still busy at close", timeout=timeout)
            return
        self._drop_connection()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._checkpointer is not None:
            self._checkpointer.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            with self._write_lock():
                stop = self._collect_and_run(first)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold the cross-process write lock (SQLite file) from before the batch is
        collected until it is committed: what arrives while another process writes
        joins this batch, so pre-forked workers share one fsync among more messages
        instead of taking turns with small batches."""
        if self._lock_path is None:
            yield
            return
        fd = self._lock_file(self._lock_path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self, path: str) -> int:
        if self._lock_fd is None:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._lock_fd

    def _collect_and_run(self, first: _Item) -> bool:
        """Take what is queued behind `first` (up to batch_max) and run it; True when
        the stop marker was among it."""
        stop = False
        batch = [first]
        if not first.isolated:
            while len(batch) < self.batch_max:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if nxt.isolated:
                    self._run_batch(batch)
                    batch = [nxt]
                    break
                batch.append(nxt)
        self._run_batch(batch)
        return stop

    def _run_batch(self, batch: list[_Item]) -> None:
        settled: _Settled = {}
        try:
            self._run_items(batch, settled)
        finally:
            for loop, pairs in settled.items():
                # A closed loop raises RuntimeError: nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, pairs)

    def _set(self, it: _Item, ok: bool, value: Any,
             settled: _Settled) -> None:
        if it.afuture is not None:
            settled.setdefault(it.afuture.get_loop(), []).append((it.afuture, ok, value))
        elif it.future is not None:
            if ok:
                it.future.set_result(value)
            else:
                it.future.set_exception(value)
        elif it.callback is not None:
            it.callback(ok, value)

    def _run_items(self, batch: list[_Item],
                   settled: _Settled) -> None:
        live = [it for it in batch if it.start()]
        if not live:
            return
        self.batches += 1
        self.jobs += len(live)
        if len(live) > 1:
            results: list[Any] = []
            self._commit_failed = False
            try:
                with self._transaction() as (conn, later):
                    for it in live:
                        results.append(it.job(conn, later))
            except Exception as exc:
                if self._commit_failed:
                    # A job run again could write its rows twice (an outbound message
                    # queued twice): every waiter gets the error, the MTA retries, and
                    # the inbound dedupe finds what did commit.
                    log.error("commit failed; the batch is not run again", size=len(live),
                              error=repr(exc)[:300])
                    for it in live:
                        self._set(it, False, exc, settled)
                    return
                log.warning("batch failed, retrying one by one", error=repr(exc)[:300],
                            size=len(live))
            else:
                for it, res in zip(live, results, strict=True):
                    self._set(it, True, res, settled)
                return
        started = time.monotonic()
        failed_all: BaseException | None = None
        for it in live:
            if failed_all is not None:
                self._set(it, False, failed_all, settled)
                continue
            ok, value = self._run_one(it)
            self._set(it, ok, value, settled)
            if not ok and self._not_the_message(value, time.monotonic() - started):
                failed_all = value
        if failed_all is not None:
            log.warning("database unavailable; the rest of the batch fails without a try",
                        error=repr(failed_all)[:300])

    # Seconds the messages of a failed batch may spend being run one by one against
    # a lock another session holds before the rest fail at once (4xx): a table lock
    # (an ALTER TABLE, a CREATE INDEX, LOCK TABLE) would otherwise make each wait the
    # lock timeout in turn, while a row lock holds up only the message that needs it.
    ONE_BY_ONE_BUDGET = 20.0

    def _not_the_message(self, exc: BaseException, spent: float) -> bool:
        """Did a message run alone fail because of the database rather than itself, so
        that the rest of its batch would fail the same way? PostgreSQL only: a server
        that cannot be reached even on a new connection, or a lock timeout once the
        one-by-one budget is spent. (SQLite's failures are its file's: unchanged.)"""
        if self.engine.dialect.name != "postgresql" or not isinstance(exc, DBAPIError):
            return False
        state = getattr(exc.orig, "sqlstate", None)
        if exc.connection_invalidated or isinstance(exc, InterfaceError) or (
                isinstance(exc, OperationalError) and state is None):
            return True          # connection refused, timed out, reset
        if state is not None and (state.startswith("08") or state in PG_UNAVAILABLE_SQLSTATES):
            return True
        return state == "55P03" and spent >= self.ONE_BY_ONE_BUDGET     # lock_not_available

    def _run_one(self, it: _Item) -> tuple[bool, Any]:
        delay = 0.05
        for attempt in range(3):
            self._commit_failed = False
            try:
                with self._transaction() as (conn, later):
                    res = it.job(conn, later)
            except OperationalError as exc:
                # "database is locked" under contention, a PostgreSQL deadlock or
                # serialization failure: a short retry usually fixes it (never after the
                # COMMIT itself failed: it may have gone through).
                if attempt < 2 and not self._commit_failed and self._conflict(exc):
                    self._pause(delay)
                    delay *= 4
                    continue
                return False, exc
            except Exception as exc:
                return False, exc
            return True, res
        return False, RuntimeError("unreachable")


def _sqlite_lock_path(engine: Engine) -> str | None:
    """`<database>.lock` for a file SQLite database, None for anything else."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return f"{db}.lock"
