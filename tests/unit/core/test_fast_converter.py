"""A prepared statement's per-row conversion gives, for every field, what SQLAlchemy's own
bind processor gives for the value or the column's default, on SQLite and PostgreSQL
(compiled only, no database)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    null,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from gateway.store import Prepared

CALLS: list[int] = []


def _counted() -> str:
    CALLS.append(1)
    return f"call {len(CALLS)}"


META = MetaData()
SAMPLE = Table(
    "sample", META,
    Column("id", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("naive", DateTime, nullable=False),
    Column("aware", DateTime(timezone=True), nullable=False),
    Column("maybe", DateTime(timezone=True), nullable=True),
    Column("doc", JSON, nullable=False, default=dict),
    Column("doc_or_null", JSON(none_as_null=True), nullable=True),
    Column("label", String(20), nullable=False, default="plain"),
    Column("tag", String(20), nullable=False, default=_counted),
    Column("flag", Boolean, nullable=False, default=True),
)

WHEN = datetime(2026, 11, 27, 8, 30, 15, 123456)


class _Stamp(datetime):
    """A datetime subclass: not the exact type the inline formatting takes."""


DIALECTS = {
    "sqlite": sqlite.dialect(),
    "sqlite-custom-json": sqlite.dialect(json_serializer=lambda v: json.dumps(v, sort_keys=True)),
    "postgresql": postgresql.psycopg.dialect(),
}


def _reference(dialect: Dialect, values: Mapping[str, Any]) -> dict[str, Any]:
    """Each column's value or default through SQLAlchemy's stock bind processor."""
    out = {}
    for col in SAMPLE.c:
        if col is SAMPLE.autoincrement_column:
            continue
        if col.key in values:
            v = values[col.key]
        elif col.default is not None:
            arg: Any = col.default.arg    # type: ignore[attr-defined]
            v = arg(None) if col.default.is_callable else arg    # type: ignore[attr-defined]
        else:
            v = None
        proc = col.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None and (v is not None or col.type.should_evaluate_none):
            v = proc(v)
        out[col.key] = v
    return out


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    """Values with their types; psycopg's Json wrapper by what it wraps and how it dumps."""
    return {k: (type(v), (v.obj, v.dumps) if hasattr(v, "dumps") else v)
            for k, v in params.items()}


def _converted(dialect: Dialect, values: Mapping[str, Any]) -> dict[str, Any]:
    plan = Prepared(insert(SAMPLE))._plan(dialect)
    params = plan.convert(values)
    if dialect.positional:
        assert isinstance(params, tuple)
        return dict(zip(plan.names, params, strict=True))
    assert isinstance(params, dict)
    return params


