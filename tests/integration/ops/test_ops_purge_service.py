"""The daily purge inside `deskgate serve`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from gateway import commlog_purge, metrics
from gateway.commlog import Comm, write_comm
from gateway.store.tables import Communication


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
