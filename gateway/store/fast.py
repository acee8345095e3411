"""Prebuilt write statements run straight on the DBAPI cursor.

The inbound hot path writes about ten rows per message. Through
`Connection.execute` each costs ~90 µs of SQLAlchemy bookkeeping (execution
context, result metadata, cache lookup) on top of ~10 µs of database work, and
that bookkeeping — not SQLite's commit — was most of what a message cost.

A `Prepared` statement is compiled once per dialect by SQLAlchemy itself (same
SQL, same bind processors for datetimes and JSON, same casts for PostgreSQL);
afterwards each call only converts its parameters and runs the driver's cursor
inside the caller's transaction. The conversion is one function per statement and
dialect, generated from the plan (`_converter`): no loop over the fields per row,
SQLite datetimes, JSON dicts and lists and True/False formatted without the
processors' layers, to the exact value they give (tests/unit/core/
test_fast_converter.py compares them). Driver
errors come back as the usual SQLAlchemy exceptions (OperationalError,
IntegrityError, ...), so the callers' "temporary or not" decisions stay the same.

Planning a statement reads private attributes of SQLAlchemy's Insert and of its
SQLite DateTime type, and the SQLite shortcuts compute row ids from lastrowid:
pyproject.toml pins SQLAlchemy's minor version for that. An engine made with
`fast_path=False` (config `[store] fast_path`, environment DESKGATE_STORE_FAST_PATH)
runs every Prepared through plain `Connection.execute` instead, touching none of
it; tests/integration/core/test_fast_equivalence.py runs every named statement
both ways on SQLite and PostgreSQL and compares what they write and return. One
difference is left, for a programming error only: a row without a required value
is a KeyError on the fast path, the database's IntegrityError on the plain one.

Only gateway.store imports this module; others use `gateway.store.Prepared` and
`gateway.store.Deferred`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import json.encoder
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement, Insert, sqltypes
from sqlalchemy.sql.compiler import SQLCompiler

_MISSING = object()

# What json.dumps passes its encoder for objects it cannot serialize (a TypeError).
_JSON_DEFAULT = json.JSONEncoder().default
# The C encoder json.dumps builds for each call (None without the C accelerator) and
# its string escaper (ensure_ascii).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_ascii: Any = json.encoder.encode_basestring_ascii

# The execution option that turns the fast path off for an engine or connection
# (set by make_engine); any other value, or none, leaves it on.
FAST_PATH_OPTION = "deskgate_fast_path"

# Every named statement, by name: the equivalence test runs each of them.
_REGISTRY: dict[str, Prepared] = {}


def prepared_statements() -> dict[str, Prepared]:
    """The named statements created so far (import their modules first)."""
    return dict(_REGISTRY)


def fast_path_on(conn: Connection) -> bool:
    """False when the engine or connection was configured to skip the fast path."""
    return conn.get_execution_options().get(FAST_PATH_OPTION, True) is not False


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
    # One row's values -> the driver's parameters (tuple or dict), made by _converter.
    convert: Callable[[Mapping[str, Any]], Any]
    lastrowid: bool = False            # SQLite: the new id from the cursor, no RETURNING
    values_at: int = -1                # SQLite plain INSERT: where "(?, ...)" starts, for
                                       # several rows in one statement; -1 = not possible
    # Multi-row statement text by number of rows (powers of two up to row_limit).
    multi_sql: Mapping[int, str] = field(default_factory=dict)
    row_limit: int = 1


class Prepared:
    """A statement compiled once per dialect; `execute` returns the first RETURNING value.

    For a bare `insert(Table)` every column except an autoincrement primary key
    is written; a missing value takes the column's Python default (scalar or
    factory), else it is an error — nothing is silently NULL.

    `name` registers the statement for the equivalence test (product statements
    must have one; the names are unique). `dialect` names the one dialect a
    dialect-specific statement (an upsert) is meant for.
    """

    def __init__(self, stmt: ClauseElement, name: str | None = None, *,
                 dialect: str | None = None) -> None:
        self.stmt = stmt
        self.name = name
        self.dialect = dialect
        self._plans: dict[str, _Plan] = {}
        if name is not None:
            if name in _REGISTRY:
                raise ValueError(f"a prepared statement named {name!r} exists already")
            _REGISTRY[name] = self

    def __repr__(self) -> str:
        return f"Prepared({self.name or self.stmt})"

    # ------------------------------------------------------- plain SQLAlchemy path

    def _plain_execute(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        result = conn.execute(self.stmt, dict(values))  # type: ignore[call-overload]
        if not result.returns_rows:
            return None
        row = result.first()
        return row[0] if row is not None else None

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
        # for_executemany: no implicit "RETURNING id" (PostgreSQL adds one to a single-row
        # INSERT for the ORM); only what the statement asks for comes back, as with execute.
        compiled = stmt.compile(dialect=dialect, column_keys=keys, for_executemany=True)
        assert isinstance(compiled, SQLCompiler)
        by_name = {name: bp for bp, name in compiled.bind_names.items()}
        names = tuple(compiled.positiontup or by_name)
        fields: list[_Field] = []
        kinds: list[tuple[str, Any]] = []
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
            proc, kind, extra = _processor(bp.type, dialect)
            fields.append((name, proc, default, factory,
                           bool(getattr(bp.type, "should_evaluate_none", False))))
            kinds.append((kind, extra))
        sql = compiled.string
        values_at = sql.rfind(" VALUES (") + len(" VALUES ") if plain else -1
        if values_at >= 0 and not sql.endswith(")"):
            values_at = -1
        limit, multi_sql = 1, {}
        if values_at >= 0:
            while limit * 2 * len(names) <= 30000 and limit < 256:
                limit *= 2
            head, group = sql[:values_at], sql[values_at:]
            n = limit
            while n >= 1:
                multi_sql[n] = head + ", ".join([group] * n)
                n //= 2
        convert = _converter(tuple(fields), kinds, dialect, sql)
        plan = _Plan(sql, names, dialect.positional, tuple(fields), convert, lastrowid,
                     values_at, multi_sql, limit)
        self._plans[dialect.name] = plan
        return plan

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """Run once; the first column of the first returned row (None without RETURNING)."""
        if not fast_path_on(conn):
            return self._plain_execute(conn, values)
        plan = self._plans.get(conn.dialect.name) or self._plan(conn.dialect)
        params = plan.convert(values)
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
        returns what `execute` returns for each row, in row order: the new ids for
        an INSERT ... RETURNING id, else None.

        SQLite gives the rows of one multi-row INSERT consecutive rowids (each is
        one above the largest), and the writer holds the only write lock, so the
        ids are lastrowid-n+1 … lastrowid. Chunk sizes are powers of two, so a few
        statement texts cover every batch size (SQLite caches them prepared).
        """
        if not rows:
            return []
        if not fast_path_on(conn):
            return [self._plain_execute(conn, r) for r in rows]
        plan = self._plan(conn.dialect)
        if plan.values_at < 0:
            return [self.execute(conn, r) for r in rows]
        ids: list[Any] = []
        limit, multi_sql, convert = plan.row_limit, plan.multi_sql, plan.convert
        i = 0
        cur = _cursor(conn)
        try:
            while i < len(rows):
                n = limit
                while n > len(rows) - i:
                    n //= 2
                params = list(itertools.chain.from_iterable(map(convert, rows[i:i + n])))
                sql = multi_sql[n]
                try:
                    cur.execute(sql, params)
                except conn.dialect.loaded_dbapi.Error as exc:
                    raise _wrap(conn, sql, params, exc) from exc
                last = cur.lastrowid
                ids.extend(range(last - n + 1, last + 1) if last and plan.lastrowid
                           else [None] * n)
                i += n
        finally:
            cur.close()
        return ids

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if not fast_path_on(conn):
            # SQLAlchemy takes the columns of a many-row execute from its first row:
            # one call per run of rows that give the same keys, in row order.
            for _, run in itertools.groupby(rows, key=lambda r: tuple(sorted(r))):
                conn.execute(self.stmt, [dict(r) for r in run])  # type: ignore[call-overload]
            return
        plan = self._plan(conn.dialect)
        params = list(map(plan.convert, rows))
        cur = _cursor(conn)
        try:
            cur.executemany(plan.sql, params)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrap(conn, plan.sql, params, exc) from exc
        finally:
            cur.close()


