"""`deskgate keys smime|pgp ...`, `deskgate check` on key permissions, `tickets redecrypt`."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, SUPPORT_PASS, openssl


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(conf: Path, *args: str) -> Result:
    """Run the deskgate CLI in-process (a subprocess costs ~2 s of imports per call)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["--config", str(conf), *args])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return Result(rc, out.getvalue(), err.getvalue())


def listed(conf: Path, kind: str) -> list[dict]:
    r = cli(conf, "keys", kind, "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class TestSmimeKeysCli:
    def test_import_pem_with_key_list_remove(self, crypto_env, tmp_path):
        """PEM cert + --key: listed with address, fingerprint, expiry, private key; then removed."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        r = cli(crypto_env.conf, "keys", "smime", "import", str(sales.cert), "--key",
                str(sales.key), "--json")
        assert r.returncode == 0, r.stderr
        row = next(e for e in listed(crypto_env.conf, "smime")
                   if e["addresses"] == ["sales@example.org"])
        assert row["private_key"] is True and row["expired"] is False
        assert row["revoked"] is False and len(row["fingerprint"]) == 64 and row["expires"]
        key = crypto_env.root / "keys" / "smime" / "sales@example.org.key"
        assert key.stat().st_mode & 0o077 == 0
        r = cli(crypto_env.conf, "keys", "smime", "remove", "sales@example.org")
        assert r.returncode == 0, r.stderr
        assert not key.exists()
        assert all(e["addresses"] != ["sales@example.org"]
                   for e in listed(crypto_env.conf, "smime"))

    def test_import_pkcs12_with_passphrase(self, crypto_env, tmp_path):
        """A PKCS#12 file with --passphrase-file: cert and key imported, passphrase kept private."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        p12 = tmp_path / "sales.p12"
        openssl("pkcs12", "-export", "-in", str(sales.cert), "-inkey", str(sales.key),
                "-out", str(p12), "-passout", "pass:p12secret")
        p12.chmod(0o600)
        pw = tmp_path / "pw"
        pw.write_text("p12secret\n")
        pw.chmod(0o600)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(p12), "--passphrase-file",
                str(pw))
        assert r.returncode == 0, r.stderr
        assert "p12secret" not in r.stdout + r.stderr
        row = next(e for e in listed(crypto_env.conf, "smime")
                   if e["addresses"] == ["sales@example.org"])
        assert row["private_key"] is True and row["key_problem"] == ""
        stored = crypto_env.root / "keys" / "smime" / "sales@example.org.passphrase"
        assert stored.stat().st_mode & 0o077 == 0

    def test_pkcs12_wrong_passphrase(self, crypto_env, tmp_path):
        """A wrong PKCS#12 passphrase: exit 65, 'wrong passphrase', nothing imported."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        p12 = tmp_path / "sales.p12"
        openssl("pkcs12", "-export", "-in", str(sales.cert), "-inkey", str(sales.key),
                "-out", str(p12), "-passout", "pass:right")
        p12.chmod(0o600)
        pw = tmp_path / "pw"
        pw.write_text("wrong\n")
        pw.chmod(0o600)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(p12), "--passphrase-file",
                str(pw))
        assert r.returncode == 65 and "wrong passphrase" in r.stderr
        assert not (crypto_env.root / "keys" / "smime" / "sales@example.org.pem").exists()

    def test_import_der_certificate_only(self, crypto_env, tmp_path):
        """A DER certificate alone (a correspondent's): listed without a private key."""
        der = tmp_path / "cust.der"
        openssl("x509", "-in", str(crypto_env.customer.cert), "-outform", "DER", "-out", str(der))
        r = cli(crypto_env.conf, "keys", "smime", "import", str(der))
        assert r.returncode == 0, r.stderr
        row = next(e for e in listed(crypto_env.conf, "smime") if e["addresses"] == [CUSTOMER])
        assert row["private_key"] is False

    def test_world_readable_key_refused(self, crypto_env, tmp_path):
        """A private key file readable by others is refused with a clear error."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        sales.key.chmod(0o644)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(sales.cert), "--key",
                str(sales.key))
        assert r.returncode == 65
        assert "readable by group/others" in r.stderr and "chmod 600" in r.stderr

    def test_check_refuses_loose_key_in_store(self, crypto_env):
        """`deskgate check` names smime_dir when a stored key is group/world readable."""
        (crypto_env.root / "keys" / "smime" / f"{SUPPORT}.key").chmod(0o640)
        r = cli(crypto_env.conf, "check")
        assert r.returncode == 1
        assert "crypto.smime_dir" in r.stderr and "readable by group/others" in r.stderr

    def test_expired_certificate_flagged(self, crypto_env):
        """An expired certificate imports with a warning and is listed as expired."""
        old = crypto_env.ca.issue("Old", emails=("old@example.org",), days=-1,
                                  not_before_days=10, filename="old")
        r = cli(crypto_env.conf, "keys", "smime", "import", str(old.cert))
        assert r.returncode == 0 and "expired" in r.stderr
        row = next(e for e in listed(crypto_env.conf, "smime")
                   if e["addresses"] == ["old@example.org"])
        assert row["expired"] is True


def smime_store_files(crypto_env) -> set[str]:
    return {f.name for f in (crypto_env.root / "keys" / "smime").iterdir()}


class TestSmimeImportOfNoCertificateFormat:
    @pytest.mark.parametrize("mode", [0o644, 0o600])
    @pytest.mark.parametrize(("name", "content"), [
        ("notes.txt", b"just some notes, no certificate\n"),
        ("blob.bin", bytes(range(256))),
        ("key.der", None),       # a DER private key: a SEQUENCE, but no PKCS#12 (version 3)
    ])
    def test_says_it_is_neither_a_certificate_nor_pkcs12(self, crypto_env, tmp_path, mode,
                                                         name, content):
        """A file that is neither a PEM/DER certificate nor PKCS#12 is refused (exit 65)
        with that reason, whatever its mode: anything that did not parse as a DER
        certificate was taken for PKCS#12, so a 0644 text file 'holds a secret but is
        readable by group/others' and a 0600 one was 'not a PKCS#12 file' after a
        passphrase question it never had."""
        path = tmp_path / name
        if content is None:
            openssl("pkey", "-in", str(crypto_env.customer.key), "-outform", "DER",
                    "-out", str(path))
        else:
            path.write_bytes(content)
        path.chmod(mode)
        before = smime_store_files(crypto_env)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(path))
        assert (r.returncode, r.stderr) == (65, f"keys smime import: {path}: neither a "
                                                "PEM/DER certificate nor a PKCS#12 file\n")
        assert smime_store_files(crypto_env) == before

    def test_a_pkcs12_file_readable_by_others_is_still_refused_as_such(self, crypto_env,
                                                                       tmp_path):
        """A real PKCS#12 file (it holds the private key) with mode 0644 is still refused
        for its mode."""
        sales = crypto_env.ca.issue("Sales", emails=("sales@example.org",), filename="sales")
        p12 = tmp_path / "sales.p12"
        openssl("pkcs12", "-export", "-in", str(sales.cert), "-inkey", str(sales.key),
                "-out", str(p12), "-passout", "pass:p12secret")
        p12.chmod(0o644)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(p12))
        assert r.returncode == 65 and "readable by group/others" in r.stderr, r.stderr


class TestPgpKeysCli:
    def test_import_list_remove(self, crypto_env, pgp_keys, tmp_path):
        """Public and protected secret keys import; list shows them; remove deletes."""
        pub = tmp_path / "cust.asc"
        pub.write_bytes(pgp_keys.customer_public)
        sec = tmp_path / "support.asc"
        sec.write_bytes(pgp_keys.support_secret)
        sec.chmod(0o600)
        pw = tmp_path / "pw"
        pw.write_text(SUPPORT_PASS + "\n")
        pw.chmod(0o600)
        assert cli(crypto_env.conf, "keys", "pgp", "import", str(pub)).returncode == 0
        r = cli(crypto_env.conf, "keys", "pgp", "import", str(sec), "--passphrase-file", str(pw))
        assert r.returncode == 0, r.stderr
        assert SUPPORT_PASS not in r.stdout + r.stderr
        rows = {e["addresses"][0]: e for e in listed(crypto_env.conf, "pgp")}
        assert rows[CUSTOMER]["private_key"] is False and rows[SUPPORT]["private_key"] is True
        assert rows[SUPPORT]["expired"] is False and rows[SUPPORT]["revoked"] is False
        assert rows[SUPPORT]["expires"] is None
        r = cli(crypto_env.conf, "keys", "pgp", "remove", rows[CUSTOMER]["fingerprint"])
        assert r.returncode == 0, r.stderr
        assert [e["addresses"] for e in listed(crypto_env.conf, "pgp")] == [[SUPPORT]]

    def test_wrong_passphrase_cli(self, crypto_env, pgp_keys, tmp_path):
        """keys pgp import with a wrong passphrase: exit 65 and a clear message."""
        sec = tmp_path / "support.asc"
        sec.write_bytes(pgp_keys.support_secret)
        pw = tmp_path / "pw"
        pw.write_text("nope\n")
        pw.chmod(0o600)
        r = cli(crypto_env.conf, "keys", "pgp", "import", str(sec), "--passphrase-file", str(pw))
        assert r.returncode == 65 and "wrong passphrase" in r.stderr


class TestRedecrypt:
    def test_redecrypt_after_key_import(self, crypto_env, deliver, tmp_path):
        """Stored undecrypted while the key was missing; after import, redecrypt fills it in."""
        sdir = crypto_env.root / "keys" / "smime"
        (sdir / f"{SUPPORT}.key").unlink()
        src = tmp_path / "inner.eml"
        src.write_bytes(b"Content-Type: text/plain\r\n\r\nserver: late01 needs a reboot\r\n")
        enc = openssl("cms", "-encrypt", "-aes256", "-in", str(src),
                      str(crypto_env.support.cert)).stdout
        raw = (f"From: {CUSTOMER}\r\nTo: {SUPPORT}\r\nSubject: later\r\n"
               "Message-ID: <r1@customer.test>\r\n").encode() + enc
        d = deliver(raw)
        assert not d.crypto["decrypted"] and d.crypto["error"]
        number = d.ticket["number"]
        r = cli(crypto_env.conf, "keys", "smime", "import", str(crypto_env.support.cert),
                "--key", str(crypto_env.support.key))
        assert r.returncode == 0, r.stderr
        r = cli(crypto_env.conf, "tickets", "redecrypt", number, "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res[0]["crypto"]["decrypted"] is True and res[0]["crypto"]["error"] == ""
        shown = json.loads(cli(crypto_env.conf, "tickets", "show", number, "--json").stdout)
        art = shown["articles"][0]
        assert "late01 needs a reboot" in art["body"] and art["crypto"]["decrypted"]
        assert art["attachments"] == []
