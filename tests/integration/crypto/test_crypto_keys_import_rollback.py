"""`keys smime import` / `keys pgp import` (and the dashboard, which calls the same
functions) are all-or-nothing: an import that fails part way leaves the key store as it
was before (no certificate without its key, no half of a set of keys), and its error
names the reason."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.crypto import smimestore
from gateway.crypto.keystore import KeyStoreError
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, SUPPORT_PASS, CryptoEnv
from tests.integration.crypto.test_crypto_keys_cli import cli

Files = dict[str, tuple[bytes, int]]


def files(d: Path) -> Files:
    """Every file under d with its bytes and mode."""
    out: Files = {}
    for dirpath, _dirs, names in os.walk(d):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(d))] = (p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def customer_p12(env: CryptoEnv, tmp: Path, password: bytes | None = None) -> Path:
    """The correspondent's certificate and private key as one PKCS#12 file."""
    cert = x509.load_pem_x509_certificate(env.customer.cert.read_bytes())
    key = serialization.load_pem_private_key(env.customer.key.read_bytes(), None)
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    p = tmp / "customer.p12"
    p.write_bytes(pkcs12.serialize_key_and_certificates(
        b"customer", key, cert, None, enc))  # type: ignore[arg-type]
    p.chmod(0o600)
    return p