_SQLITE_DATETIME = ("%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:"
                    "%(second)02d.%(microsecond)06d")

# What a converter may do instead of calling a field's bind processor.
_PLAIN, _SQLITE_DT, _JSON, _BOOL = "plain", "sqlite-datetime", "json", "bool"


def _processor(type_: Any, dialect: Dialect) -> tuple[Callable[[Any], Any] | None, str, Any]:
    """SQLAlchemy's bind processor for `type_`, how `_converter` may shortcut it, and
    what the shortcut needs (the JSON serializer; the Boolean's values for True, False).

    SQLite's datetime formatter %-formats seven attributes into `_storage_format`;
    for an exact `datetime` the same text is the `isoformat` of its date and of its
    time (which drops any UTC offset, as the formatter ignores tzinfo too): see
    `_sqlite_datetime`. SQLAlchemy's JSON processor calls the dialect's serializer
    (json.dumps without arguments unless the engine sets one) on anything but None
    and its NULL markers; for an exact dict or list the converter calls the
    serializer itself, or `_json_dumps` (json.dumps's text, cheaper) when the
    serializer is json.dumps. SQLAlchemy's Boolean processor checks the value and
    makes True and False the dialect's 1/0 or True/False: the converter puts in
    what the processor gave for them once. Everything else goes through `proc`.
    """
    impl = type_.dialect_impl(dialect)
    proc: Callable[[Any], Any] | None = impl.bind_processor(dialect)
    if proc is None:
        return None, _PLAIN, None
    if dialect.name == "sqlite" and getattr(impl, "_storage_format", None) == _SQLITE_DATETIME:
        return proc, _SQLITE_DT, None
    cls = type(impl)
    if (isinstance(impl, sqltypes.Boolean)
            and cls.bind_processor is sqltypes.Boolean.bind_processor
            and cls._strict_as_bool is sqltypes.Boolean._strict_as_bool):
        return proc, _BOOL, (proc(True), proc(False))
    if (isinstance(impl, sqltypes.JSON)
            and cls.bind_processor is sqltypes.JSON.bind_processor
            and cls._make_bind_processor is sqltypes.JSON._make_bind_processor
            and impl._str_impl.bind_processor(dialect) is None):
        dumps = dialect._json_serializer or json.dumps
        return proc, _JSON, _json_dumps if dumps is json.dumps else dumps
    return proc, _PLAIN, None


