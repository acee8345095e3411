"""Prebuilt write statements run straight on the DBAPI cursor.

The inbound hot path writes about ten rows per message. Through
`Connection.execute` each costs ~90 µs of SQLAlchemy bookkeeping (execution
context, result metadata, cache lookup) on top of ~10 µs of database work, and
that bookkeeping — not SQLite's commit — was most of what a message cost.

A `Prepared` statement is compiled once per dialect by SQLAlchemy itself (same
SQL, same bind processors for datetimes and JSON, same casts for PostgreSQL);
afterwards each call only converts its parameters and runs the driver's cursor
inside the caller's transaction. Driver errors come back as the usual
SQLAlchemy exceptions (OperationalError, IntegrityError, ...), so the callers'
"temporary or not" decisions stay the same.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement, Insert
from sqlalchemy.sql.compiler import SQLCompiler

_MISSING = object()


# One bound value: name, bind processor, default (_MISSING: the caller must give
# it), whether the default is a factory (dict, list) to call, whether None goes
# through the processor too (JSON: None is stored as the JSON value null).
_Field = tuple[str, Callable[[Any], Any] | None, Any, bool, bool]


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    positional: bool
    fields: tuple[_Field, ...]
    lastrowid: bool = False            # SQLite: the new id from the cursor, no RETURNING
    values_at: int = -1                # SQLite plain INSERT: where "(?, ...)" starts, for
                                       # several rows in one statement; -1 = not possible


class Prepared:
    """A statement compiled once per dialect; `execute` returns the first RETURNING value.

    For a bare `insert(Table)` every column except an autoincrement primary key
    is written; a missing value takes the column's Python default (scalar or
    factory), else it is an error — nothing is silently NULL.
    """

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._plans: dict[str, _Plan] = {}

    def _table(self) -> Table | None:
        if isinstance(self.stmt, Insert) and isinstance(self.stmt.table, Table):
            return self.stmt.table
        return None

    def _bare_insert(self) -> bool:
        """INSERT INTO t (columns) VALUES (...), nothing else: the only shape the SQLite
        shortcuts (lastrowid, several rows per statement) may rewrite."""
        stmt: Any = self.stmt
        return (not stmt._values and not stmt._multi_values and stmt.select is None
                and stmt._post_values_clause is None and not stmt._prefixes
                and not stmt._independent_ctes and not stmt._hints)

    def _returns_only_id(self, table: Table) -> bool:
        returning = [getattr(c, "key", None) for c in self.stmt._returning]  # type: ignore[attr-defined]
        auto = table.autoincrement_column
        return auto is not None and returning == [auto.key]

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is not None:
            return plan
        table = self._table()
        keys = None
        if table is not None and not self.stmt._values:  # type: ignore[attr-defined]
            keys = [c.key for c in table.c if c is not table.autoincrement_column]
        stmt, lastrowid, plain = self.stmt, False, False
        if dialect.name == "sqlite" and table is not None and self._bare_insert():
            if self._returns_only_id(table):
                # RETURNING costs SQLite an extra step (and the GIL changes hands once
                # more per statement); the rowid of the insert is the same number.
                stmt, lastrowid, plain = insert(table), True, True
            else:
                plain = not self.stmt._returning    # type: ignore[attr-defined]
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        assert isinstance(compiled, SQLCompiler)
        by_name = {name: bp for bp, name in compiled.bind_names.items()}
        names = tuple(compiled.positiontup or by_name)
        fields: list[_Field] = []
        for name in names:
            bp = by_name[name]
            default: Any = _MISSING
            factory = False
            col = table.c.get(name) if table is not None else None
            if not bp.required:
                default = bp.effective_value
            elif col is not None and col.default is not None:
                if getattr(col.default, "is_callable", False):
                    default, factory = col.default.arg, True    # type: ignore[attr-defined]
                elif getattr(col.default, "is_scalar", False):
                    default = col.default.arg      # type: ignore[attr-defined]
            elif col is not None and col.nullable:
                default = None
            fields.append((name, _processor(bp.type, dialect), default, factory,
                           bool(getattr(bp.type, "should_evaluate_none", False))))
        sql = compiled.string
        values_at = sql.rfind(" VALUES (") + len(" VALUES ") if plain else -1
        if values_at >= 0 and not sql.endswith(")"):
            values_at = -1
        plan = _Plan(sql, names, dialect.positional, tuple(fields), lastrowid, values_at)
        self._plans[dialect.name] = plan
        return plan

    def _params(self, plan: _Plan, values: Mapping[str, Any]) -> Any:
        out = []
        get = values.get
        for name, proc, default, factory, with_none in plan.fields:
            v = get(name, _MISSING)
            if v is _MISSING:
                if default is _MISSING:
                    raise KeyError(f"{name!r} missing for {plan.sql[:60]!r}")
                v = default(None) if factory else default
            if proc is not None and (v is not None or with_none):
                v = proc(v)
            out.append(v)
        return tuple(out) if plan.positional else dict(zip(plan.names, out, strict=True))

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """Run once; the first column of the first returned row (None without RETURNING)."""
        plan = self._plan(conn.dialect)
        params = self._params(plan, values)
        cur = _cursor(conn)
        try:
            cur.execute(plan.sql, params)
            if plan.lastrowid:
                return cur.lastrowid
            row = cur.fetchone() if cur.description else None
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrap(conn, plan.sql, params, exc) from exc
        finally:
            cur.close()
        return row[0] if row else None

    def insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Insert many rows, several per statement where the database allows it;
        returns the new ids in row order (RETURNING id or SQLite's rowids).

        SQLite gives the rows of one multi-row INSERT consecutive rowids (each is
        one above the largest), and the writer holds the only write lock, so the
        ids are lastrowid-n+1 … lastrowid. Chunk sizes are powers of two, so a few
        statement texts cover every batch size (SQLite caches them prepared).
        """
        if not rows:
            return []
        plan = self._plan(conn.dialect)
        if plan.values_at < 0:
            return [self.execute(conn, r) for r in rows]
        ids: list[Any] = []
        width = len(plan.names)
        limit = 1
        while limit * 2 * width <= 30000 and limit < 256:
            limit *= 2
        head, group = plan.sql[:plan.values_at], plan.sql[plan.values_at:]
        i = 0
        cur = _cursor(conn)
        try:
            while i < len(rows):
                n = limit
                while n > len(rows) - i:
                    n //= 2
                params: list[Any] = []
                for r in rows[i:i + n]:
                    params.extend(self._params(plan, r))
                sql = head + ", ".join([group] * n)
                try:
                    cur.execute(sql, params)
                except conn.dialect.loaded_dbapi.Error as exc:
                    raise _wrap(conn, sql, params, exc) from exc
                last = cur.lastrowid
                ids.extend(range(last - n + 1, last + 1) if last else [None] * n)
                i += n
        finally:
            cur.close()
        return ids

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        plan = self._plan(conn.dialect)
        params = [self._params(plan, r) for r in rows]
        cur = _cursor(conn)
        try:
            cur.executemany(plan.sql, params)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrap(conn, plan.sql, params, exc) from exc
        finally:
            cur.close()


