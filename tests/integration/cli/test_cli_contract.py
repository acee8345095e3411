"""The command line as docs/cli.md promises it, run as real `deskgate` processes: bad
option values are refused before anything is written, and the exit codes and messages
are the documented ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin.decode(), capture_output=True, cwd=conf.parent,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
                          text=True, check=False)


class TestDkimKeygenNames:
    @pytest.mark.parametrize(("domain", "selector", "bad"), [
        ("example.org", "bad sel", "selector"),
        ("example.org", "s1;h=x", "selector"),
        ("example.org", "../../../outside", "selector"),
        ("bad domain", "s1", "domain"),
        ('example.org"\nx', "s1", "domain"),
        ("example..org", "s1", "domain"),
    ])
    def test_a_name_dns_cannot_hold_is_refused(self, make_confdir, domain, selector, bad):
        """`dkim keygen` refuses a domain or selector that is no DNS name (RFC 6376: the
        selector is dot-separated letters, digits and hyphens) with exit 2 naming the
        argument, and writes no key: such a name would give a DKIM-Signature (d=, s=) and
        a TXT record that no verifier can use."""
        conf = make_confdir()
        r = cli(conf, "dkim", "keygen", domain, selector)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"argument {bad}:" in r.stderr, r.stderr
        assert r.stdout == ""
        assert not list(conf.parent.rglob("*.pem")), list(conf.parent.rglob("*.pem"))

    def test_dns_names_are_accepted(self, make_confdir):
        """A usual selector (letters, digits, hyphens, dots) and an internationalised
        domain are accepted; the TXT record names them."""
        conf = make_confdir()
        r = cli(conf, "dkim", "keygen", "exämple.org", "s-2026.a", "--ed25519")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("s-2026.a._domainkey.exämple.org. IN TXT"), r.stdout
        assert (conf.parent / "keys" / "dkim" / "exämple.org.s-2026.a.pem").is_file()
