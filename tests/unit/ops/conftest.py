"""Fixtures of the ops area: a migrated database (SQLite and PostgreSQL) and a way to
write communications with chosen times through the real commlog API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from gateway.commlog import Comm, CommObj, Entry, write_comm
from gateway.store.db import make_engine, migrate

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database; every view test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def obj(type_: str, status: str, *entries: tuple[str, str, str], start: datetime = NOW,
        seconds: float = 1.0, article_id: int | None = None) -> CommObj:
    o = CommObj(type_, start=start)  # type: ignore[arg-type]
    for prio, key, value in entries:
        o.entries.append(Entry(prio, key, value, time=start))  # type: ignore[arg-type]
    o.article_id = article_id
    if status != "Processing":
        o.status, o.end = status, start + timedelta(seconds=seconds)  # type: ignore[assignment]
    return o


@pytest.fixture
def add_comm(log_engine: Engine) -> Callable[..., int]:
    """add_comm(status, *objects, account_type=, account=, direction=, start=, seconds=)."""

    def add(status: str | None, *objects: CommObj, account_type: str = "LMTP",
            account: str = "", direction: str = "Incoming", start: datetime = NOW,
            seconds: float = 1.0) -> int:
        comm = Comm(direction, account_type, account, start=start)  # type: ignore[arg-type]
        comm.objects.extend(objects)
        if status is None:
            comm.close()
            comm.end = start + timedelta(seconds=seconds)
        elif status != "Processing":
            comm.status, comm.end = status, start + timedelta(seconds=seconds)  # type: ignore[assignment]
        with log_engine.begin() as conn:
            return write_comm(conn, comm)

    return add


def ago(**kw: Any) -> datetime:
    return NOW - timedelta(**kw)
