"""Database engine, migrations and what counts as a temporary database failure.

The group-commit writer is gateway.store.writer, the SQLite WAL checkpoint thread
gateway.store.checkpoint.

SQLite (WAL, synchronous=FULL: a 250 promises the message survives a power cut)
is the embedded default; PostgreSQL (postgresql+psycopg://) is the multi-node store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from gateway.config import Config
from gateway.privatefiles import create_private
from gateway.store.fast import FAST_PATH_OPTION

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
    """Create the engine; SQLite gets WAL, FULL sync and a busy timeout. Its errors
    name the statement without its parameters (hide_parameters): they are logged and
    kept as last_error and communication-log text, and parameters hold raw messages,
    addresses and, for the poller, rotated OAuth2 tokens.

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
                               execution_options=options, hide_parameters=True)

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
                           connect_args=_pg_connect_defaults(url) if "postgresql" in url else {},
                           execution_options=options, hide_parameters=True)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _pg_session_defaults)
    return engine


# libpq parameters of deskgate's PostgreSQL connections, each unless the URL sets it
# (?keepalives_idle=60) or, for connect_timeout, PGCONNECT_TIMEOUT does. libpq leaves
# keepalives to the kernel (first probe after 2 hours) and has no TCP user timeout, so
# a database host that vanishes without a RST (power off, partition) left a query
# waiting on recv for hours; statement_timeout is the server's and does not help. With
# these a dead peer is noticed within about 30 s: 10 s idle, then 4 probes 5 s apart,
# and data sent but not acknowledged for 30 s ends the connection.
PG_TCP_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "4",
    "tcp_user_timeout": "30000",
}
# The libpq parameters that have an environment variable of their own.
_PG_ENV = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def _pg_connect_defaults(url: str) -> dict[str, str]:
    """PG_TCP_DEFAULTS less what the URL (or libpq's environment) sets: SQLAlchemy
    passes connect_args over the URL's query."""
    from sqlalchemy.engine import make_url

    given = make_url(url).query
    return {k: v for k, v in PG_TCP_DEFAULTS.items()
            if k not in given and not os.environ.get(_PG_ENV.get(k, ""), "")}


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
PG_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})

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


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
