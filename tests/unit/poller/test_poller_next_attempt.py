"""When an account is polled next, as the poller stores it and `fetch --status` shows
it, and the failing gauge an alert reads."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from gateway import metrics
from gateway.cli import main
from gateway.config import load_config
from gateway.inbound.poller import state
from gateway.inbound.poller.run import RunResult
from gateway.inbound.poller.scheduler import PollerService
from gateway.store.db import make_engine, migrate

ACCOUNT = """
[[account]]
name = "{name}"
type = "pop3s"
host = "pop.example.org"
login = "helpdesk"
password = "pw"
interval = "10m"
{extra}
"""

STATUS_KEYS = {"account", "type", "valid", "status", "last_start", "last_end",
               "last_fetched", "last_error", "last_error_at", "last_success",
               "communication_id"}


def failing(account: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("deskgate_poller_account_failing",
                                             {"account": account})


@pytest.fixture
def setup(make_confdir: Callable[..., Path]) -> Iterator[tuple[Any, Engine]]:
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(name="box", extra="")
                                    + ACCOUNT.format(name="off", extra="valid = false")}))
    engine = make_engine(cfg.database_url)
    migrate(engine)
    yield cfg, engine
    engine.dispose()


class _Writer:
    """The database writer of a gateway, run inline on one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        with self.engine.begin() as conn:
            return fn(conn)


class TestScheduleIsStored:
    async def test_next_attempt_and_failing_gauge_follow_the_runs(self, setup, monkeypatch):
        """After each run the poller stores when it polls the account next (a minute
        after a failure, doubling, the interval after a success) and sets
        deskgate_poller_account_failing to 1 while the last run failed."""
        cfg, engine = setup
        with engine.begin() as conn:
            state.run_started(conn, "box", None)
        gw = SimpleNamespace(config=cfg, writer=_Writer(engine))
        service = PollerService(gw)  # type: ignore[arg-type]
        statuses = ["Failed", "Failed", "Successful", "Skipped"]
        seen: list[tuple[float, datetime | None, float | None]] = []

        async def poll(acc, *, trigger):
            return RunResult(acc.name, acc.type, status=statuses[len(seen)])

        async def wait_for(aw, timeout):  # noqa: ASYNC109 - stands in for asyncio.wait_for
            aw.close()
            with engine.connect() as conn:
                st = state.account_status(conn, "box")[0]
            seen.append((timeout, st.next_attempt, failing("box")))
            if len(seen) == len(statuses):
                service.poller.stopping = True
            raise TimeoutError

        monkeypatch.setattr(service.poller, "poll", poll)
        monkeypatch.setattr(asyncio, "wait_for", wait_for)
        before = datetime.now(UTC)
        await service._loop(cfg.account_by_name("box"))
        assert [(t, f) for t, _, f in seen] == [(60, 1), (120, 1), (600, 0), (600, 0)]
        for delay, due, _ in seen[:3]:
            assert due is not None
            due = due.replace(tzinfo=due.tzinfo or UTC)   # SQLite keeps no offset
            assert before + timedelta(seconds=delay) <= due
            assert due <= datetime.now(UTC) + timedelta(seconds=delay)
        # A skipped run (another node polls the account) leaves that node's time alone.
        assert seen[3][1] == seen[2][1]

    async def test_a_crashed_run_counts_as_failing(self, setup, monkeypatch):
        """A run that raised is retried after a minute and the gauge says failing."""
        cfg, engine = setup
        with engine.begin() as conn:
            state.run_started(conn, "box", None)
        service = PollerService(SimpleNamespace(config=cfg,  # type: ignore[arg-type]
                                                writer=_Writer(engine)))
        seen: list[tuple[float, float | None]] = []

        async def poll(acc, *, trigger):
            raise RuntimeError("boom")

        async def wait_for(aw, timeout):  # noqa: ASYNC109 - stands in for asyncio.wait_for
            aw.close()
            seen.append((timeout, failing("box")))
            service.poller.stopping = True
            raise TimeoutError

        monkeypatch.setattr(service.poller, "poll", poll)
        monkeypatch.setattr(asyncio, "wait_for", wait_for)
        await service._loop(cfg.account_by_name("box"))
        assert seen == [(60, 1)]

    async def test_a_database_that_cannot_store_it_does_not_stop_polling(
            self, setup, monkeypatch):
        """The next time is information: a failed write is logged and the loop goes on."""
        cfg, _ = setup

        class Down:
            async def run(self, fn):
                raise OSError("database down")

        service = PollerService(SimpleNamespace(config=cfg,  # type: ignore[arg-type]
                                                writer=Down()))
        seen: list[float] = []

        async def poll(acc, *, trigger):
            return RunResult(acc.name, acc.type, status="Failed")

        async def wait_for(aw, timeout):  # noqa: ASYNC109 - stands in for asyncio.wait_for
            aw.close()
            seen.append(timeout)
            if len(seen) == 2:
                service.poller.stopping = True
            raise TimeoutError

        monkeypatch.setattr(service.poller, "poll", poll)
        monkeypatch.setattr(asyncio, "wait_for", wait_for)
        await service._loop(cfg.account_by_name("box"))
        assert seen == [60, 120]
        assert failing("box") == 1


class TestFetchStatusShowsIt:
    def test_json_and_text_show_the_next_attempt(self, setup, capsys):
        """`fetch --status --json` adds next_attempt (UTC, with its offset) and keeps
        every other key; the text table has a NEXT ATTEMPT column before the error.
        A disabled account is not polled: null, and `-` in the table."""
        cfg, engine = setup
        due = datetime(2026, 12, 6, 10, 15, 30, tzinfo=UTC)
        with engine.begin() as conn:
            for name in ("box", "off"):
                state.run_started(conn, name, None)
                state.run_finished(conn, name, "Failed", 0, "login refused")
                state.set_next_attempt(conn, name, due)
        assert main(["--config", str(cfg.conf_dir), "fetch", "--status", "--json"]) == 0
        rows = {r["account"]: r for r in json.loads(capsys.readouterr().out)}
        assert STATUS_KEYS | {"next_attempt"} == set(rows["box"])
        assert rows["box"]["next_attempt"] == "2026-12-06T10:15:30+00:00"
        assert rows["off"]["next_attempt"] is None
        assert main(["--config", str(cfg.conf_dir), "fetch", "--status"]) == 0
        header, *lines = capsys.readouterr().out.splitlines()
        assert re.search(r"  NEXT ATTEMPT +LAST ERROR$", header), header
        start = header.index("NEXT ATTEMPT")
        box = next(ln for ln in lines if ln.startswith("box "))
        off = next(ln for ln in lines if ln.startswith("off "))
        assert box[start:].startswith("2026-12-06 10:15:30  ")
        assert box.endswith("  login refused")
        assert off[start:].split()[0] == "-"

    def test_an_account_that_never_ran_has_no_next_attempt(self, setup, capsys):
        cfg, _ = setup
        assert main(["--config", str(cfg.conf_dir), "fetch", "--status", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [set(r) for r in rows] == [STATUS_KEYS | {"next_attempt"}] * 2
        assert [r["next_attempt"] for r in rows] == [None, None]
