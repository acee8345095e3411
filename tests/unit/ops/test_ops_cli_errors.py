"""The CLI when the configuration or the database is not there: one line naming the
problem and a documented exit code, never a traceback; `deliver` keeps the mail
queued at the MTA (exit 75) instead of having it bounced."""

from __future__ import annotations

import io
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.ops.test_ops_readonly_config import run

MAIL = b"From: a@customer.test\nTo: support@example.org\nSubject: hi\n\nhello\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestDeliverWithBrokenConfiguration:
    @pytest.mark.parametrize("broken", ["[lmtp\n", "[lmtp]\nlisten_on = []\n"])
    def test_exit_75_so_the_mta_retries(self, make_confdir: Callable[..., Path],
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        broken: str) -> None:
        """A conf.d file being edited (not TOML, an unknown key) makes `deliver` exit 75
        (try again later) with the file: key: reason lines, not 1 (a bounce for Exim)."""
        conf = make_confdir({"50-edit.toml": broken})
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MAIL)))
        rc, _, err = run(capsys, conf, "deliver", "-r", "support@example.org")
        assert rc == 75, err
        assert f"{conf}/50-edit.toml" in err and "Traceback" not in err

    def test_missing_configuration_directory(self, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """A configuration directory that is not there is also a temporary failure."""
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MAIL)))
        rc, _, err = run(capsys, tmp_path / "nope", "deliver", "-r", "support@example.org")
        assert rc == 75 and "does not exist" in err


class TestDatabaseDown:
    @pytest.mark.parametrize("argv", [
        ("tickets", "list", "--json"), ("tickets", "show", "1"), ("log", "list"),
        ("log", "overview", "--json"), ("outqueue", "list", "--json"),
        ("handoff", "list", "--json"), ("db", "upgrade"), ("fetch",),
    ])
    def test_one_line_and_exit_75(self, make_confdir: Callable[..., Path],
                                  capsys: pytest.CaptureFixture[str],
                                  argv: tuple[str, ...]) -> None:
        """A database that refuses connections is one line naming gateway.database (the
        password hidden) and the reason, exit 75; no traceback."""
        port = closed_port()
        conf = make_confdir({"50-db.toml": "[gateway]\ndatabase = "
                             f"'postgresql+psycopg://gw:pw@127.0.0.1:{port}/desk'\n"})
        rc, out, err = run(capsys, conf, *argv)
        assert rc == 75, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"deskgate {argv[0]}: gateway.database (postgresql+psycopg:"
                                   f"//gw:***@127.0.0.1:{port}/desk): "), lines[0]
        assert "refused" in lines[0] and out == ""


class TestDatabaseWithoutSchema:
    @pytest.mark.parametrize("argv", [("tickets", "list", "--json"), ("tickets", "show", "1")])
    def test_tickets_before_the_first_start(self, make_confdir: Callable[..., Path],
                                            capsys: pytest.CaptureFixture[str],
                                            argv: tuple[str, ...]) -> None:
        """`tickets list|show` on a database that has no tables yet says to run
        `deskgate db upgrade` (as `log` does), exit 1, no traceback."""
        conf = make_confdir()
        rc, out, err = run(capsys, conf, *argv)
        assert rc == 1, err
        assert err.strip().splitlines() == [
            "deskgate tickets: the database has no tickets yet; run `deskgate db upgrade` "
            "(or start `deskgate serve`)"]
        assert out == ""
