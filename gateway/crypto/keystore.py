"""Key stores from [crypto]: S/MIME certificates and keys in smime_dir, CA trust
store smime_ca_file, and a GnuPG home for PGP.

S/MIME files: `<address>.pem` (certificate, optionally followed by its chain),
`<address>.key` (private key, PEM, optionally encrypted) and
`<address>.passphrase` (the key's passphrase). Key and passphrase files must
not be readable by group or others. PGP keys live in the GnuPG home; the
passphrase of a secret key is kept in `<gnupg_home>/deskgate-passphrases/<FPR>`.
PGP keys are trusted as imported (gpg runs with `--trust-model always`).

Listings are cached and re-read when the directory changes, so a key imported
with the CLI is used by a running gateway without a reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.privatefiles import not_private, write_private

log = structlog.get_logger(__name__)


class KeyStoreError(Exception):
    """A key store problem with a message meant for the operator."""


# ---------------------------------------------------------------- files


def check_private(path: Path) -> None:
    """Refuse a private key or passphrase file that group or others may read (the rule
    every secret file follows: gateway.privatefiles)."""
    problem = not_private(path)
    if problem is not None:
        raise KeyStoreError(problem)


def read_passphrase(path: Path) -> bytes:
    """A passphrase file's first line (without its line break); checked for permissions."""
    check_private(path)
    data = path.read_bytes()
    return data.splitlines()[0] if data.strip() else b""


def _mtime(*paths: Path) -> tuple[float, ...]:
    out = []
    for p in paths:
        try:
            out.append(p.stat().st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)


# ---------------------------------------------------------------- S/MIME


