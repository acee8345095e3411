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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement, Insert
from sqlalchemy.sql.compiler import SQLCompiler

_MISSING = object()


# One bound value: name, bind processor, default (_MISSING: the caller must give
# it), whether the default is a factory (dict, list) to call.
_Field = tuple[str, Callable[[Any], Any] | None, Any, bool]


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    positional: bool
    fields: tuple[_Field, ...]


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

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is not None:
            return plan
        table = self._table()
        keys = None
        if table is not None and not self.stmt._values:  # type: ignore[attr-defined]
            keys = [c.key for c in table.c if c is not table.autoincrement_column]
        compiled = self.stmt.compile(dialect=dialect, column_keys=keys)
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
            fields.append((name, _processor(bp.type, dialect), default, factory))
        plan = _Plan(compiled.string, names, dialect.positional, tuple(fields))
        self._plans[dialect.name] = plan
        return plan

    def _params(self, plan: _Plan, values: Mapping[str, Any]) -> Any:
        out = []
        get = values.get
        for name, proc, default, factory in plan.fields:
            v = get(name, _MISSING)
            if v is _MISSING:
                if default is _MISSING:
                    raise KeyError(f"{name!r} missing for {plan.sql[:60]!r}")
                v = default(None) if factory else default
            if proc is not None and v is not None:
                v = proc(v)
            out.append(v)
        return tuple(out) if plan.positional else dict(zip(plan.names, out, strict=True))

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """Run once; the first column of the first returned row (None without RETURNING)."""
        plan = self._plan(conn.dialect)
        params = self._params(plan, values)
        cur = conn.connection.cursor()
        try:
            cur.execute(plan.sql, params)
            row = cur.fetchone() if cur.description else None
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrap(conn, plan.sql, params, exc) from exc
        finally:
            cur.close()
        return row[0] if row else None

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        plan = self._plan(conn.dialect)
        params = [self._params(plan, r) for r in rows]
        cur = conn.connection.cursor()
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
