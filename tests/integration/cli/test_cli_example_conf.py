"""The example conf.d shipped in the repository passes `deskgate check` as it is, and its
commented-out blocks pass too when a new user switches them on as their comments say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process, run from the checkout's copy."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          capture_output=True, cwd=conf.parent, timeout=60, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def example_copy(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "conf.d", root / "conf.d")
    shutil.copytree(REPO / "policies", root / "policies")
    return root / "conf.d"


def switch_on(text: str, first: str, last: str) -> str:
    """Uncomment the lines of `text` from the one starting `# first` to `# last`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {first}"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(f"# {last}"))
    lines[start:end + 1] = [re.sub(r"^# ?", "", line) for line in lines[start:end + 1]]
    return "\n".join(lines) + "\n"


def secret(root: Path, name: str) -> None:
    path = root / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("not-a-real-secret\n")
    path.chmod(0o600)


class TestExampleConfiguration:
    def test_shipped_example_checks_clean(self, tmp_path):
        """A copy of conf.d and policies passes check with no warning at all."""
        conf = example_copy(tmp_path)
        res = cli(conf, "check")
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""
        assert res.stdout.startswith(f"{conf}: OK")

    def test_dkim_block_after_keygen(self, tmp_path):
        """Following the DKIM comment (keygen, then uncomment) gives a config check passes."""
        conf = example_copy(tmp_path)
        res = cli(conf, "dkim", "keygen", "example.org", "s2026")
        assert res.returncode == 0, res.stderr
        path = conf / "30-outbound.toml"
        path.write_text(switch_on(path.read_text(), "[[dkim]]", "key_file"))
        res = cli(conf, "check")
        assert (res.returncode, res.stderr) == (0, "")

    def test_account_with_password_file(self, tmp_path):
        """The [[account]] block with its password_file passes check."""
        conf = example_copy(tmp_path)
        secret(conf.parent, "legacy")
        path = conf / "40-accounts.toml"
        path.write_text(switch_on(path.read_text(), "[[account]]", "reconnect_every"))
        res = cli(conf, "check")
        assert (res.returncode, res.stderr) == (0, "")

    def test_account_with_oauth2_instead(self, tmp_path):
        """The [[account]] block with [account.oauth2] instead of the password passes check;
        with both, check says to give one of them."""
        conf = example_copy(tmp_path)
        for name in ("legacy", "legacy-client", "legacy-refresh"):
            secret(conf.parent, name)
        path = conf / "40-accounts.toml"
        both = switch_on(path.read_text(), "[[account]]", "scope")
        path.write_text(both)
        res = cli(conf, "check")
        assert res.returncode == 1
        assert (f"{path}: account[0].password: give a password (password, password_file or "
                "password_env) or an [account.oauth2] table, not both") in res.stderr
        path.write_text(re.sub(r"^password_file = .*\n", "", both, flags=re.M))
        res = cli(conf, "check")
        assert (res.returncode, res.stderr) == (0, "")