def cert_addresses(cert: x509.Certificate) -> list[str]:
    """E-mail addresses of a certificate: rfc822Name SANs, then subject emailAddress."""
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        out += [str(v).lower() for v in san.value.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode()
        if value.lower() not in out:
            out.append(value.lower())
    return out


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def load_certs(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data) if b"CERTIFICATE-----" in data else []
    return [x509.load_der_x509_certificate(data)]


@dataclass(frozen=True)
class SmimeEntry:
    """One certificate of the S/MIME store, with its private key when there is one."""

    path: Path
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    addresses: tuple[str, ...]
    key_path: Path | None
    passphrase_path: Path | None
    problem: str = ""              # why the private key cannot be used
    revoked: bool = False          # listed in crypto.smime_crl_file by its issuer
    notes: tuple[str, ...] = ()    # what an import wants the admin to know

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def expired(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        return not (self.cert.not_valid_before_utc <= now <= self.cert.not_valid_after_utc)

    @property
    def usable(self) -> bool:
        """Neither expired nor revoked: may sign, and be encrypted to."""
        return not self.expired and not self.revoked

    def private_key(self) -> Any:
        """The private key object; KeyStoreError with the reason when unusable."""
        if self.key_path is None:
            raise KeyStoreError(f"no private key for {', '.join(self.addresses)}")
        if self.problem:
            raise KeyStoreError(self.problem)
        return _load_key_file(self.key_path, self.passphrase_path)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.addresses[0] if self.addresses else self.fingerprint,
                "addresses": list(self.addresses), "fingerprint": self.fingerprint,
                "subject": self.cert.subject.rfc4514_string(),
                "issuer": self.cert.issuer.rfc4514_string(),
                "expires": self.not_after.isoformat(), "private_key": self.key_path is not None,
                "key_problem": self.problem, "expired": self.expired,
                # From crypto.smime_crl_file when configured (deskgate does not ask OCSP).
                "revoked": self.revoked, "file": str(self.path)}


def _load_key_file(path: Path, passphrase_path: Path | None) -> Any:
    """Permissions are checked on every use; the parsed key is cached per file version
    (loading validates the RSA key, which costs tens of ms)."""
    check_private(path)
    if passphrase_path is not None:
        check_private(passphrase_path)
    stamp = (str(path), *_mtime(path), str(passphrase_path),
             *(_mtime(passphrase_path) if passphrase_path else ()))
    with _KEY_LOCK:
        key = _KEY_CACHE.get(stamp)
    if key is None:
        password = read_passphrase(passphrase_path) if passphrase_path else None
        key, _ = read_private_key(path.read_bytes(), password, str(path))
        with _KEY_LOCK:
            if len(_KEY_CACHE) > 256:
                _KEY_CACHE.clear()
            _KEY_CACHE[stamp] = key
    return key


_KEY_CACHE: dict[tuple[object, ...], Any] = {}
_KEY_LOCK = threading.Lock()
# An address usable as the name of its files in smime_dir: local@domain with no
# path separator, control character or leading dot.
_FILE_ADDRESS = re.compile(r"[^./\\\x00-\x1f\x7f@][^/\\\x00-\x1f\x7f]*@[^/\\\x00-\x1f\x7f@]+")


def load_private_key(data: bytes, password: bytes | None, name: str) -> Any:
    """PEM or DER private key; clear errors for a missing or wrong passphrase."""
    return read_private_key(data, password, name)[0]


def read_private_key(data: bytes, password: bytes | None, name: str) -> tuple[Any, bool]:
    """(key, whether the passphrase was needed). A passphrase given for a key that is
    not encrypted is not an error: OTOBO keeps a passphrase file next to such keys."""
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data \
        else serialization.load_der_private_key
    try:
        return loader(data, password or None), bool(password)
    except TypeError as exc:
        if "not encrypted" in str(exc).lower() and password:
            return read_private_key(data, None, name)[0], False
        if "encrypted" in str(exc).lower() and not password:
            raise KeyStoreError(f"{name}: the private key is encrypted; give its passphrase "
                                "(--passphrase-file)") from None
        raise KeyStoreError(f"{name}: {exc}") from None
    except ValueError as exc:
        if password:
            raise KeyStoreError(f"{name}: wrong passphrase, or not a private key") from None
        raise KeyStoreError(f"{name}: not a readable private key ({exc})") from None


class SmimeStore:
    """Certificates and keys in smime_dir plus the CA trust store."""

    def __init__(self, directory: Path, ca_file: Path, crl_file: Path | None = None) -> None:
        self.dir = directory
        self.ca_file = ca_file
        self.crl_file = crl_file
        self._lock = threading.Lock()
        self._cache: tuple[tuple[float, ...], list[SmimeEntry]] | None = None

    def entries(self) -> list[SmimeEntry]:
        stamp = _mtime(self.dir, *sorted(self.dir.glob("*"))) if self.dir.is_dir() else (-1,)
        if self.crl_file is not None:
            stamp += _mtime(self.crl_file)
        with self._lock:
            if self._cache is None or self._cache[0] != stamp:
                self._cache = (stamp, self._scan())
            return self._cache[1]

    def _scan(self) -> list[SmimeEntry]:
        out: list[SmimeEntry] = []
        if not self.dir.is_dir():
            return out
        ca = self.ca_file.resolve() if self.ca_file.exists() else None
        revoked = revoked_serials(self.crl_file) if self.crl_file is not None else set()
        for pem in sorted(self.dir.glob("*.pem")):
            if ca is not None and pem.resolve() == ca:
                continue
            try:
                certs = load_certs(pem.read_bytes())
            except (ValueError, OSError):
                continue
            # A CA certificate in the directory is a chain part, unless it names an
            # address: `openssl req -x509` makes self-signed S/MIME certificates CA:TRUE.
            if not certs or (is_ca(certs[0]) and not cert_addresses(certs[0])):
                continue
            key = pem.with_suffix(".key")
            pp = pem.with_suffix(".passphrase")
            problem = ""
            if key.exists():
                try:
                    check_private(key)
                    if pp.exists():
                        check_private(pp)
                except KeyStoreError as exc:
                    problem = str(exc)
            cert = certs[0]
            out.append(SmimeEntry(pem, cert, tuple(certs[1:]), tuple(cert_addresses(cert)),
                                  key if key.exists() else None, pp if pp.exists() else None,
                                  problem, (cert.issuer.public_bytes(), cert.serial_number)
                                  in revoked))
        return out

    def find(self, address: str, *, private: bool = False) -> list[SmimeEntry]:
        """Entries for an address, usable ones (not expired, not revoked) first, newest
        expiry first."""
        address = address.lower()
        found = [e for e in self.entries() if address in e.addresses
                 and (not private or e.key_path is not None)]
        return sorted(found, key=lambda e: (not e.usable, -e.not_after.timestamp()))

    def lookup(self, ident: str) -> list[SmimeEntry]:
        """By address, fingerprint (or a prefix of it) or file name."""
        ident_u = ident.replace(":", "").upper()
        return [e for e in self.entries() if ident.lower() in e.addresses
                or (len(ident_u) >= 8 and e.fingerprint.startswith(ident_u))
                or e.path.name in (ident, ident + ".pem")]

    # ------------------------------------------------------------ admin

    def import_(self, cert_file: Path, key_file: Path | None = None,
                passphrase: bytes | None = None) -> SmimeEntry:
        """Import PEM, DER or PKCS#12 (with --key for a separate key file)."""
        data = cert_file.read_bytes()
        key_obj: Any = None
        chain: list[x509.Certificate] = []
        if b"-----BEGIN" not in data and _looks_pkcs12(data):
            check_private(cert_file)
            try:
                p12 = pkcs12.load_pkcs12(data, passphrase or None)
            except ValueError:
                raise KeyStoreError(f"{cert_file}: wrong passphrase, or not a PKCS#12 "
                                    "file") from None
            if p12.cert is None:
                raise KeyStoreError(f"{cert_file}: the PKCS#12 file holds no certificate")
            cert = p12.cert.certificate
            chain = [c.certificate for c in p12.additional_certs]
            key_obj = p12.key
        else:
            try:
                certs = load_certs(data)
            except ValueError:
                raise KeyStoreError(f"{cert_file}: neither a PEM/DER certificate nor "
                                    "PKCS#12") from None
            if not certs:
                raise KeyStoreError(f"{cert_file}: no certificate in the file")
            cert, chain = certs[0], certs[1:]
            if b"PRIVATE KEY-----" in data and key_file is None:
                key_file = cert_file
        notes: list[str] = []
        if key_file is not None:
            check_private(key_file)
            key_obj, needed = read_private_key(key_file.read_bytes(), passphrase, str(key_file))
            if passphrase and not needed:
                notes.append(f"{key_file} is not encrypted: the passphrase was not needed "
                             "(the key is stored without one)")
                passphrase = None
        addrs = cert_addresses(cert)
        if not addrs:
            raise KeyStoreError(f"{cert_file}: the certificate names no e-mail address")
        if key_obj is not None:
            pub = serialization.PublicFormat.SubjectPublicKeyInfo
            enc = serialization.Encoding.DER
            if key_obj.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(
                    enc, pub):
                raise KeyStoreError("the private key does not belong to the certificate")
            if not isinstance(key_obj, rsa.RSAPrivateKey):
                raise KeyStoreError("only RSA keys are supported for S/MIME")
        base = self._file_base(addrs)
        self.dir.mkdir(parents=True, exist_ok=True)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
        Path(f"{base}.pem").write_bytes(pem)
        if key_obj is not None:
            algo: serialization.KeySerializationEncryption = (
                serialization.BestAvailableEncryption(passphrase) if passphrase
                else serialization.NoEncryption())
            write_private(Path(f"{base}.key"), key_obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algo))
            if passphrase:
                write_private(Path(f"{base}.passphrase"), passphrase + b"\n")
            else:
                Path(f"{base}.passphrase").unlink(missing_ok=True)
        with self._lock:
            self._cache = None
        entry = next((e for e in self.entries() if e.path == Path(f"{base}.pem")), None)
        if entry is None:       # written but not listed: say so rather than crash
            raise KeyStoreError(f"{base}.pem was written but is not listed as an S/MIME "
                                "certificate")
        return dataclasses.replace(entry, notes=tuple(notes))

    def _file_base(self, addrs: list[str]) -> Path:
        """`<smime_dir>/<address>` for the first address that is a plain file name.

        The addresses come from the certificate (a customer's, say): one such as `ca`
        or `../x@y` would otherwise overwrite the trusted CA file or write outside
        the store.
        """
        special = {p.resolve() for p in (self.ca_file, self.crl_file) if p is not None}
        for a in addrs:
            if not _FILE_ADDRESS.fullmatch(a):
                continue
            base = self.dir / a
            if not {Path(f"{base}{s}").resolve() for s in (".pem", ".key", ".passphrase")
                    } & special:
                return base
        raise KeyStoreError(f"the certificate names no address that can be a file name "
                            f"in {self.dir} ({', '.join(map(repr, addrs))})")

    def remove(self, ident: str) -> list[SmimeEntry]:
        found = self.lookup(ident)
        for e in found:
            for p in (e.path, e.path.with_suffix(".key"), e.path.with_suffix(".passphrase")):
                p.unlink(missing_ok=True)
        with self._lock:
            self._cache = None
        return found


