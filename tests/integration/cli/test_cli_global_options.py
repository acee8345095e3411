"""The global options (`-c`/`--config`) are accepted before and after the command, as
`postconf -c DIR` and `doveconf -c FILE` take them; given both ways, the one after the
command wins."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[3]


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`deskgate ARGS` as its own process, from `cwd`, with no $DESKGATE_CONFIG."""
    env = {k: v for k, v in os.environ.items() if k != "DESKGATE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          cwd=cwd, timeout=60, text=True,
                          env={**env, "PYTHONPATH": str(REPO)}, check=False)


def leaf_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every command that takes no further subcommand."""
    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((prefix, parser))
            return
        for name, child in subs[0].choices.items():
            walk(f"{prefix} {name}".strip(), child)

    walk("", build_parser())
    return out


class TestConfigAfterTheCommand:
    def test_check_with_c_after_the_command(self, make_confdir, tmp_path):
        """`deskgate check -c DIR` checks DIR (it was refused as unrecognized arguments)."""
        conf = make_confdir()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        r = run(elsewhere, "check", "-c", str(conf))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{conf}: OK"), r.stdout

    def test_check_with_c_before_the_command(self, make_confdir, tmp_path):
        """`deskgate -c DIR check` keeps working."""
        conf = make_confdir()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        r = run(elsewhere, "-c", str(conf), "check")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{conf}: OK"), r.stdout

    def test_the_one_after_the_command_wins(self, make_confdir, tmp_path):
        """Given before and after the command, the configuration after it is the one used."""
        conf = make_confdir()
        missing = tmp_path / "missing" / "conf.d"
        r = run(tmp_path, "-c", str(missing), "check", "--config", str(conf))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{conf}: OK"), r.stdout
        r = run(tmp_path, "-c", str(conf), "check", f"--config={missing}")
        assert r.returncode == 1
        assert str(missing) in r.stderr, r.stderr

    @pytest.mark.parametrize(("argv", "want"), [
        (["check"], None),
        (["-c", "A", "check"], "A"),
        (["check", "-c", "B"], "B"),
        (["check", "-cB"], "B"),
        (["check", "--config=B"], "B"),
        (["-c", "A", "check", "-c", "B"], "B"),
        (["--config", "A", "check", "--config", "B"], "B"),
        (["dkim", "keygen", "example.org", "s1", "-c", "B"], "B"),
        (["-c", "A", "dkim", "keygen", "-c", "B", "example.org", "s1"], "B"),
        (["-c", "A", "dkim", "keygen", "example.org", "s1"], "A"),
        (["keys", "smime", "list", "--config", "B"], "B"),
        (["deliver", "-c", "B", "-r", "a@example.org"], "B"),
    ])
    def test_parsed_value(self, argv, want):
        """Each position of --config gives the same setting; the later one wins."""
        assert build_parser().parse_args(argv).config == want

    def test_every_command_takes_the_global_options(self):
        """Every command (each leaf: `check`, `dkim keygen`, `keys smime import`, ...)
        accepts -c and --config after its name, meaning the configuration directory."""
        missing = [path for path, parser in leaf_parsers()
                   if not any(set(a.option_strings) == {"-c", "--config"} and a.dest == "config"
                              for a in parser._actions)]
        assert missing == []

    def test_deliver_hot_path_takes_c_after_the_command(self, make_confdir, tmp_path):
        """`deskgate deliver -c DIR ...` (the fast path an MTA runs) reads DIR."""
        conf = make_confdir()
        r = run(tmp_path, "deliver", "-c", str(conf), "--via-socket")
        # wrong usage (no -r) is what deliver itself answers: the option was parsed
        assert r.returncode == 64, r.stderr
        assert "unrecognized arguments" not in r.stderr