_SQLITE_DATETIME = ("%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:"
                    "%(second)02d.%(microsecond)06d")


def _processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """SQLAlchemy's bind processor, except SQLite's datetime formatter: the same text
    from `isoformat` in C instead of a %-format of seven attributes per value."""
    impl = type_.dialect_impl(dialect)
    proc: Callable[[Any], Any] | None = impl.bind_processor(dialect)
    if (dialect.name == "sqlite" and proc is not None
            and getattr(impl, "_storage_format", None) == _SQLITE_DATETIME):
        slow = proc

        def fast(value: Any) -> Any:
            if type(value) is datetime:
                return value.isoformat(" ", "microseconds")[:26]
            return slow(value)
        return fast
    return proc


def _cursor(conn: Connection) -> Any:
    try:
        return conn.connection.cursor()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrap(conn, "", None, exc) from exc


def _wrap(conn: Connection, sql: str, params: Any, exc: Any) -> StatementError:
    """The SQLAlchemy exception Connection.execute would have raised."""
    dbapi_conn = conn.connection.dbapi_connection
    disconnect = bool(conn.dialect.is_disconnect(exc, dbapi_conn, None))
    if disconnect:
        with contextlib.suppress(Exception):
            conn.invalidate(exc)
    wrapped: StatementError = DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error,
                               hide_parameters=True, connection_invalidated=disconnect,
                               dialect=conn.dialect)
    return wrapped


# ----------------------------------------------------------------- deferred rows

# The open buffer of this thread's writer transaction, with its Connection.
_OPEN = threading.local()


class Deferred:
    """Rows nobody reads back in the same transaction, written at its end, many per
    statement: fewer statements, and on SQLite fewer hand-overs of the GIL between
    the writer thread and the event loop (each statement step releases it)."""

    def __init__(self) -> None:
        self.rows: dict[Prepared, list[Mapping[str, Any]]] = {}
        self.hooks: dict[str, tuple[Callable[[Connection, list[Any]], None], list[Any]]] = {}

    def add(self, stmt: Prepared, row: Mapping[str, Any]) -> None:
        self.rows.setdefault(stmt, []).append(row)

    def add_item(self, name: str, flush: Callable[[Connection, list[Any]], None],
                 item: Any) -> None:
        """Collect `item` under `name`; `flush(conn, items)` writes them all at the end."""
        self.hooks.setdefault(name, (flush, []))[1].append(item)

    def flush(self, conn: Connection) -> None:
        for flush, items in self.hooks.values():
            flush(conn, items)
        for stmt, rows in self.rows.items():
            stmt.insert_rows(conn, rows)
        self.rows.clear()
        self.hooks.clear()


@contextlib.contextmanager
def deferred_writes(conn: Connection) -> Iterator[Deferred]:
    """Inside: `deferred(conn)` collects rows; they are written when the block ends
    without an error (before the caller commits), and dropped with it otherwise."""
    d = Deferred()
    outer = getattr(_OPEN, "pair", None)
    _OPEN.pair = (conn, d)
    try:
        yield d
        d.flush(conn)
    finally:
        _OPEN.pair = outer


def deferred(conn: Connection) -> Deferred | None:
    """The buffer of the transaction `conn` is in, when it has one."""
    pair = getattr(_OPEN, "pair", None)
    return pair[1] if pair is not None and pair[0] is conn else None
