"""The daily purge inside `deskgate serve`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from structlog.testing import capture_logs

from gateway import commlog_purge, metrics
from gateway.commlog import Comm, write_comm
from gateway.store.tables import AutoResponse, Communication


def add(engine, status: str, days: float) -> int:
    c = Comm("Incoming", "LMTP", "unix", start=datetime.now(UTC) - timedelta(days=days))
    o = c.obj("Message")
    o.log("Info", "k", "v")
    o.close(status)  # type: ignore[arg-type]
    c.close(status)  # type: ignore[arg-type]
    with engine.begin() as conn:
        return write_comm(conn, c)


class TestPurgeService:
    def test_serve_runs_purge_with_configured_ages(self, make_confdir, run_gateway):
        """serve has a commlog-purge service; a run removes what the configured ages select,
        in batches on the writer thread, and counts it in deskgate_commlog_purged_total."""
        from gateway.config import load_config

        conf = make_confdir({"60-p.toml": '[gateway]\npurge_successful_after = "1d"\n'
                                          'purge_all_after = "3d"\n'})
        rg = run_gateway(load_config(conf))
        assert "commlog-purge" in [s.name for s in rg.gateway.services]
        eng = rg.gateway.engine
        keep = [add(eng, "Successful", 0.5), add(eng, "Failed", 2), add(eng, "Processing", 2)]
        gone = [add(eng, "Successful", 1.5), add(eng, "Failed", 4), add(eng, "Processing", 5)]
        before = metrics.COMMLOG_PURGED._value.get()
        svc = commlog_purge.PurgeService(rg.gateway)
        old_batch = commlog_purge.BATCH
        commlog_purge.BATCH = 2            # several write transactions
        try:
            assert rg.call(svc.purge_once()) == 3
        finally:
            commlog_purge.BATCH = old_batch
        with eng.connect() as conn:
            left = set(conn.execute(select(Communication.id)).scalars())
        assert left == set(keep) and not left & set(gone)
        assert metrics.COMMLOG_PURGED._value.get() == before + 3


def add_count(engine, address: str, days: float) -> int:
    """An auto-response counted for address `days` ago (what the daily limit reads)."""
    with engine.begin() as conn:
        key = conn.execute(insert(AutoResponse).values(
            address=address, ticket_id=None, outbound_id=None,
            sent=datetime.now(UTC) - timedelta(days=days))).inserted_primary_key
    assert key is not None
    return int(key[0])


def counts_left(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(AutoResponse.id)).scalars())


class TestAutoResponseCountPurge:
    def test_counts_older_than_two_days_go_in_batches(self, engine):
        """Auto-response counts older than two days are deleted, at most `limit` a call;
        newer ones stay and the daily limit still sees the last day's."""
        from gateway.outbound.autoresponse_rules import purge_counts, sent_today

        keep = [add_count(engine, "a@customer.test", 0.1),
                add_count(engine, "a@customer.test", 0.9),
                add_count(engine, "b@customer.test", 1.9)]
        gone = [add_count(engine, "a@customer.test", 2.1),
                add_count(engine, "b@customer.test", 30),
                add_count(engine, "c@customer.test", 400)]
        now = datetime.now(UTC)
        with engine.begin() as conn:
            assert purge_counts(conn, now, limit=2) == 2
        with engine.begin() as conn:
            assert purge_counts(conn, now, limit=2) == 1
        with engine.begin() as conn:
            assert purge_counts(conn, now, limit=2) == 0
        left = counts_left(engine)
        assert left == set(keep) and not left & set(gone)
        with engine.connect() as conn:
            assert sent_today(conn, "a@customer.test", now) == 2

    @pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                                 marks=pytest.mark.postgres)])
    def test_serve_purge_removes_old_counts_and_logs_how_many(self, make_confdir, run_gateway,
                                                              request, backend):
        """The daily purge of serve also deletes auto-response counts older than two days
        (in batches) and logs how many went."""
        from gateway.config import load_config

        files = {}
        if backend == "postgresql":
            files["40-db.toml"] = f'[gateway]\ndatabase = "{request.getfixturevalue("pg_url")}"\n'
        rg = run_gateway(load_config(make_confdir(files)))
        eng = rg.gateway.engine
        keep = [add_count(eng, "a@customer.test", 0.5), add_count(eng, "a@customer.test", 1.5)]
        for days in (3, 4, 5, 60, 700):
            add_count(eng, "b@customer.test", days)
        svc = commlog_purge.PurgeService(rg.gateway)
        old_batch = commlog_purge.BATCH
        commlog_purge.BATCH = 2            # several write transactions
        try:
            with capture_logs() as logs:
                rg.call(svc.run_daily())
        finally:
            commlog_purge.BATCH = old_batch
        assert counts_left(eng) == set(keep)
        done = [e for e in logs if e["event"] == "auto-response counts purged"]
        assert [e["removed"] for e in done] == [5], logs