def revoked_serials(crl_file: Path) -> set[tuple[bytes, int]]:
    """(issuer name DER, serial) of every certificate the CRLs in `crl_file` revoke;
    empty when the file cannot be read (`check` reports that)."""
    try:
        data = crl_file.read_bytes()
    except OSError:
        return set()
    out: set[tuple[bytes, int]] = set()
    marker = b"-----END X509 CRL-----"
    for chunk in data.split(marker)[:-1]:
        start = chunk.find(b"-----BEGIN X509 CRL-----")
        if start < 0:
            continue
        try:
            crl = x509.load_pem_x509_crl(chunk[start:] + marker)
        except ValueError:
            continue
        issuer = crl.issuer.public_bytes()
        out.update((issuer, r.serial_number) for r in crl)
    return out


def _looks_pkcs12(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return True
    return False


# ---------------------------------------------------------------- PGP


@dataclass(frozen=True)
class PgpKey:
    fingerprint: str
    addresses: tuple[str, ...]
    uids: tuple[str, ...]
    expires: dt.datetime | None
    secret: bool
    expired: bool
    revoked: bool
    can_encrypt: bool
    can_sign: bool
    subkeys: tuple[str, ...] = ()      # key ids and fingerprints of subkeys

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.fingerprint, "addresses": list(self.addresses), "uids": list(self.uids),
                "fingerprint": self.fingerprint,
                "expires": self.expires.isoformat() if self.expires else None,
                "private_key": self.secret, "expired": self.expired, "revoked": self.revoked}

    @property
    def usable(self) -> bool:
        return not (self.expired or self.revoked)


