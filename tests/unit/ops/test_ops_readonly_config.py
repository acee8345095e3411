"""Read-only commands (tickets, log, outqueue and handoff list/show) run while a policy or conf.d
file is broken — exactly when an admin needs to look — with warnings, using only the
[gateway] keys that locate the database and format ticket numbers."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main

GATEWAY = """
[gateway]
hostname = "helpdesk.test"
state_dir = "state"
database = "sqlite:///data/helpdesk.db"
ticket_hook = "Case#"
"""

BROKEN_POLICY = """
[[filter]]
name = "spam"
match = [{ header = "Subject", value = "viagra" }
"""


def run(capsys: pytest.CaptureFixture[str], conf: Path, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(["--config", str(conf), *argv])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def delivered(make_confdir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """A config (own database path and ticket hook) with one ticket delivered; returns
    (conf.d, ticket number)."""
    conf = make_confdir({"20-gateway.toml": GATEWAY})
    raw = (b"From: a@customer.test\nTo: support@example.org\nSubject: printer on fire\n"
           b"Message-ID: <ro@customer.test>\n\nhelp\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    rc, out, err = run(capsys, conf, "deliver", "-r", "support@example.org", "--json")
    assert rc == 0, err
    return conf, json.loads(out)["ticket"]


class TestBrokenPolicy:
    def test_tickets_list_and_show(self, delivered: tuple[Path, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """With a policy file that is not valid TOML, `tickets list` and `tickets show`
        still read the configured database and print a warning naming the file; show
        uses the configured ticket hook."""
        conf, number = delivered
        policy = conf.parent / "policies" / "010-spam.toml"
        policy.write_text(BROKEN_POLICY)
        rc, out, err = run(capsys, conf, "tickets", "list", "--json")
        assert rc == 0, err
        assert [t["number"] for t in json.loads(out)] == [number]
        assert f"warning: {policy}" in err and "deskgate check" in err
        rc, out, err = run(capsys, conf, "tickets", "show", number)
        assert rc == 0, err
        assert out.startswith(f"Case#{number}  printer on fire")

    def test_log_and_outqueue(self, delivered: tuple[Path, str],
                              capsys: pytest.CaptureFixture[str]) -> None:
        """`log list/show/overview`, `outqueue list/show` and `handoff list` run as well."""
        conf, _ = delivered
        (conf.parent / "policies" / "010-spam.toml").write_text(BROKEN_POLICY)
        rc, out, err = run(capsys, conf, "log", "list", "--json")
        assert rc == 0, err
        rows = json.loads(out)
        assert [r["account_type"] for r in rows] == ["STDIN"]
        rc, out, err = run(capsys, conf, "log", "show", str(rows[0]["id"]), "--json")
        assert rc == 0 and json.loads(out)["id"] == rows[0]["id"], err
        rc, out, err = run(capsys, conf, "log", "overview", "--json")
        assert rc == 0 and json.loads(out)["failed"] == 0, err
        rc, out, err = run(capsys, conf, "outqueue", "list", "--json")
        assert rc == 0 and json.loads(out) == [], err
        rc, _, err = run(capsys, conf, "outqueue", "show", "1")
        assert rc == 1 and "no message 1" in err
        rc, out, err = run(capsys, conf, "handoff", "list", "--json")
        assert rc == 0 and json.loads(out) == [], err

    def test_writing_commands_still_refuse(self, delivered: tuple[Path, str],
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """`deliver` (which runs the filters) still refuses a broken policy: exit 75, so
        the MTA keeps the message queued until the file is fixed."""
        conf, _ = delivered
        (conf.parent / "policies" / "010-spam.toml").write_text(BROKEN_POLICY)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\nx\n")))
        rc, _, err = run(capsys, conf, "deliver", "-r", "support@example.org")
        assert rc == 75 and "not valid TOML" in err


class TestBrokenConfD:
    def test_unknown_key_and_bad_toml_in_conf_d(self, delivered: tuple[Path, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown key in one conf.d file and another file that is not TOML at all:
        `tickets list` still finds the database named in [gateway] and warns about both."""
        conf, number = delivered
        (conf / "30-typo.toml").write_text('[lmtp]\nlisten_on = ["unix:x"]\n')
        (conf / "40-broken.toml").write_text("[queue\nname = 1\n")
        rc, out, err = run(capsys, conf, "tickets", "list", "--json")
        assert rc == 0, err
        assert [t["number"] for t in json.loads(out)] == [number]
        assert "listen_on" in err and "40-broken.toml" in err

    def test_missing_config_directory_is_still_an_error(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A configuration directory that does not exist is not guessed at: exit 1."""
        rc, _, err = run(capsys, tmp_path / "nope", "tickets", "list")
        assert rc == 1 and "does not exist" in err
