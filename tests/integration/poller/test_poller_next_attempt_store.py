"""poller_account.next_attempt on both backends: migration 0015 adds it to existing
rows and its downgrade drops it; the time the poller stores reads back in UTC and
`fetch --status --json` prints it with its offset."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, inspect

from gateway.cli import main
from gateway.config import load_config
from gateway.inbound.poller import state
from gateway.store.db import alembic_config, make_engine, migrate


def _migrate(engine: Engine, db_url: str, rev: str, *, down: bool) -> None:
    from alembic import command

    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)


def _columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("poller_account")}


def test_0015_adds_next_attempt_and_keeps_the_status(engine, db_url):
    """An account's status written before 0015 stays, with no next attempt until the
    poller's next run; the downgrade drops the column and keeps the row."""
    _migrate(engine, db_url, "0014_handoff_cycle_started", down=True)
    assert "next_attempt" not in _columns(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO poller_account (account, status, last_fetched, last_error) "
            "VALUES ('box', 'Failed', 0, 'login refused')")
    _migrate(engine, db_url, "head", down=False)
    with engine.connect() as conn:
        (st,) = state.account_status(conn, "box")
    assert (st.status, st.last_error, st.next_attempt) == ("Failed", "login refused", None)
    due = datetime(2026, 12, 6, 10, 15, 30, tzinfo=UTC)
    with engine.begin() as conn:
        state.set_next_attempt(conn, "box", due)
    with engine.connect() as conn:
        (st,) = state.account_status(conn, "box")
    assert st.next_attempt is not None
    assert st.next_attempt.replace(tzinfo=st.next_attempt.tzinfo or UTC) == due
    _migrate(engine, db_url, "0014_handoff_cycle_started", down=True)
    assert "next_attempt" not in _columns(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT account, status FROM poller_account").all()
    assert [tuple(r) for r in rows] == [("box", "Failed")]
    _migrate(engine, db_url, "head", down=False)


def test_fetch_status_json_gives_the_next_attempt_in_utc(
        db_url: str, make_confdir: Callable[..., Path], capsys):
    """On either backend the stored time prints as the same instant, with +00:00."""
    conf = make_confdir({"50-acc.toml": textwrap.dedent(f"""
        [gateway]
        database = "{db_url}"

        [[account]]
        name = "box"
        type = "pop3s"
        host = "pop.example.org"
        login = "helpdesk"
        password = "pw"
        """)})
    cfg = load_config(conf)
    assert cfg.database_url == db_url
    engine = make_engine(cfg.database_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            state.run_started(conn, "box", None)
            state.run_finished(conn, "box", "Failed", 0, "login refused")
            state.set_next_attempt(conn, "box", datetime(2026, 12, 6, 10, 15, 30, tzinfo=UTC))
    finally:
        engine.dispose()
    assert main(["--config", str(conf), "fetch", "--status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["next_attempt"] == "2026-12-06T10:15:30+00:00"
    assert row["status"] == "Failed"
