"""`make test` brings up what the tests need, PostgreSQL included, not only `.ci/run`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL

REPO = Path(__file__).resolve().parents[3]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args],
                          capture_output=True, text=True, timeout=600, env=env, check=False)


class TestMakeTestStartsPostgres:
    def test_make_test_runs_the_postgres_target(self):
        """`make -n test` installs postgresql with the other Debian packages and starts the
        cluster (pg_ctlcluster ... start) before pytest runs."""
        out = _make("-n", "test").stdout
        packages = next(line for line in out.splitlines() if "for p in " in line)
        assert " postgresql " in packages
        start = out.index("pg_ctlcluster --skip-systemctl-redirect")
        assert start < out.index("pytest")

    def test_ci_run_has_no_postgres_logic_of_its_own(self):
        """.ci/run is `make test` and nothing else, so CI and developers start PostgreSQL
        the same way."""
        body = (REPO / ".ci" / "run").read_text()
        assert "pg_ctlcluster" not in body and "make test" in body

    def test_make_postgres_leaves_it_reachable(self):
        """`make postgres` exits 0 and PostgreSQL then answers on 127.0.0.1:5432 with trust
        auth for user postgres."""
        r = _make("postgres")
        assert r.returncode == 0, r.stdout + r.stderr
        engine = create_engine(PG_ADMIN_URL)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            engine.dispose()
