"""`deskgate dkim keygen` needs only where to write the key: it works while the
configuration does not pass `check` (its [[dkim]] names the key file it is about to
create, or an unrelated setting is broken)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

DKIM = """
[[dkim]]
domain = "example.org"
selector = "s1"
key_file = "{key_file}"
"""


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          capture_output=True, cwd=conf.parent, timeout=60, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


class TestKeygenBeforeTheKeyExists:
    def test_dkim_block_first_then_keygen_then_check(self, make_confdir):
        """A [[dkim]] written before its key exists: keygen creates the file it names
        (0600), and then check passes."""
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file="keys/dkim/mail.pem")})
        assert cli(conf, "check").returncode == 1       # the key file is missing
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 0, r.stderr
        key = conf.parent / "keys" / "dkim" / "mail.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert r.stdout.startswith("s1._domainkey.example.org. IN TXT"), r.stdout
        assert not (conf.parent / "keys" / "dkim" / "example.org.s1.pem").exists()
        r = cli(conf, "check")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr

    def test_dkim_block_with_an_absolute_key_file(self, make_confdir, tmp_path):
        """An absolute key_file of the matching [[dkim]] is written as it is given; the
        domain is matched without regard to case."""
        key = tmp_path / "elsewhere" / "example.pem"
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file=key)})
        r = cli(conf, "dkim", "keygen", "Example.ORG", "s1", "--ed25519")
        assert r.returncode == 0, r.stderr
        assert key.is_file()
        assert cli(conf, "check").returncode == 0

    def test_dkim_block_found_whatever_the_spelling_of_its_dns_names(self, make_confdir):
        """A [[dkim]] naming the domain by its A-labels and the selector in capitals is the
        entry of `keygen exämple.org s1` (DNS names compare so, as `check` compares them):
        its key file is written, and check then passes."""
        conf = make_confdir({"45-dkim.toml": DKIM.replace('"example.org"',
                                                          '"xn--exmple-cua.org"')
                             .replace('"s1"', '"S1"').format(key_file="keys/dkim/mail.pem")})
        r = cli(conf, "dkim", "keygen", "exämple.org", "s1")
        assert r.returncode == 0, r.stderr
        assert (conf.parent / "keys" / "dkim" / "mail.pem").is_file()
        assert not list((conf.parent / "keys" / "dkim").glob("*mple*"))
        r = cli(conf, "check")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr

    def test_ed25519_alone_passes_check_with_a_warning(self, make_confdir):
        """A domain given only an Ed25519 key passes `check` (exit 0) with a warning that
        names it and the command that adds an RSA key; with an RSA key too, none."""
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file="keys/dkim/ed.pem")})
        assert cli(conf, "dkim", "keygen", "example.org", "s1", "--ed25519").returncode == 0
        r = cli(conf, "check")
        assert r.returncode == 0, r.stderr
        assert ("warning: dkim[0].key_file: example.org is signed with Ed25519 alone"
                in r.stderr), r.stderr
        assert "deskgate dkim keygen example.org SELECTOR" in r.stderr
        (conf / "46-rsa.toml").write_text(DKIM.replace('"s1"', '"s2"').format(
            key_file="keys/dkim/rsa.pem"))
        assert cli(conf, "dkim", "keygen", "example.org", "s2").returncode == 0
        r = cli(conf, "check")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr

    def test_other_selector_gets_the_default_file(self, make_confdir):
        """A selector no [[dkim]] names is written to keys/dkim/DOMAIN.SELECTOR.pem."""
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file="keys/dkim/mail.pem")})
        r = cli(conf, "dkim", "keygen", "example.org", "s2")
        assert r.returncode == 0, r.stderr
        assert (conf.parent / "keys" / "dkim" / "example.org.s2.pem").is_file()
        assert not (conf.parent / "keys" / "dkim" / "mail.pem").exists()

    def test_unrelated_broken_setting_does_not_block_keygen(self, make_confdir):
        """A setting check refuses ([lmtp] max_message_size) does not keep keygen from
        writing the key."""
        conf = make_confdir({"50-broken.toml": '[lmtp]\nmax_message_size = "lots"\n'})
        assert cli(conf, "check").returncode == 1
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 0, r.stderr
        assert (conf.parent / "keys" / "dkim" / "example.org.s1.pem").is_file()

    def test_a_file_that_is_no_toml_does_not_block_keygen(self, make_confdir):
        """A conf.d file that is not valid TOML is skipped (check reports it)."""
        conf = make_confdir({"50-broken.toml": "[lmtp\n"})
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 0, r.stderr
        assert (conf.parent / "keys" / "dkim" / "example.org.s1.pem").is_file()

    def test_two_files_for_one_selector_are_refused(self, make_confdir):
        """Two [[dkim]] of one domain and selector naming different files: keygen does not
        guess which one to write (exit 1, both named), and writes none."""
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file="keys/a.pem")
                             + DKIM.format(key_file="keys/b.pem")})
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 1
        assert "keys/a.pem" in r.stderr and "keys/b.pem" in r.stderr, r.stderr
        assert "--out" in r.stderr
        assert not list(conf.parent.rglob("*.pem"))

    def test_missing_configuration_directory(self, tmp_path):
        """Without --out, a configuration directory that does not exist is refused and
        nothing is written."""
        conf = tmp_path / "root" / "conf.d"
        conf.parent.mkdir()
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 1
        assert f"{conf}: configuration directory does not exist" in r.stderr, r.stderr
        assert not list(tmp_path.rglob("*.pem"))

    def test_existing_key_is_kept(self, make_confdir):
        """The key file the [[dkim]] names is not replaced without --force."""
        conf = make_confdir({"45-dkim.toml": DKIM.format(key_file="keys/dkim/mail.pem")})
        assert cli(conf, "dkim", "keygen", "example.org", "s1").returncode == 0
        key = conf.parent / "keys" / "dkim" / "mail.pem"
        before = key.read_bytes()
        r = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert r.returncode == 1
        assert f"{key} exists (use --force to replace it)" in r.stderr
        assert key.read_bytes() == before
        assert cli(conf, "dkim", "keygen", "example.org", "s1", "--force").returncode == 0
        assert key.read_bytes() != before
