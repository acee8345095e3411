"""A database error deskgate logs, records as a last_error or shows in the
communication log carries the statement, never its parameters: those hold raw
messages, addresses and, for the poller's rotated OAuth2 tokens, secrets."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from gateway.store.db import make_engine


def test_statement_errors_leave_the_parameters_out(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, secret TEXT UNIQUE)"))
            conn.execute(text("INSERT INTO t (secret) VALUES (:s)"), {"s": "refresh-TOKEN-1"})
        with pytest.raises(IntegrityError) as exc, engine.begin() as conn:
            conn.execute(text("INSERT INTO t (secret) VALUES (:s)"), {"s": "refresh-TOKEN-1"})
        assert "INSERT INTO t" in str(exc.value)
        assert "refresh-TOKEN-1" not in str(exc.value)
    finally:
        engine.dispose()
