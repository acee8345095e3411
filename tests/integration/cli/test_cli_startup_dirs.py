"""A directory `deskgate serve` needs and cannot create or write: `serve` stops with one
line naming the key and the file that sets it (or that it is the default), and `check`
warns about it beforehand, as the user it runs as, without creating anything. Real
processes; run as root here, so the directories are made impossible with a regular
file in the way, which stops root too."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
USER = pwd.getpwuid(os.geteuid()).pw_name


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process (a serve that starts is stopped)."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          capture_output=True, cwd=conf.parent, timeout=60, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def serve_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in r.stderr.splitlines() if x.startswith("serve:")]


# name: (conf.d file, its text, the line serve prints; {conf} and {root} filled in)
CASES = {
    "maildir below a file": (
        "30-outbound.toml", '[relay]\nmode = "maildir"\nmaildir = "afile/outbox"\n',
        'serve: relay.maildir = "afile/outbox" (in {conf}/30-outbound.toml) resolves to '
        "{root}/afile/outbox: cannot create {root}/afile/outbox: {root}/afile is not a "
        "directory"),
    "default maildir is a file": (
        "30-outbound.toml", '[relay]\nmode = "maildir"\n',
        'serve: relay.maildir = "var/outbox" (the default) resolves to {root}/var/outbox: '
        "{root}/var/outbox is not a directory"),
    "state_dir below a file": (
        "50-state.toml", '[gateway]\nstate_dir = "afile/var"\n'
        'database = "sqlite:///db/deskgate.db"\n',
        'serve: gateway.state_dir = "afile/var" (in {conf}/50-state.toml) resolves to '
        "{root}/afile/var: cannot create {root}/afile/var: {root}/afile is not a directory"),
    "sqlite directory below a file": (
        "50-db.toml", '[gateway]\ndatabase = "sqlite:///afile/db/deskgate.db"\n',
        'serve: gateway.database = "sqlite:///afile/db/deskgate.db" (in {conf}/50-db.toml) '
        "resolves to {root}/afile/db/deskgate.db: cannot create {root}/afile/db: "
        "{root}/afile is not a directory"),
    "LMTP socket directory below a file": (
        "50-lmtp.toml", '[lmtp]\nlisten = ["unix:afile/sock/lmtp.sock"]\n',
        'serve: lmtp.listen[0] = "unix:afile/sock/lmtp.sock" (in {conf}/50-lmtp.toml) '
        "resolves to {root}/afile/sock/lmtp.sock: cannot create {root}/afile/sock: "
        "{root}/afile is not a directory"),
}


def setup(make_confdir, name: str, text: str) -> Path:
    """conf.d with `name`, a regular file `afile` under the root and one at var/outbox."""
    conf = make_confdir({name: text})
    (conf.parent / "afile").write_text("a regular file, not a directory\n")
    (conf.parent / "var").mkdir()
    (conf.parent / "var" / "outbox").write_text("a regular file, not a Maildir\n")
    return conf


class TestServeNamesTheSetting:
    @pytest.mark.parametrize("case", list(CASES))
    def test_directory_it_cannot_create(self, make_confdir, case):
        """`serve` stops (exit 1, no traceback) with one line naming the key, its value,
        the file that sets it (or that it is the default), what it resolves to and why
        the directory cannot be created, before it binds anything."""
        name, text, line = CASES[case]
        conf = setup(make_confdir, name, text)
        r = cli(conf, "serve")
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert serve_lines(r) == [line.format(conf=conf, root=conf.parent)], r.stderr


class TestCheckWarns:
    def test_maildir_serve_cannot_create(self, make_confdir):
        """`check` passes (exit 0) but warns, in text and --json, about a maildir below a
        regular file: the key, the file, the reason, that serve stops on it, and the user
        the check ran as."""
        name, text, _ = CASES["maildir below a file"]
        conf = setup(make_confdir, name, text)
        root = conf.parent
        r = cli(conf, "check")
        assert r.returncode == 0, r.stderr
        reason = (f'"afile/outbox" (in {conf}/30-outbound.toml) resolves to '
                  f"{root}/afile/outbox: cannot create {root}/afile/outbox: {root}/afile is "
                  "not a directory; `serve` stops on it")
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("warning: relay.maildir:")]
        assert line.startswith(f"warning: relay.maildir: {reason}"), line
        assert f"checked as user {USER}" in line, line
        r = cli(conf, "check", "--json")
        assert r.returncode == 0, r.stderr
        (warning,) = [w for w in json.loads(r.stdout)["warnings"] if w["key"] == "relay.maildir"]
        assert warning["reason"].startswith(reason), warning

    def test_gnupg_home_written_on_use(self, make_confdir):
        """A GnuPG home that cannot be created gets a warning too, saying when deskgate
        writes there (serve does not create it at start)."""
        conf = setup(make_confdir, "40-crypto.toml", '[crypto]\ngnupg_home = "afile/gnupg"\n')
        r = cli(conf, "check")
        assert r.returncode == 0, r.stderr
        (line,) = [x for x in r.stderr.splitlines()
                   if x.startswith("warning: crypto.gnupg_home:")]
        assert f'"afile/gnupg" (in {conf}/40-crypto.toml) resolves to ' in line, line
        assert "PGP" in line and f"checked as user {USER}" in line, line

    def test_no_warning_when_every_directory_can_be_made(self, make_confdir):
        """The test configuration, whose directories can all be created, gets no
        directory warning, and check creates none of them."""
        conf = make_confdir({"30-outbound.toml": '[relay]\nmode = "maildir"\n'})
        r = cli(conf, "check")
        assert r.returncode == 0, r.stderr
        assert "warning:" not in r.stderr, r.stderr
        assert not (conf.parent / "var").exists(), "check created the state directory"