def failing_write(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """The write of a private file ending in `suffix` fails as on a full disk."""
    real = smimestore.write_private

    def write(path: Path, data: bytes) -> None:
        if path.name.endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(smimestore, "write_private", write)


class TestSmimeImportRollback:
    def test_key_write_fails_leaves_no_certificate(self, crypto_env, tmp_path, monkeypatch):
        """A PKCS#12 import whose key file cannot be written: no certificate is left
        without its key, the store lists what it listed before, the error names it."""
        store = crypto_env.stores.smime
        before, listed = files(store.dir), [e.fingerprint for e in store.entries()]
        failing_write(monkeypatch, ".key")
        with pytest.raises(KeyStoreError) as exc:
            store.import_(customer_p12(crypto_env, tmp_path))
        assert "No space left on device" in str(exc.value)
        assert f"{CUSTOMER}.key" in str(exc.value)
        assert "nothing was imported" in str(exc.value)
        assert files(store.dir) == before
        assert [e.fingerprint for e in crypto_env.stores.smime.entries()] == listed

    def test_passphrase_write_fails_leaves_nothing(self, crypto_env, tmp_path, monkeypatch):
        """An encrypted PKCS#12 whose passphrase file cannot be written: neither the
        certificate nor the (encrypted) key is left."""
        store = crypto_env.stores.smime
        before = files(store.dir)
        failing_write(monkeypatch, ".passphrase")
        with pytest.raises(KeyStoreError, match="No space left on device"):
            store.import_(customer_p12(crypto_env, tmp_path, b"p12-secret"), None,
                          b"p12-secret")
        assert files(store.dir) == before

    def test_failed_reimport_puts_the_old_pair_back(self, crypto_env, tmp_path, monkeypatch):
        """Importing a new certificate and key for an address that has a pair, when the
        key write fails: the old certificate and key are back as they were (not the new
        certificate next to the old key)."""
        store = crypto_env.stores.smime
        new = crypto_env.ca.issue("Example Support 2", emails=(SUPPORT,), filename="support2")
        before = files(store.dir)
        assert f"{SUPPORT}.pem" in before and f"{SUPPORT}.key" in before
        failing_write(monkeypatch, ".key")
        with pytest.raises(KeyStoreError, match="No space left on device"):
            store.import_(new.cert, new.key)
        assert files(store.dir) == before
        (e,) = crypto_env.stores.smime.find(SUPPORT, private=True)
        assert e.private_key() is not None      # the old pair still matches

    def test_not_listed_after_writing_removes_it(self, crypto_env, tmp_path, monkeypatch):
        """When the written certificate is not listed afterwards, what was written is
        removed again and the error says so."""
        store = crypto_env.stores.smime
        before = files(store.dir)
        monkeypatch.setattr(smimestore.SmimeStore, "_scan", lambda self: [])
        with pytest.raises(KeyStoreError, match="not listed as an S/MIME certificate"):
            store.import_(customer_p12(crypto_env, tmp_path))
        assert files(store.dir) == before

    def test_cli_key_path_in_the_way(self, crypto_env, tmp_path):
        """keys smime import when the key's file name is taken by a directory: exit 65,
        the reason on stderr as a write (not a read) error, no certificate left."""
        store = crypto_env.stores.smime
        (store.dir / f"{CUSTOMER}.key").mkdir(mode=0o700)    # private, as check wants
        before = files(store.dir)
        r = cli(crypto_env.conf, "keys", "smime", "import",
                str(customer_p12(crypto_env, tmp_path)))
        assert r.returncode == 65, (r.stdout, r.stderr)
        assert f"{CUSTOMER}.key" in r.stderr and "cannot write" in r.stderr, r.stderr
        assert "nothing was imported" in r.stderr, r.stderr
        assert files(store.dir) == before
        assert not (store.dir / f"{CUSTOMER}.pem").exists()


@pytest.fixture
def customer_secret(pgp_keys) -> bytes:
    """The correspondent's secret key (no passphrase), exported."""
    return pgp_keys.customer.export_secret(CUSTOMER)


def fingerprints(env: CryptoEnv) -> dict[str, bool]:
    return {k.fingerprint: k.secret for k in env.stores.pgp.all_keys()}


class TestPgpImportRollback:
    def test_one_refused_key_of_two_imports_neither(self, crypto_env, pgp_keys,
                                                    customer_secret):
        """A file with two secret keys, one protected and no passphrase given: refused,
        and neither key (public or secret part) nor a passphrase file is left."""
        store = crypto_env.stores.pgp
        before = fingerprints(crypto_env)
        with pytest.raises(KeyStoreError, match="give its passphrase") as exc:
            store.import_(customer_secret + pgp_keys.support_secret)
        assert "nothing was imported" in str(exc.value)
        assert fingerprints(crypto_env) == before == {}
        pdir = crypto_env.gnupg_home / store.PASS_DIR
        assert not pdir.exists() or list(pdir.iterdir()) == []

    def test_wrong_passphrase_removes_the_keys_it_wrote(self, crypto_env, pgp_keys,
                                                        customer_secret):
        """The second key's passphrase check fails after the first key's passphrase file
        was written: the first key and its passphrase file are removed too."""
        store = crypto_env.stores.pgp
        with pytest.raises(KeyStoreError, match="wrong passphrase"):
            store.import_(customer_secret + pgp_keys.support_secret, "not-the-passphrase")
        assert fingerprints(crypto_env) == {}
        pdir = crypto_env.gnupg_home / store.PASS_DIR
        assert not pdir.exists() or list(pdir.iterdir()) == []

    def test_keys_there_before_stay(self, crypto_env, pgp_keys):
        """A failed import removes only what it added: the correspondent's public key,
        there before and in the file again, stays."""
        store = crypto_env.stores.pgp
        store.import_(pgp_keys.customer_public)
        before = fingerprints(crypto_env)
        assert list(before.values()) == [False]
        with pytest.raises(KeyStoreError, match="give its passphrase"):
            store.import_(pgp_keys.customer_public + pgp_keys.support_secret)
        assert fingerprints(crypto_env) == before

    def test_cli_refused_import_leaves_the_keyring(self, crypto_env, pgp_keys,
                                                   customer_secret, tmp_path):
        """keys pgp import of both keys without the passphrase: exit 65, the reason and
        that nothing was imported on stderr, keys pgp list unchanged (empty)."""
        f = tmp_path / "both.asc"
        f.write_bytes(customer_secret + pgp_keys.support_secret)
        r = cli(crypto_env.conf, "keys", "pgp", "import", str(f))
        assert r.returncode == 65, (r.stdout, r.stderr)
        assert "give its passphrase" in r.stderr and "nothing was imported" in r.stderr
        assert fingerprints(crypto_env) == {}
        ok = cli(crypto_env.conf, "keys", "pgp", "import", str(f), "--passphrase-file",
                 str(_pass_file(tmp_path)))
        assert ok.returncode == 0, ok.stderr
        assert len(fingerprints(crypto_env)) == 2


def _pass_file(tmp: Path) -> Path:
    p = tmp / "pass"
    p.write_text(SUPPORT_PASS + "\n")
    p.chmod(0o600)
    return p
