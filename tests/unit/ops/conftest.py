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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_dbs: run on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_dbs (dialect-specific SQL) also run on PostgreSQL."""
    if "log_engine" in metafunc.fixturenames:
        dbs: list[object] = ["sqlite"]
        if metafunc.definition.get_closest_marker("both_dbs"):
            dbs.append(pytest.param("postgres", marks=pytest.mark.postgres))
        metafunc.parametrize("log_engine", dbs, indirect=True)


@pytest.fixture
def log_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database (SQLite; PostgreSQL too for tests marked both_dbs)."""
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
