"""`deskgate log overview|list|show|purge` and `deskgate passwd` through the CLI entry point."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli import main
from gateway.commlog import Comm, write_comm
from gateway.config import load_config
from gateway.passwords import verify_password
from gateway.store.db import make_engine, migrate


@pytest.fixture
def logged(make_confdir):
    """A config dir whose database holds three communications (one failed, one old)."""
    conf = make_confdir()
    cfg = load_config(conf)
    engine = make_engine(cfg.database_url)
    migrate(engine)
    now = datetime.now(UTC)
    ids = []
    for account, status, prio, age in (("unix", "Successful", "Info", 0),
                                       ("legacy", "Failed", "Error", 0),
                                       ("unix", "Successful", "Info", 10)):
        c = Comm("Incoming", "LMTP" if account == "unix" else "IMAPS", account,
                 start=now - timedelta(days=age))
        o = c.obj("Connection" if status == "Failed" else "Message")
        o.log(prio, "Step", f"{account} said {status.lower()}")
        o.close(status)   # type: ignore[arg-type]
        c.close()
        c.end = c.start + timedelta(seconds=2)
        with engine.begin() as conn:
            ids.append(write_comm(conn, c))
    engine.dispose()
    return conf, ids


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


class TestLogCli:
    def test_list_json_and_filters(self, logged, capsys):
        """list --json gives the contract's fields; --priority/--search/--since/--sort filter."""
        conf, (a, b, c) = logged
        rc, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json")
        rows = json.loads(out)
        assert rc == 0 and [r["id"] for r in rows] == [b, a, c]     # newest first, then id
        assert set(rows[0]) == {"id", "direction", "status", "account_type", "account",
                                "start", "end"}
        _, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json",
                        "--priority", "Error")
        assert [r["id"] for r in json.loads(out)] == [b]
        _, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json",
                        "--search", "LEGACY SAID")
        assert [r["id"] for r in json.loads(out)] == [b]
        _, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json",
                        "--since", "24h", "--sort", "id")
        assert [r["id"] for r in json.loads(out)] == [a, b]
        _, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json",
                        "--sort", "id", "--limit", "1", "--offset", "1")
        assert [r["id"] for r in json.loads(out)] == [b]
        rc, out, _ = run(capsys, "--config", str(conf), "log", "list")
        assert rc == 0 and "legacy" in out and "STATUS" in out

    def test_bad_options(self, logged, capsys):
        """An unknown priority or sort column is a usage error naming the problem."""
        conf, _ = logged
        with pytest.raises(SystemExit) as ei:
            main(["--config", str(conf), "log", "list", "--priority", "Fatal"])
        assert ei.value.code == 2
        rc, _, err = run(capsys, "--config", str(conf), "log", "list", "--sort", "nope")
        assert rc == 2 and "sort must be one of" in err

    def test_show_and_overview(self, logged, capsys):
        """show --json nests objects and entries; overview --json has the contract's keys."""
        conf, (_a, b, _c) = logged
        rc, out, _ = run(capsys, "--config", str(conf), "log", "show", str(b), "--json")
        d = json.loads(out)
        assert rc == 0 and d["status"] == "Failed"
        assert d["objects"][0]["type"] == "Connection"
        assert d["objects"][0]["entries"][0] == {
            "priority": "Error", "key": "Step", "value": "legacy said failed",
            "time": d["objects"][0]["entries"][0]["time"]}
        rc, out, _ = run(capsys, "--config", str(conf), "log", "show", str(b))
        assert rc == 0 and "legacy said failed" in out
        rc, _, err = run(capsys, "--config", str(conf), "log", "show", "999")
        assert rc == 1 and "no communication 999" in err
        rc, out, _ = run(capsys, "--config", str(conf), "log", "overview", "--json")
        ov = json.loads(out)
        assert set(ov) == {"accounts", "failed", "processing", "average_processing_seconds"}
        assert ov["failed"] == 1
        assert ov["accounts"] == [{"account_type": "IMAPS", "account": "legacy",
                                   "status": "permanent connection errors"}]
        assert ov["average_processing_seconds"] == pytest.approx(2.0, abs=0.01)
        rc, out, _ = run(capsys, "--config", str(conf), "log", "overview", "--period", "30d",
                         "--json")
        assert rc == 0 and json.loads(out)["failed"] == 1
        rc, out, _ = run(capsys, "--config", str(conf), "log", "overview", "--since",
                         "2099-01-01", "--json")
        assert rc == 0 and json.loads(out)["failed"] == 0
        assert json.loads(out)["average_processing_seconds"] is None

    def test_overview_filters(self, logged, capsys):
        """overview --status/--priority/--search count only the matching communications."""
        conf, _ = logged
        base = ["--config", str(conf), "log", "overview", "--period", "30d", "--json"]
        _, out, _ = run(capsys, *base, "--priority", "Error")
        ov = json.loads(out)
        assert ov["failed"] == 1 and [a["account"] for a in ov["accounts"]] == ["legacy"]
        _, out, _ = run(capsys, *base, "--search", "UNIX SAID")
        ov = json.loads(out)
        assert ov["failed"] == 0 and ov["accounts"] == []
        assert ov["average_processing_seconds"] == pytest.approx(2.0, abs=0.01)
        _, out, _ = run(capsys, *base, "--status", "Successful")
        ov = json.loads(out)
        assert ov["failed"] == 0 and ov["accounts"] == []
        _, out, _ = run(capsys, *base, "--status", "Failed", "--search", "legacy")
        assert json.loads(out)["failed"] == 1
        with pytest.raises(SystemExit) as ei:
            main([*base, "--priority", "Fatal"])
        assert ei.value.code == 2

    def test_purge(self, logged, capsys):
        """log purge removes the successful communication older than 7 days only."""
        conf, (a, b, _c) = logged
        rc, out, _ = run(capsys, "--config", str(conf), "log", "purge", "--json")
        assert rc == 0 and json.loads(out) == {"purged": 1}
        _, out, _ = run(capsys, "--config", str(conf), "log", "list", "--json")
        assert sorted(r["id"] for r in json.loads(out)) == [a, b]


class TestPasswdCli:
    def test_passwd_from_stdin(self, capsys, monkeypatch):
        """passwd reads one line from stdin and prints a verifiable scrypt hash."""
        monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n"))
        rc, out, _ = run(capsys, "passwd")
        assert rc == 0 and verify_password("hunter2", out.strip())
        monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
        rc, _, err = run(capsys, "passwd")
        assert rc == 1 and "empty" in err


class TestLogCliFreshDatabase:
    def test_no_schema_gives_a_hint(self, make_confdir, capsys):
        """Before any migration, log commands exit 1 and say how to create the schema."""
        conf = make_confdir()
        for argv in (["log", "list"], ["log", "overview", "--json"], ["log", "show", "1"],
                     ["log", "purge"]):
            with pytest.raises(SystemExit) as ei:
                main(["--config", str(conf), *argv])
            out, err = capsys.readouterr()
            assert ei.value.code == 1 and out == "" and "deskgate db upgrade" in err