ROWS: dict[str, dict[str, Any]] = {
    "naive and aware datetimes": {"n": 1, "naive": WHEN, "aware": WHEN.replace(tzinfo=UTC),
                                  "maybe": None, "doc": {"a": [1, 2]}, "doc_or_null": None},
    "offset, no microseconds, early year": {
        "n": 2, "naive": datetime(5, 1, 2, 3, 4, 5),
        "aware": datetime(2026, 3, 4, 23, 59, 59, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        "maybe": WHEN.replace(microsecond=7, tzinfo=UTC), "doc": [], "doc_or_null": {"x": None},
        "flag": 1},
    "date, datetime subclass, JSON scalars": {
        "n": 3, "naive": date(2026, 1, 31), "aware": _Stamp(2026, 2, 1, 1, 2, 3, 4, tzinfo=UTC),
        "maybe": _Stamp(2026, 2, 1), "doc": "text \u00e4", "doc_or_null": 0, "label": "x",
        "tag": "given", "flag": False},
    "JSON None, NULL markers and a dict subclass": {
        "n": 4, "naive": WHEN, "aware": WHEN, "doc": None, "doc_or_null": OrderedDict(b=1, a=2),
        "flag": 0},
    "empty JSON, boolean None": {"n": 7, "naive": WHEN, "aware": WHEN, "doc": {},
                                 "doc_or_null": [], "flag": None},
    "JSON.NULL and null()": {"n": 5, "naive": WHEN, "aware": WHEN, "doc": JSON.NULL,
                             "doc_or_null": null()},
    "nested non-ASCII JSON": {"n": 6, "naive": WHEN, "aware": WHEN,
                              "doc": {"z": {"\u00fc": ["\u2013", 1.5, True, None]}, "a": 1}},
}


class TestConverter:
    @pytest.mark.parametrize("dialect_name", list(DIALECTS))
    @pytest.mark.parametrize("case", list(ROWS))
    def test_same_values_as_stock_processors(self, dialect_name: str, case: str) -> None:
        """Every field equals SQLAlchemy's processor output for the value or default."""
        dialect, row = DIALECTS[dialect_name], ROWS[case]
        got, expected = _converted(dialect, row), _reference(dialect, row)
        if "tag" not in row:      # a factory: each call gives a new value
            assert got.pop("tag").startswith("call") and expected.pop("tag").startswith("call")
        assert _comparable(got) == _comparable(expected)

    def test_sqlite_datetime_text(self) -> None:
        """SQLite datetimes are the wall time with six digits of microseconds, any
        offset dropped, as SQLAlchemy stores them; None stays None."""
        got = _converted(DIALECTS["sqlite"], ROWS["offset, no microseconds, early year"])
        assert got["naive"] == "0005-01-02 03:04:05.000000"
        assert got["aware"] == "2026-03-04 23:59:59.000000"
        assert got["maybe"] == "2026-11-27 08:30:15.000007"
        assert _converted(DIALECTS["sqlite"], ROWS["naive and aware datetimes"])["maybe"] is None

    def test_json_none_is_json_null_unless_none_as_null(self) -> None:
        """None in a JSON column is the JSON text null; with none_as_null it is SQL NULL."""
        got = _converted(DIALECTS["sqlite"], {**ROWS["naive and aware datetimes"], "doc": None})
        assert got["doc"] == "null" and got["doc_or_null"] is None

    def test_engine_json_serializer_is_used(self) -> None:
        """A serializer configured on the dialect writes the JSON, as with execute."""
        row = {"n": 1, "naive": WHEN, "aware": WHEN, "doc": {"b": 1, "a": 2}}
        assert _converted(DIALECTS["sqlite-custom-json"], row)["doc"] == '{"a": 2, "b": 1}'
        assert _converted(DIALECTS["sqlite"], row)["doc"] == '{"b": 1, "a": 2}'

    def test_defaults_and_factories_per_row(self) -> None:
        """Missing values take the scalar default; a factory default is called for each row."""
        row = {"n": 1, "naive": WHEN, "aware": WHEN}
        before = len(CALLS)
        first, second = (_converted(DIALECTS["sqlite"], row) for _ in range(2))
        assert len(CALLS) == before + 2 and first["tag"] != second["tag"]
        assert first["label"] == "plain" and first["flag"] == 1 and first["doc"] == "{}"
        assert first["maybe"] is None and first["doc_or_null"] is None

    @pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
    def test_missing_required_value_names_the_first_field(self, dialect_name: str) -> None:
        """A row without a required value is a KeyError naming the first such field."""
        convert: Callable[[Mapping[str, Any]], Any] = Prepared(insert(SAMPLE))._plan(
            DIALECTS[dialect_name]).convert
        with pytest.raises(KeyError, match="'naive' missing for"):
            convert({"n": 1})
        with pytest.raises(KeyError, match="'n' missing for"):
            convert({})

    def test_sqlite_datetime_same_object_again(self) -> None:
        """The text of the last datetime formatted is reused only for that very object: an
        equal time with another offset, or the next object, is formatted anew (on
        another day too)."""
        proc = DateTime(timezone=True).dialect_impl(DIALECTS["sqlite"]).bind_processor(
            DIALECTS["sqlite"])
        assert proc is not None
        aware = WHEN.replace(tzinfo=UTC)
        same_instant = aware.astimezone(timezone(timedelta(hours=-3)))   # equal, other text
        later = aware + timedelta(microseconds=1)
        next_day = aware + timedelta(days=1)
        order = [aware, aware, same_instant, aware, later, later, WHEN, aware, next_day,
                 later, datetime(5, 1, 2, 3, 4, 5), next_day]
        texts = [_converted(DIALECTS["sqlite"], {"n": 1, "naive": v, "aware": v, "maybe": v})
                 for v in order]
        for v, got in zip(order, texts, strict=True):
            assert got["naive"] == got["aware"] == got["maybe"] == proc(v)
        assert texts[2]["aware"] != texts[0]["aware"] and same_instant == aware

    @pytest.mark.parametrize("value", [
        {}, [], {"a": [1, 2]}, [[]], [{}], {"z": {"\u00fc": ["\u2013", 1.5, True, None]}, "a": 1},
        [("Subject", "x"), ("X-Empty", "")], {1: "int key", 2.5: "float", None: 0, False: 1},
        [float("nan"), float("inf"), -float("inf"), 10**30, -0.0, "\x00\ud800"],
        {"big": list(range(50)), "nested": [[[[{"deep": "é"}]]]]},
    ])
    def test_json_text_is_json_dumps(self, value: Any) -> None:
        """The JSON shortcut writes exactly json.dumps's text (the converter's default
        serializer), empty containers included."""
        got = _converted(DIALECTS["sqlite"], {"n": 1, "naive": WHEN, "aware": WHEN, "doc": value})
        assert got["doc"] == json.dumps(value)

    def test_json_shortcut_errors_as_json_dumps(self) -> None:
        """What json.dumps refuses, the shortcut refuses with the same error; a refused
        value leaves nothing behind that would spoil the next one."""
        loop: list[Any] = []
        loop.append(loop)
        row = {"n": 1, "naive": WHEN, "aware": WHEN}
        for bad in ({"when": WHEN}, [b"bytes"], loop, {("tuple", "key"): 1}):
            with pytest.raises((TypeError, ValueError)) as ours:
                _converted(DIALECTS["sqlite"], {**row, "doc": bad})
            with pytest.raises((TypeError, ValueError)) as stock:
                json.dumps(bad)
            assert (type(ours.value), str(ours.value)) == (type(stock.value), str(stock.value))
        inner = {"x": 1}
        assert _converted(DIALECTS["sqlite"], {**row, "doc": [inner, inner]})["doc"] == \
            json.dumps([inner, inner])

    @pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
    def test_boolean_values_refused_as_by_the_processor(self, dialect_name: str) -> None:
        """True and False become the dialect's own values; what the Boolean processor
        refuses (2, "yes") is refused with its error."""
        dialect = DIALECTS[dialect_name]
        row = {"n": 1, "naive": WHEN, "aware": WHEN}
        native = dialect.supports_native_boolean
        assert _converted(dialect, {**row, "flag": True})["flag"] == (True if native else 1)
        assert _converted(dialect, {**row, "flag": False})["flag"] == (False if native else 0)
        for bad, error in ((2, ValueError), ("yes", TypeError)):
            with pytest.raises(error, match=r"Not a boolean|is not None, True, or False"):
                _converted(dialect, {**row, "flag": bad})

    def test_processor_key_error_is_not_taken_for_a_missing_value(self) -> None:
        """A KeyError raised while converting a present value propagates unchanged."""

        class Broken(dict[str, Any]):
            def __getitem__(self, key: str) -> Any:
                raise KeyError("from the mapping itself")

        with pytest.raises(KeyError, match="from the mapping itself"):
            Prepared(insert(SAMPLE))._plan(DIALECTS["sqlite"]).convert(
                Broken(n=1, naive=WHEN, aware=WHEN))