# The last datetime formatted for SQLite and its text: the same object is often bound
# several times in a row (a message's raw, ticket and article rows share one `now`).
# Replaced as one tuple, so a thread reading it never sees one's object with
# another's text; holding the object keeps its id from being reused.
_last_sqlite_datetime: tuple[datetime | None, str] = (None, "")
# The date of the last one and its text with the separator: the date rarely changes.
_last_sqlite_day: tuple[date | None, str] = (None, "")


def _sqlite_datetime(value: datetime) -> str:
    """SQLite's stored text of an exact `datetime`: what SQLAlchemy's formatter gives
    ("%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.
    %(microsecond)06d", any offset ignored) at a third of the cost of the aware
    isoformat: the date's and the (naive) time's isoformat."""
    global _last_sqlite_datetime, _last_sqlite_day
    last = _last_sqlite_datetime
    if last[0] is value:
        return last[1]
    day = value.date()
    known = _last_sqlite_day
    if known[0] != day:
        known = _last_sqlite_day = (day, day.isoformat() + " ")
    text = known[1] + value.time().isoformat("microseconds")
    _last_sqlite_datetime = (value, text)
    return text


_EMPTY_JSON = {dict: "{}", list: "[]"}


def _json_dumps(value: dict[Any, Any] | list[Any]) -> str:
    """json.dumps(value) for an exact dict or list, without its wrapper layers: an empty
    one is a constant; otherwise the C encoder json.dumps would use, built with the
    same arguments (a new circular-reference memo for every call, as json.dumps)."""
    if not value:
        return _EMPTY_JSON[type(value)]
    if _c_make_encoder is None:     # no C accelerator: json.dumps itself
        return json.dumps(value)
    return "".join(_c_make_encoder({}, _JSON_DEFAULT, _encode_ascii, None, ": ", ", ",
                                   False, False, True)(value, 0))


