"""Fixtures of the outbound unit tests: a migrated SQLite store with the base config."""

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
