"""Tests cannot pass without their peers: every skip goes through tests/peers/require.py,
which fails under CI=true, and the skips left in CI are the documented ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.peers.require import INTENDED

REPO = Path(__file__).resolve().parents[3]
HELPER = REPO / "tests" / "peers" / "require.py"

PROBE = '''
from tests.peers.require import missing_peer, not_applicable, requires_peer

@requires_peer("no such peer here")
def test_marked():
    pass

def test_called():
    missing_peer("no such binary")

def test_present():
    pass

def test_intended():
    not_applicable("OR IGNORE is SQLite syntax")
'''


def _run_probe(tmp_path: Path, ci: str | None) -> str:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-rA",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(probe)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                       check=False)
    return r.stdout + r.stderr


class TestSkipsGoThroughOneHelper:
    def test_no_direct_skips_in_tests(self):
        """No test skips by itself (pytest.skip, skipif, importorskip, mark.skip): only the
        helper decides, so CI=true cannot be bypassed."""
        pattern = re.compile(r"pytest\.skip\(|skipif|importorskip|mark\.skip\b|mark\.xfail")
        files = [p for p in sorted((REPO / "tests").rglob("*.py"))
                 if p not in {HELPER, Path(__file__).resolve()}]
        offenders = [f"{p.relative_to(REPO)}:{n}" for p in files
                     for n, line in enumerate(p.read_text().splitlines(), 1)
                     if pattern.search(line)]
        assert offenders == []

    def test_missing_peer_fails_under_ci(self, tmp_path):
        """Under CI=true a missing peer, by mark or by call, is a failure; an intended skip
        stays a skip."""
        out = _run_probe(tmp_path, "true")
        assert "test_marked - Failed: peer missing under CI=true: no such peer here" in out, out
        assert "test_called - Failed: peer missing under CI=true: no such binary" in out, out
        assert "PASSED test_probe.py::test_present" in out, out
        assert "SKIPPED" in out and "OR IGNORE is SQLite syntax" in out, out
        assert "1 passed, 1 skipped" in out, out

    def test_missing_peer_skips_outside_ci(self, tmp_path):
        """Without CI a missing peer skips with its reason, so a developer without root can
        run the rest."""
        out = _run_probe(tmp_path, None)
        assert "1 passed, 3 skipped" in out, out
        assert "no such binary" in out, out

    def test_postgres_unreachable_fails_under_ci(self, tmp_path):
        """The PostgreSQL fixture, pointed at a closed port, fails under CI=true."""
        (tmp_path / "test_pg.py").write_text("def test_pg(pg_url):\n    pass\n")
        env = {**os.environ, "CI": "true", "PYTHONPATH": str(REPO),
               "DESKGATE_TEST_PG": "postgresql+psycopg://postgres@127.0.0.1:9/postgres"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                            "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                            str(tmp_path / "test_pg.py")],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                           check=False)
        assert r.returncode == 1, r.stdout
        assert "peer missing under CI=true: PostgreSQL not reachable" in r.stdout

    def test_intended_skips_are_documented(self):
        """Each skip intended to remain in CI is listed in the README's testing section."""
        readme = (REPO / "README.md").read_text()
        for reason in INTENDED:
            assert reason in readme, reason