def _uid_email(uid: str) -> str:
    import email.utils

    addr = email.utils.parseaddr(uid)[1]
    return addr.lower() if "@" in addr else ""


# Seconds a gpg call may take; then it is killed (a stuck gpg-agent, a lock in the
# GnuPG home) and the result says so, instead of holding a worker thread for ever.
GPG_TIMEOUT = 30


def timed_out(res: Any) -> bool:
    """Whether this python-gnupg result comes from a gpg killed after GPG_TIMEOUT."""
    return bool(getattr(res, "timed_out", False))


@functools.cache
def _timed_gpg_class() -> Any:
    """gnupg.GPG whose every gpg process is killed after GPG_TIMEOUT seconds
    (python-gnupg itself waits for gpg without a limit)."""
    import gnupg

    def kill(process: Any, result: Any) -> None:
        result.timed_out = True
        with contextlib.suppress(OSError):
            process.kill()

    class TimedGPG(gnupg.GPG):  # type: ignore[misc]
        def _collect_output(self, process: Any, result: Any, writer: Any = None,
                            stdin: Any = None) -> Any:
            timer = threading.Timer(GPG_TIMEOUT, kill, (process, result))
            timer.daemon = True
            timer.start()
            try:
                return super()._collect_output(process, result, writer, stdin)
            finally:
                timer.cancel()

    return TimedGPG


