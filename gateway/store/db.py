"""Database engine, migrations and the group-commit writer.

SQLite (WAL, synchronous=FULL: a 250 promises the message survives a power cut)
is the embedded default; PostgreSQL (postgresql+psycopg://) is the multi-node store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from gateway.config import Config
from gateway.privatefiles import create_private
from gateway.store.fast import FAST_PATH_OPTION, Deferred

log = structlog.get_logger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


FAST_PATH_ENV = "DESKGATE_STORE_FAST_PATH"
_ENV_ON = {"1": True, "true": True, "yes": True, "on": True,
           "0": False, "false": False, "no": False, "off": False}


def fast_path_setting(configured: bool = True) -> bool:
    """Whether prepared statements take the fast path: DESKGATE_STORE_FAST_PATH when it
    is set (an emergency switch that needs no configuration change), else `configured`
    ([store] fast_path)."""
    value = os.environ.get(FAST_PATH_ENV, "").strip().lower()
    if not value:
        return configured
    if value not in _ENV_ON:
        raise ValueError(f"{FAST_PATH_ENV}={value!r}: use 1/true/on or 0/false/off")
    return _ENV_ON[value]


def make_engine(url: str, *, pool_size: int = 5, fast_path: bool = True) -> Engine:
    """Create the engine; SQLite gets WAL, FULL sync and a busy timeout.

    `fast_path=False` (or DESKGATE_STORE_FAST_PATH=0) makes every prepared statement
    (gateway.store.Prepared) run through plain `Connection.execute`.
    """
    options = {FAST_PATH_OPTION: fast_path_setting(fast_path)}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Owner-only whatever the umask; SQLite gives -wal and -shm the same mode.
            create_private(Path(path.split("?", 1)[0]))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               execution_options=options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                           connect_args={"connect_timeout": 5} if "postgresql" in url else {},
                           execution_options=options)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _pg_session_defaults)
    return engine


# Session settings of deskgate's PostgreSQL connections, each unless the site sets it:
# in the URL (?options=-c%20lock_timeout%3D5s), PGOPTIONS, ALTER ROLE/DATABASE ... SET
# or postgresql.conf. A lock held by a stuck session (an admin's open psql transaction,
# a hung node) then makes a delivery fail with a 451 after lock_timeout instead of
# waiting until the MTA gives up, and a hung node's open transaction, with its locks,
# ends after idle_in_transaction_session_timeout.
PG_SESSION_DEFAULTS = {
    "lock_timeout": "10s",
    "statement_timeout": "60s",
    "idle_in_transaction_session_timeout": "60s",
}

# serialization_failure and deadlock_detected: PostgreSQL's documentation asks that the
# transaction be run again.
PG_RETRY_SQLSTATES = frozenset({"40001", "40P01"})
# admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections: the
# server, not the message (class 08, connection exceptions, too).
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300"})

# One round trip: only the settings nobody set (source "default") are changed.
_PG_SET_DEFAULTS = (
    "SELECT set_config(s.name, d.setting, false)"
    " FROM unnest(%s::text[], %s::text[]) AS d(name, setting)"
    " JOIN pg_settings AS s ON s.name = d.name WHERE s.source = 'default'")


def _pg_session_defaults(dbapi_conn: Any, _record: Any) -> None:
    """On each new PostgreSQL connection: deskgate's PG_SESSION_DEFAULTS."""
    names = list(PG_SESSION_DEFAULTS)
    autocommit = dbapi_conn.autocommit
    # Outside a transaction: a SET inside one would be undone by its rollback.
    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute(_PG_SET_DEFAULTS, (names, [PG_SESSION_DEFAULTS[n] for n in names]))
    finally:
        dbapi_conn.autocommit = autocommit


SUPPORTED_DATABASES = "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"


