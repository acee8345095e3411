"""Fixtures of the ops area: a migrated database (SQLite and PostgreSQL) and a way to
write communications with chosen times through the real commlog API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.commlog import Comm, CommObj, write_comm
from gateway.store.db import make_engine, migrate
from tests.unit.ops.ops_logdata import NOW


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