class PgpStore:
    """The GnuPG home. gpg runs as a subprocess per call: never on the event loop."""

    PASS_DIR = "deskgate-passphrases"  # noqa: S105 - a directory name, not a password

    def __init__(self, home: Path, binary: str = "gpg") -> None:
        self.home = home
        self.binary = binary
        self._gpg: Any = None
        self._lock = threading.Lock()
        self._cache: tuple[tuple[float, ...], list[PgpKey]] | None = None

    @property
    def gpg(self) -> Any:
        with self._lock:
            if self._gpg is None:
                self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._agent_conf()
                self._gpg = _timed_gpg_class()(gnupghome=str(self.home), gpgbinary=self.binary,
                                      options=["--trust-model", "always", "--no-auto-key-locate",
                                               "--no-auto-key-retrieve"])
                self._gpg.encoding = "utf-8"
            return self._gpg

    def available(self) -> bool:
        return self.home.is_dir() and any(self.home.glob("pubring.*"))

    def close(self) -> None:
        """Stop the gpg-agent that our gpg calls started for this home.

        gpg launches an agent on demand and leaves it running; without this a
        stopped `deskgate serve` would leave one behind per GnuPG home. Should
        anything still need it, the next gpg call simply starts a new one.
        """
        with self._lock:
            used, self._gpg = self._gpg is not None, None
        gpgconf = shutil.which("gpgconf")
        if not used or gpgconf is None:
            return
        try:
            subprocess.run([gpgconf, "--homedir", str(self.home), "--kill", "gpg-agent"],
                           capture_output=True, check=False, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not stop gpg-agent", home=str(self.home), error=str(exc))

    def _agent_conf(self) -> None:
        """A cheap KDF for the agent's copy of secret keys (unless the admin wrote a conf).

        The passphrase is stored next to the key so the gateway can work unattended;
        a slow KDF would only cost ~1 s per message without adding protection.
        """
        conf = self.home / "gpg-agent.conf"
        if not conf.exists():
            conf.write_text("# written by deskgate: see README, S/MIME and PGP\n"
                            "s2k-count 65536\n")

    def all_keys(self) -> list[PgpKey]:
        if not self.available():
            return []
        stamp = _mtime(self.home / "pubring.kbx", self.home / "pubring.gpg",
                       self.home / "private-keys-v1.d", self.home / self.PASS_DIR)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        keys = self._list()
        with self._lock:
            self._cache = (stamp, keys)
        return keys

    def _list(self) -> list[PgpKey]:
        gpg = self.gpg
        secret = {k["fingerprint"] for k in gpg.list_keys(secret=True)}
        out: list[PgpKey] = []
        now = dt.datetime.now(dt.UTC)
        for k in gpg.list_keys():
            uids = tuple(k.get("uids") or ())
            expires = None
            if k.get("expires"):
                expires = dt.datetime.fromtimestamp(int(k["expires"]), dt.UTC)
            cap = k.get("cap", "")
            subs: list[str] = []
            for sk in k.get("subkeys") or ():
                subs += [s for s in (sk[0], sk[2]) if s]
            out.append(PgpKey(
                fingerprint=k["fingerprint"], uids=uids,
                addresses=tuple(a for a in (_uid_email(u) for u in uids) if a),
                expires=expires, secret=k["fingerprint"] in secret,
                expired=k.get("trust") == "e" or bool(expires and expires < now),
                revoked=k.get("trust") == "r", can_encrypt="E" in cap, can_sign="S" in cap,
                subkeys=(k.get("keyid", ""), *subs)))
        return out

    def find(self, address: str, *, secret: bool = False, encrypt: bool = False,
             sign: bool = False) -> list[PgpKey]:
        address = address.lower()
        return [k for k in self.all_keys() if address in k.addresses and (not secret or k.secret)
                and (not encrypt or k.can_encrypt) and (not sign or k.can_sign)]

    def lookup(self, ident: str) -> list[PgpKey]:
        ident_u = ident.replace(" ", "").upper()
        return [k for k in self.all_keys() if ident.lower() in k.addresses
                or (len(ident_u) >= 8 and (k.fingerprint.endswith(ident_u)
                                           or k.fingerprint.startswith(ident_u)))]

    def by_keyid(self, keyid: str) -> PgpKey | None:
        keyid = keyid.upper()
        for k in self.all_keys():
            if k.fingerprint.endswith(keyid) or any(s.upper().endswith(keyid) for s in k.subkeys):
                return k
        return None

    def passphrase_path(self, fpr: str) -> Path:
        return self.home / self.PASS_DIR / fpr

    def passphrase(self, fpr: str) -> str | None:
        p = self.passphrase_path(fpr)
        if not p.exists():
            return None
        return read_passphrase(p).decode("utf-8")

    # ------------------------------------------------------------ admin

    def import_(self, data: bytes, passphrase: str | None = None) -> list[PgpKey]:
        gpg = self.gpg
        before = {k.fingerprint: k.secret for k in self.all_keys()}
        res = gpg.import_keys(data)
        fprs = list(dict.fromkeys(res.fingerprints))
        if not fprs:
            raise KeyStoreError("no OpenPGP key found in the file"
                                + (f" ({res.stderr.strip().splitlines()[-1]})"
                                   if res.stderr.strip() else ""))
        self._cache = None
        keys = [k for k in self.all_keys() if k.fingerprint in fprs]
        for k in keys:
            if not k.secret:
                continue
            if not self._can_sign(k.fingerprint, passphrase):
                if not before.get(k.fingerprint):
                    gpg.delete_keys(k.fingerprint, secret=True, expect_passphrase=False)
                    self._cache = None
                raise KeyStoreError(
                    f"{k.fingerprint}: wrong passphrase for the secret key" if passphrase
                    else f"{k.fingerprint}: the secret key is protected; give its passphrase "
                         "(--passphrase-file)")
            if passphrase:
                write_private(self.passphrase_path(k.fingerprint), passphrase.encode() + b"\n")
                (self.home / self.PASS_DIR).chmod(0o700)
        self._cache = None
        return [k for k in self.all_keys() if k.fingerprint in fprs]

    def _can_sign(self, fpr: str, passphrase: str | None) -> bool:
        res = self.gpg.sign(b"deskgate passphrase check", keyid=fpr, passphrase=passphrase,
                            detach=True, extra_args=["--pinentry-mode", "loopback"])
        return bool(res.data)

    def remove(self, ident: str) -> list[PgpKey]:
        found = self.lookup(ident)
        gpg = self.gpg
        for k in found:
            if k.secret:
                gpg.delete_keys(k.fingerprint, secret=True, expect_passphrase=False)
            gpg.delete_keys(k.fingerprint)
            self.passphrase_path(k.fingerprint).unlink(missing_ok=True)
        self._cache = None
        return found


# ---------------------------------------------------------------- wiring


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
