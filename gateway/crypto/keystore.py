"""Key stores from [crypto]: the S/MIME store (gateway.crypto.smimestore: certificates
and keys in smime_dir, CA trust store smime_ca_file, CRLs in smime_crl_file) and the
PGP keyring (gateway.crypto.pgpkeyring: a GnuPG home), built together from the
configuration, and the check of their secret files.

Both stores cache their listings and re-read them when their files change, so a key
imported with the CLI is used by a running gateway without a reload. Their types and
helpers are importable from here as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config
from gateway.crypto.keyfiles import KeyStoreError, check_private, read_passphrase
from gateway.crypto.pgpkeyring import PgpKey, PgpStore, timed_out
from gateway.crypto.smimestore import (
    SmimeEntry,
    SmimeStore,
    cert_addresses,
    fingerprint,
    is_ca,
    load_certs,
    load_private_key,
    read_private_key,
    revoked_serials,
)

# Importers reach the stores and their helpers through this module.
__all__ = [
    "CryptoStores", "KeyStoreError", "PgpKey", "PgpStore", "SmimeEntry", "SmimeStore",
    "cert_addresses", "check_private", "fingerprint", "is_ca", "load_certs",
    "load_private_key", "read_passphrase", "read_private_key", "revoked_serials",
    "stores_for", "timed_out", "validate_crypto",
]


@dataclass(frozen=True)
class CryptoStores:
    smime: SmimeStore
    pgp: PgpStore
    store_decrypted_body: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.pgp.close()


def stores_for(cfg: Config) -> CryptoStores:
    c = cfg.crypto
    crl = cfg.path(c.smime_crl_file) if c.smime_crl_file else None
    return CryptoStores(SmimeStore(cfg.path(c.smime_dir), cfg.path(c.smime_ca_file), crl),
                        PgpStore(cfg.path(c.gnupg_home), c.gpg_binary),
                        c.store_decrypted_body)


def validate_crypto(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    """Private keys and passphrase files in smime_dir must be private to their owner;
    a configured CRL file must exist and hold CRLs."""
    if cfg.crypto.smime_crl_file:
        crl = cfg.path(cfg.crypto.smime_crl_file)
        try:
            data = crl.read_bytes()
        except OSError as exc:
            add(str(cfg.conf_dir), "crypto.smime_crl_file", f"cannot read {crl}: "
                f"{exc.strerror or exc}")
        else:
            if b"-----BEGIN X509 CRL-----" not in data:
                add(str(cfg.conf_dir), "crypto.smime_crl_file",
                    f"{crl} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    d = cfg.path(cfg.crypto.smime_dir)
    if not d.is_dir():
        return
    for p in sorted([*d.glob("*.key"), *d.glob("*.passphrase"), *d.glob("*.p12")]):
        try:
            check_private(p)
        except KeyStoreError as exc:
            add(str(cfg.conf_dir), "crypto.smime_dir", str(exc))
    pdir = cfg.path(cfg.crypto.gnupg_home) / PgpStore.PASS_DIR
    if pdir.is_dir():
        for p in sorted(pdir.iterdir()):
            try:
                check_private(p)
            except KeyStoreError as exc:
                add(str(cfg.conf_dir), "crypto.gnupg_home", str(exc))
