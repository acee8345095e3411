"""Fixtures of the outbound unit tests: a migrated SQLite store with the base config
(claim_engine: the same on SQLite and on PostgreSQL, for the claim races)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.config import Config
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate


@pytest.fixture
def ob_engine(tmp_path: Path, config: Config) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ob.db'}")
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, config)
    yield engine
    engine.dispose()


@pytest.fixture
def rt(config: Config) -> Runtime:
    return build_runtime(config)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def claim_engine(request: pytest.FixtureRequest, tmp_path: Path,
                 config: Config) -> Iterator[Engine]:
    """A migrated store with the base config, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, config)
    yield engine
    engine.dispose()
