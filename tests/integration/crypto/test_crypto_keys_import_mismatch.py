"""`keys smime import` of a certificate without its private key, for an address whose
certificate and key are in the store: a renewed certificate for the same key keeps
the key; one for another key is refused, so no certificate is ever stored next to a
key that does not belong to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.crypto.keystore import KeyStoreError
from tests.integration.crypto.crypto_helpers import SUPPORT, CryptoEnv, openssl
from tests.integration.crypto.test_crypto_keys_cli import cli
from tests.integration.crypto.test_crypto_keys_import_rollback import files

PASSPHRASE = "renewal-pass"


def renewed(env: CryptoEnv, tmp: Path, passphrase: str | None = None) -> Path:
    """A new certificate for SUPPORT made by openssl from the key in the store."""
    key = env.stores.smime.dir / f"{SUPPORT}.key"
    out = tmp / "renewed.pem"
    openssl("req", "-x509", "-new", "-key", str(key), "-days", "90",
            *(("-passin", f"pass:{passphrase}") if passphrase else ()),
            "-subj", f"/CN=Example Support renewed/emailAddress={SUPPORT}",
            "-addext", f"subjectAltName=email:{SUPPORT}", "-out", str(out))
    return out


def other_key_cert(tmp: Path) -> Path:
    """A certificate for SUPPORT whose key is a new one (not the stored key)."""
    cert, key = tmp / "other.pem", tmp / "other.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            "-subj", f"/CN=Someone Else/emailAddress={SUPPORT}",
            "-addext", f"subjectAltName=email:{SUPPORT}",
            "-keyout", str(key), "-out", str(cert))
    return cert


def public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def with_passphrase(env: CryptoEnv, tmp: Path) -> None:
    """Put SUPPORT's pair in the store with its key encrypted and a passphrase file."""
    enc = tmp / "support-enc.key"
    enc.write_bytes(openssl("pkey", "-in", str(env.support.key), "-aes256", "-passout",
                            f"pass:{PASSPHRASE}").stdout)
    enc.chmod(0o600)
    env.stores.smime.import_(env.support.cert, enc, PASSPHRASE.encode())


class TestRenewedCertificate:
    def test_renewal_for_the_same_key_keeps_the_key(self, crypto_env, tmp_path):
        """A renewed certificate (same key) without its key: imported, the stored key
        stays, and the entry's key belongs to the new certificate."""
        store = crypto_env.stores.smime
        key_before = (store.dir / f"{SUPPORT}.key").read_bytes()
        new = renewed(crypto_env, tmp_path)
        e = store.import_(new)
        assert e.key_path is not None and e.problem == ""
        assert e.cert == x509.load_pem_x509_certificate(new.read_bytes())
        assert (store.dir / f"{SUPPORT}.key").read_bytes() == key_before
        (found,) = crypto_env.stores.smime.find(SUPPORT, private=True)
        assert public_der(found.cert) == found.private_key().public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def test_renewal_keeps_key_and_passphrase(self, crypto_env, tmp_path):
        """A pair with an encrypted key and a passphrase file: the renewed certificate is
        imported and both files stay, the key still usable."""
        with_passphrase(crypto_env, tmp_path)
        store = crypto_env.stores.smime
        before = files(store.dir)
        new = renewed(crypto_env, tmp_path, PASSPHRASE)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(new))
        assert r.returncode == 0, r.stderr
        after = files(store.dir)
        for name in (f"{SUPPORT}.key", f"{SUPPORT}.passphrase"):
            assert after[name] == before[name]
        (found,) = crypto_env.stores.smime.find(SUPPORT, private=True)
        assert found.cert == x509.load_pem_x509_certificate(new.read_bytes())
        assert found.private_key() is not None


class TestMismatchedCertificate:
    def test_other_key_is_refused_and_nothing_changes(self, crypto_env, tmp_path):
        """A certificate for another key without that key: refused naming the address
        and the stored key, and the store is as it was."""
        store = crypto_env.stores.smime
        before = files(store.dir)
        with pytest.raises(KeyStoreError) as exc:
            store.import_(other_key_cert(tmp_path))
        msg = str(exc.value)
        assert SUPPORT in msg and "does not match the stored private key" in msg, msg
        assert "nothing was imported" in msg, msg
        assert files(store.dir) == before
        (found,) = crypto_env.stores.smime.find(SUPPORT, private=True)
        assert found.cert == x509.load_pem_x509_certificate(
            crypto_env.support.cert.read_bytes())

    def test_other_key_is_refused_with_a_passphrase_pair(self, crypto_env, tmp_path):
        """The same with an encrypted stored key: refused, key and passphrase kept."""
        with_passphrase(crypto_env, tmp_path)
        store = crypto_env.stores.smime
        before = files(store.dir)
        with pytest.raises(KeyStoreError, match="does not match the stored private key"):
            store.import_(other_key_cert(tmp_path))
        assert files(store.dir) == before

    def test_cli_exit_65_and_the_reason(self, crypto_env, tmp_path):
        """keys smime import: exit 65, one line naming the address and what to do."""
        before = files(crypto_env.stores.smime.dir)
        r = cli(crypto_env.conf, "keys", "smime", "import", str(other_key_cert(tmp_path)))
        assert r.returncode == 65, (r.stdout, r.stderr)
        assert SUPPORT in r.stderr and "does not match the stored private key" in r.stderr
        assert "remove" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert files(crypto_env.stores.smime.dir) == before

    def test_unreadable_stored_key_is_refused(self, crypto_env, tmp_path):
        """A stored key that cannot be checked (readable by others): the import is
        refused with that reason rather than pairing the certificate with it blindly."""
        store = crypto_env.stores.smime
        (store.dir / f"{SUPPORT}.key").chmod(0o644)
        before = files(store.dir)
        with pytest.raises(KeyStoreError) as exc:
            store.import_(other_key_cert(tmp_path))
        msg = str(exc.value)
        assert SUPPORT in msg and "chmod 600" in msg and "nothing was imported" in msg, msg
        assert files(store.dir) == before

    def test_certificate_with_its_new_key_replaces_the_pair(self, crypto_env, tmp_path):
        """The way out the error names: the new certificate with its key is imported."""
        cert = other_key_cert(tmp_path)
        (tmp_path / "other.key").chmod(0o600)
        e = crypto_env.stores.smime.import_(cert, tmp_path / "other.key")
        assert e.key_path is not None
        assert public_der(e.cert) == e.private_key().public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
