"""`deskgate keys smime import|list` as real processes, with the files sites bring:
self-signed certificates from `openssl req -x509`, OTOBO's unencrypted keys with a
passphrase file next to them, and revocation read from crypto.smime_crl_file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.crypto.crypto_helpers import openssl

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=120, cwd=conf.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def listed(conf: Path) -> dict[str, dict]:
    r = cli(conf, "keys", "smime", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {row["addresses"][0]: row for row in json.loads(r.stdout)}


def self_signed(d: Path, email: str) -> tuple[Path, Path]:
    """`openssl req -x509` as admins run it: CA:TRUE, the address in the subject and SAN."""
    cert, key = d / "self.pem", d / "self.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            "-subj", f"/CN=Self Signed/emailAddress={email}",
            "-addext", f"subjectAltName=email:{email}",
            "-keyout", str(key), "-out", str(cert))
    key.chmod(0o600)
    return cert, key


class TestSelfSignedImport:
    def test_openssl_req_x509_certificate_is_imported_and_listed(self, crypto_env, tmp_path):
        """A self-signed certificate (CA:TRUE) with its key imports (exit 0, no
        StopIteration) and `keys smime list` shows it with its private key."""
        cert, key = self_signed(tmp_path, "selfie@example.org")
        text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout.decode()
        assert "CA:TRUE" in text
        r = cli(crypto_env.conf, "keys", "smime", "import", str(cert), "--key", str(key))
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        row = listed(crypto_env.conf)["selfie@example.org"]
        assert row["private_key"] is True and row["key_problem"] == ""


class TestOtoboKeyWithPassphraseFile:
    def test_unencrypted_key_with_passphrase_file_is_accepted(self, crypto_env, tmp_path):
        """OTOBO's key (not encrypted) with its passphrase file: imported, a note says the
        passphrase was not needed, and the key is usable without a passphrase file."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        assert "ENCRYPTED" not in sales.key.read_text()
        pw = tmp_path / "sales.passphrase"
        pw.write_text("otobo-secret\n")
        pw.chmod(0o600)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(sales.cert), "--key",
                str(sales.key), "--passphrase-file", str(pw))
        assert r.returncode == 0, r.stderr
        assert f"note: {sales.key} is not encrypted: the passphrase was not needed" in r.stderr
        assert "otobo-secret" not in r.stdout + r.stderr
        row = listed(crypto_env.conf)["sales@example.org"]
        assert row["private_key"] is True and row["key_problem"] == ""
        sdir = crypto_env.root / "keys" / "smime"
        assert not (sdir / "sales@example.org.passphrase").exists()
        stored = sdir / "sales@example.org.key"
        openssl("pkey", "-in", str(stored), "-noout", "-passin", "pass:")   # no passphrase

    def test_encrypted_key_with_wrong_passphrase_still_refused(self, crypto_env, tmp_path):
        """The tolerance is only for unencrypted keys: a wrong passphrase stays an error."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        enc = tmp_path / "enc.key"
        openssl("pkey", "-in", str(sales.key), "-aes256", "-passout", "pass:right",
                "-out", str(enc))
        enc.chmod(0o600)
        pw = tmp_path / "pw"
        pw.write_text("wrong\n")
        pw.chmod(0o600)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(sales.cert), "--key",
                str(enc), "--passphrase-file", str(pw))
        assert r.returncode == 65 and "wrong passphrase" in r.stderr


class TestRevocationInList:
    def test_list_reports_revoked_from_crl(self, crypto_env, tmp_path):
        """With crypto.smime_crl_file, `keys smime list` marks the certificate the CRL
        revokes (as openssl reads that CRL) and no other."""
        revoked = crypto_env.ca.issue("Gone", emails=("gone@example.org",), filename="gone")
        kept = crypto_env.ca.issue("Kept", emails=("kept@example.org",), filename="kept")
        for issued in (revoked, kept):
            r = cli(crypto_env.conf, "keys", "smime", "import", str(issued.cert))
            assert r.returncode == 0, r.stderr
        assert listed(crypto_env.conf)["gone@example.org"]["revoked"] is False
        crl = crypto_env.ca.crl([revoked], path=crypto_env.root / "keys" / "crl.pem")
        serial = openssl("x509", "-in", str(revoked.cert), "-noout", "-serial").stdout.decode()
        crl_text = openssl("crl", "-in", str(crl), "-noout", "-text").stdout.decode()
        assert serial.strip().split("=")[1] in crl_text.replace(":", "").upper()
        (crypto_env.conf / "51-crl.toml").write_text(
            '[crypto]\nsmime_crl_file = "keys/crl.pem"\n')
        rows = listed(crypto_env.conf)
        assert rows["gone@example.org"]["revoked"] is True
        assert rows["kept@example.org"]["revoked"] is False
        r = cli(crypto_env.conf, "keys", "smime", "list")
        line = next(x for x in r.stdout.splitlines() if "gone@example.org" in x)
        assert line.rstrip().endswith("revoked")

    def test_revoked_certificate_is_not_encrypted_to(self, crypto_env):
        """The store hands out no revoked certificate for encryption: the recipient is
        reported as revoked, like an expired one is reported as expired."""
        from gateway.config import load_config
        from gateway.crypto import outbound
        from gateway.crypto.keystore import stores_for

        gone = crypto_env.ca.issue("Gone", emails=("gone@example.org",), filename="gone")
        assert cli(crypto_env.conf, "keys", "smime", "import", str(gone.cert)).returncode == 0
        stores = stores_for(load_config(crypto_env.conf))
        entry, why = outbound._smime_recipient(stores, "gone@example.org")
        assert entry is not None and why == ""
        crypto_env.ca.crl([gone], path=crypto_env.root / "keys" / "crl.pem")
        (crypto_env.conf / "51-crl.toml").write_text(
            '[crypto]\nsmime_crl_file = "keys/crl.pem"\n')
        stores = stores_for(load_config(crypto_env.conf))
        assert outbound._smime_recipient(stores, "gone@example.org") == (
            None, "gone@example.org (certificate revoked)")