def _converter(fields: Sequence[_Field], kinds: Sequence[tuple[str, Any]],
               dialect: Dialect, sql: str) -> Callable[[Mapping[str, Any]], Any]:
    """One function per plan that turns a row's values into the driver's parameters:
    each field's value, else its default (a factory is called), through its bind
    processor unless it is None (JSON: None too). No loop over the fields per row.

    Generated as one tuple (or dict) expression and compiled here. The generated
    text holds only identifiers made here (_p0, _d0, ...) and `repr` of the field
    names, which are str; the objects are passed in through the namespace.
    """
    ns: dict[str, Any] = {"_M": _MISSING, "_dt": datetime, "_jt": (dict, list),
                          "_sdt": _sqlite_datetime,
                          "_missing": lambda values: _raise_missing(fields, sql, values)}
    exprs = []
    for i, ((name, proc, default, factory, with_none), (kind, extra)) in enumerate(
            zip(fields, kinds, strict=True)):
        if not isinstance(name, str) or not name.isprintable():
            raise ValueError(f"unexpected bind name {name!r}")
        key = repr(name)
        if default is _MISSING:
            src = f"values[{key}]"
        elif factory:
            ns[f"_d{i}"] = default
            src = f"(_d{i}(None) if (_s{i} := get({key}, _M)) is _M else _s{i})"
        else:
            ns[f"_d{i}"] = default
            src = f"get({key}, _d{i})"
        if proc is None:
            exprs.append(src)
            continue
        ns[f"_p{i}"] = proc
        v = f"_v{i}"
        rest = f"_p{i}({v})" if with_none else f"(None if {v} is None else _p{i}({v}))"
        if kind == _SQLITE_DT:
            exprs.append(f"(_sdt({v}) if type({v} := {src}) is _dt else {rest})")
        elif kind == _BOOL:
            ns[f"_t{i}"], ns[f"_f{i}"] = extra
            exprs.append(f"(_t{i} if ({v} := {src}) is True else _f{i} if {v} is False "
                         f"else {rest})")
        elif kind == _JSON:
            ns[f"_j{i}"] = extra
            exprs.append(f"(_j{i}({v}) if type({v} := {src}) in _jt else {rest})")
        else:
            exprs.append(f"_p{i}({src})" if with_none
                         else f"(None if ({v} := {src}) is None else _p{i}({v}))")
    if dialect.positional:
        body = "(" + "".join(e + ", " for e in exprs) + ")"
    else:
        body = "{" + ", ".join(f"{f[0]!r}: {e}" for f, e in zip(fields, exprs, strict=True)) + "}"
    code = ("def convert(values):\n"
            "    get = values.get\n"
            "    try:\n"
            f"        return {body}\n"
            "    except KeyError:\n"
            "        _missing(values)\n"
            "        raise\n")
    exec(compile(code, f"<prepared {sql[:40]!r}>", "exec"), ns)  # noqa: S102 - text built above
    convert: Callable[[Mapping[str, Any]], Any] = ns["convert"]
    return convert


def _raise_missing(fields: Sequence[_Field], sql: str, values: Mapping[str, Any]) -> None:
    """The KeyError for the first field without a value and without a default, if any."""
    for name, _proc, default, _factory, _with_none in fields:
        if default is _MISSING and name not in values:
            raise KeyError(f"{name!r} missing for {sql[:60]!r}")


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

class Deferred:
    """Rows nobody reads back in the same transaction, written at its end, many per
    statement: fewer statements, and on SQLite fewer hand-overs of the GIL between
    the writer thread and the event loop (each statement step releases it).

    The writer (gateway.store.writer.BatchWriter) makes one per transaction and hands
    it to the jobs that ask for it; they pass it on to the functions that defer
    rows (repo.record_deliveries, commlog.add_comm).
    """

    def __init__(self) -> None:
        self.rows: dict[Prepared, list[Mapping[str, Any]]] = {}
        self.hooks: dict[str, tuple[Callable[[Connection, list[Any]], None], list[Any]]] = {}

    def add(self, stmt: Prepared, row: Mapping[str, Any]) -> None:
        rows = self.rows.get(stmt)
        if rows is None:
            rows = self.rows[stmt] = []
        rows.append(row)

    def add_item(self, name: str, flush: Callable[[Connection, list[Any]], None],
                 item: Any) -> None:
        """Collect `item` under `name`; `flush(conn, items)` writes them all at the end."""
        hook = self.hooks.get(name)
        if hook is None:
            hook = self.hooks[name] = (flush, [])
        hook[1].append(item)

    def flush(self, conn: Connection) -> None:
        for flush, items in self.hooks.values():
            flush(conn, items)
        for stmt, rows in self.rows.items():
            stmt.insert_rows(conn, rows)
        self.rows.clear()
        self.hooks.clear()


@contextlib.contextmanager
def deferred_writes(conn: Connection) -> Iterator[Deferred]:
    """A buffer for the transaction `conn` is in: its rows are written when the block
    ends without an error (before the caller commits), and dropped with it otherwise."""
    d = Deferred()
    yield d
    d.flush(conn)