def database_problem(url: str) -> str | None:
    """Why `url` cannot be used as the database, from the URL alone: an unsupported
    scheme or driver. None when it looks usable."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"not a database URL; use {SUPPORTED_DATABASES}"
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql":
        if driver != "psycopg":
            return (f"driver {driver!r} is not supported for PostgreSQL; "
                    "use postgresql+psycopg://")
        return None
    if backend != "sqlite" or driver != "pysqlite":
        return f"{parsed.drivername!r} is not supported; use {SUPPORTED_DATABASES}"
    return None


def sqlite_location_problem(url: str) -> str | None:
    """For `check` only: can the SQLite file (and its -wal/-shm next to it) be created
    or written? Not a config validator, because a file that is unwritable for a moment
    must make `deliver` answer 75 (try again), not fail as a configuration error."""
    import tempfile

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    db = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" \
            or db.startswith("file:"):
        return None
    path = Path(db)
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {path.parent}: {existing} is not a directory"
    try:        # a real probe (-wal/-shm go there): modes do not stop root, read-only mounts do
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot create files in {existing}: {exc.strerror}"
    return None


def validate_database(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    problem = database_problem(cfg.database_url)
    if problem is not None:
        add(str(cfg.conf_dir), "gateway.database", problem)
    try:
        fast_path_setting()
    except ValueError as exc:     # the environment, not a file: named by its variable
        add(str(cfg.conf_dir), "store.fast_path", str(exc))


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# pg_advisory_xact_lock key of migrate(): "deskgate" in ASCII.
MIGRATION_LOCK = 0x6465736B67617465


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent).

    On PostgreSQL the nodes that start at the same time take turns on an advisory
    lock held until the migration's commit: the first migrates, the others wait and
    then find the schema at the newest revision.
    """
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # No statement_timeout for a migration (it may build an index over a big
            # table), and no lock_timeout while waiting for another node's; its own
            # statements keep the session's lock_timeout: an ALTER TABLE queued behind a
            # stuck session's lock would hold up every node's statements behind it.
            lock_timeout = conn.execute(text("SHOW lock_timeout")).scalar_one()
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("SET LOCAL lock_timeout = 0"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            conn.execute(text("SELECT set_config('lock_timeout', :v, true)"),
                         {"v": lock_timeout})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


_REVISION_RE = re.compile(r"^(down_revision|revision)\s*=\s*['\"]([^'\"]+)['\"]", re.M)


def head_revision() -> str | None:
    """The newest migration, read from the revision files without importing Alembic
    (which takes longer to import than a `deskgate deliver` may take in all);
    None when the files do not name exactly one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for kind, rev in _REVISION_RE.findall(path.read_text(encoding="utf-8")):
            (revisions if kind == "revision" else parents).add(rev)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def ensure_schema(engine: Engine) -> bool:
    """Migrate only when the schema is not at the newest revision; True when it ran.

    The check is one read of alembic_version, so commands that run once per
    message pay no Alembic start-up. A database that cannot be read here goes to
    migrate(), which raises the real error (down, locked, unwritable).
    """
    head = head_revision()
    if head is not None:
        try:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except DBAPIError:
            rows = []
        if [r[0] for r in rows] == [head]:
            return False
    migrate(engine)
    return True


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_temporary(exc: BaseException) -> bool:
    """Database errors that a retry can fix (down, locked, full, read-only).

    Errors about the data itself (DataError: a value too long or a NUL byte for
    PostgreSQL; IntegrityError; ProgrammingError) fail the same way on every
    retry: they are not temporary, so the message goes to the quarantine
    instead of being answered 4xx until the MTA gives up and bounces it.
    """
    if isinstance(exc, OperationalError | InterfaceError | OSError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


# ----------------------------------------------------------------- group commit

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
        if state is not None and (state.startswith("08") or state in _PG_UNAVAILABLE):
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


class Checkpointer:
    """Copies a SQLite database's WAL back into the database file on a thread of its
    own, so that the writer's COMMIT is only the WAL append and its fsync.

    Left to SQLite, the connection whose COMMIT takes the WAL past 1000 pages runs
    the checkpoint inside that COMMIT: it reads every page back from the WAL,
    writes it into the database file and syncs both, while the messages of the
    batch wait for their 250 (about a fifth of the commit process's time per
    message). Here, every CHECKPOINT_EVERY commits, a PASSIVE checkpoint copies
    what is in the WAL without blocking anybody (SQLite runs it outside Python's
    interpreter lock, so on the other core), repeated (up to CATCH_UP_PASSES times)
    while the WAL grew by CATCH_UP_PAGES or more during the previous pass; a last
    PASSIVE pass holding the writers' lock file copies the few pages committed
    meanwhile, so the WAL is complete and the next transaction starts it again
    from the beginning instead of growing it. The writer's own checkpoint stays as a fallback, at
    FALLBACK_PAGES. Durability is unchanged: SQLite syncs the WAL before
    copying from it and the database file after.
    """

    CHECKPOINT_EVERY = 25
    FALLBACK_PAGES = 10000
    CATCH_UP_PASSES, CATCH_UP_PAGES = 3, 64
    RETRY_AFTER = 60.0          # seconds between starts of a thread that keeps dying

    def __init__(self, database: str, lock_path: str) -> None:
        self.database, self.lock_path = database, lock_path
        self.runs = 0
        self._commits = 0
        self._due = threading.Event()
        self._stop = threading.Event()      # the running thread's; a new one gets its own
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    def committed(self) -> None:
        """After each commit of the writer (its thread): wake the checkpoint when due."""
        self._commits += 1
        if self._commits < self.CHECKPOINT_EVERY:
            return
        self._commits = 0
        thread = self._thread
        if thread is None or not thread.is_alive():
            # First due (a `deskgate deliver` never gets here), a forked process whose
            # parent's thread does not run here, or a thread that died: a new one,
            # but not more than once per RETRY_AFTER for one that keeps dying (its
            # lock file cannot be opened, ...: each death logs its traceback).
            if thread is not None and not self._stop.is_set():
                if time.monotonic() - self._started_at < self.RETRY_AFTER:
                    return
                log.warning("WAL checkpoint thread had stopped; starting it again")
            self._started_at = time.monotonic()
            self._due, self._stop = threading.Event(), threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._due, self._stop),
                                            name="db-checkpoint", daemon=True)
            self._thread.start()
        self._due.set()

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._due.set()
        self._thread = None
        if thread.is_alive():
            thread.join(30)
        if thread.is_alive():
            # in a checkpoint that waits on the disk: it stops after it (its own
            # stop event); a commit after this starts a new thread
            log.warning("WAL checkpoint thread still busy at close")

    def _run(self, due: threading.Event, stop: threading.Event) -> None:
        import sqlite3

        try:
            conn = sqlite3.connect(self.database, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint thread not started", error=str(exc)[:300])
            return
        fd = -1
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                due.wait()
                due.clear()
                if stop.is_set():
                    return
                try:
                    log_pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
                    # What the writer committed meanwhile is copied without the lock too
                    # while it is more than a few pages, so that the pass under the lock
                    # (the writer waits for it) copies only the last commits' pages:
                    # ~2 instead of ~3.5 ms of waiting per checkpoint.
                    for _ in range(self.CATCH_UP_PASSES):
                        before = log_pages
                        log_pages = conn.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
                        if log_pages - before < self.CATCH_UP_PAGES:
                            break
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self.runs += 1
                except (sqlite3.Error, OSError) as exc:
                    # The writer's fallback checkpoint still bounds the WAL.
                    log.warning("WAL checkpoint failed", error=str(exc)[:300])
        except Exception:
            # the next due checkpoint starts a new thread (committed)
            log.exception("WAL checkpoint thread stopped")
        finally:
            if fd >= 0:
                os.close(fd)
            conn.close()


def _sqlite_lock_path(engine: Engine) -> str | None:
    """`<database>.lock` for a file SQLite database, None for anything else."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return f"{db}.lock"


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
