"""The S/MIME store: certificates and keys in crypto.smime_dir, the CA trust store
crypto.smime_ca_file and the revocations in crypto.smime_crl_file.

Files: `<address>.pem` (certificate, optionally followed by its chain),
`<address>.key` (private key, PEM, optionally encrypted) and
`<address>.passphrase` (the key's passphrase). Key and passphrase files must
not be readable by group or others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from gateway.crypto.keyfiles import KeyStoreError, check_private, mtimes, read_passphrase
from gateway.privatefiles import put_back, write_private


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
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def expired(self) -> bool:
        """Past its end date (one not valid yet is `not_yet_valid`, not expired)."""
        return dt.datetime.now(dt.UTC) > self.cert.not_valid_after_utc

    @property
    def not_yet_valid(self) -> bool:
        """Valid only from a date still to come."""
        return dt.datetime.now(dt.UTC) < self.cert.not_valid_before_utc

    @property
    def unusable_reason(self) -> str:
        """Why this certificate may not sign or be encrypted to ("" when it may)."""
        if self.revoked:
            return "certificate revoked"
        if self.not_yet_valid:
            return f"certificate not valid before {self.not_before:%Y-%m-%d}"
        if self.expired:
            return f"certificate expired {self.not_after:%Y-%m-%d}"
        return ""

    @property
    def usable(self) -> bool:
        """Valid now and not revoked: may sign, and be encrypted to."""
        return not (self.expired or self.not_yet_valid or self.revoked)

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
                "not_yet_valid": self.not_yet_valid,
                "not_before": self.not_before.isoformat(),
                # From crypto.smime_crl_file when configured (deskgate does not ask OCSP).
                "revoked": self.revoked, "file": str(self.path)}


def _load_key_file(path: Path, passphrase_path: Path | None) -> Any:
    """Permissions are checked on every use; the parsed key is cached per file version
    (loading validates the RSA key, which costs tens of ms)."""
    check_private(path)
    if passphrase_path is not None:
        check_private(passphrase_path)
    stamp = (str(path), *mtimes(path), str(passphrase_path),
             *(mtimes(passphrase_path) if passphrase_path else ()))
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
        stamp = mtimes(self.dir, *sorted(self.dir.glob("*"))) if self.dir.is_dir() else (-1,)
        if self.crl_file is not None:
            stamp += mtimes(self.crl_file)
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
        """Entries for an address, usable ones (valid now, not revoked) first, newest
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
                raise KeyStoreError(f"{cert_file}: wrong passphrase, or a damaged PKCS#12 "
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
                raise KeyStoreError(f"{cert_file}: neither a PEM/DER certificate nor a "
                                    "PKCS#12 file") from None
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
            if not _same_public_key(key_obj, cert):
                raise KeyStoreError("the private key does not belong to the certificate")
            if not isinstance(key_obj, rsa.RSAPrivateKey):
                raise KeyStoreError("only RSA keys are supported for S/MIME")
        base = self._file_base(addrs)
        if key_obj is None:
            _check_stored_key(base, cert, cert_file)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
        writes: list[tuple[Path, bytes | None]] = [(Path(f"{base}.pem"), pem)]
        if key_obj is not None:
            algo: serialization.KeySerializationEncryption = (
                serialization.BestAvailableEncryption(passphrase) if passphrase
                else serialization.NoEncryption())
            writes += [(Path(f"{base}.key"), key_obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algo)),
                       (Path(f"{base}.passphrase"),
                        passphrase + b"\n" if passphrase else None)]
        entry = self._write_all(writes)
        return dataclasses.replace(entry, notes=tuple(notes))

    def _write_all(self, writes: list[tuple[Path, bytes | None]]) -> SmimeEntry:
        """Write (None: remove) the files of one import, all or nothing: when a write
        fails, or the certificate is not listed afterwards, every file is put back as
        it was and KeyStoreError names the reason."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"cannot create {self.dir}: {exc.strerror or exc}; nothing "
                                "was imported") from None
        touched = [q for p, _ in writes for q in (p, p.with_name(p.name + ".tmp"))]
        saved = _save(touched)
        current = writes[0][0]
        try:
            for current, data in writes:
                if data is None:
                    current.unlink(missing_ok=True)
                elif current.suffix == ".pem":
                    current.write_bytes(data)
                else:
                    write_private(current, data)
            with self._lock:
                self._cache = None
            entry = next((e for e in self.entries() if e.path == writes[0][0]), None)
            if entry is None:       # written but not listed: say so rather than crash
                raise KeyStoreError(f"{writes[0][0]} was written but is not listed as an "
                                    "S/MIME certificate")
            return entry
        except (OSError, KeyStoreError) as exc:
            why = (f"cannot write {current}: {exc.strerror or exc}"
                   if isinstance(exc, OSError) else str(exc))
            try:
                _put_back(saved)
            except OSError as back:
                raise KeyStoreError(
                    f"{why}; putting the files back failed ({back.filename}: "
                    f"{back.strerror or back}): check "
                    f"{', '.join(str(p) for p, _ in writes)}") from None
            finally:
                with self._lock:
                    self._cache = None
            raise KeyStoreError(f"{why}; nothing was imported, {self.dir} is as it "
                                "was") from None

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


def _same_public_key(key_obj: Any, cert: x509.Certificate) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(key_obj.public_key().public_bytes(enc, pub)
                == cert.public_key().public_bytes(enc, pub))


def _check_stored_key(base: Path, cert: x509.Certificate, cert_file: Path) -> None:
    """A certificate imported without a key keeps the address's stored key (and
    passphrase): refuse it unless that key belongs to it, so signing and decryption
    never use a key of another certificate. A renewal for the same key passes."""
    key = Path(f"{base}.key")
    if not key.exists():
        return
    pp = Path(f"{base}.passphrase")
    address = base.name
    try:
        stored = _load_key_file(key, pp if pp.exists() else None)
    except (KeyStoreError, OSError) as exc:
        why = (f"{exc.filename}: cannot read: {exc.strerror or exc}"
               if isinstance(exc, OSError) else str(exc))
        raise KeyStoreError(
            f"{cert_file}: cannot check the certificate for {address} against the stored "
            f"private key {key} ({why}); nothing was imported") from None
    if not _same_public_key(stored, cert):
        raise KeyStoreError(
            f"{cert_file}: the certificate for {address} does not match the stored private "
            f"key {key}; import the new private key with it, or remove the pair first "
            f"(deskgate keys smime remove {address}); nothing was imported")


# A file as an import found it: its bytes and mode, None when there was none, or
# "other" for something that is no regular file (left alone).
_Saved = dict[Path, tuple[bytes, int] | str | None]


def _save(paths: list[Path]) -> _Saved:
    out: _Saved = {}
    for p in paths:
        try:
            st = p.lstat()
        except FileNotFoundError:
            out[p] = None
            continue
        except OSError as exc:
            raise KeyStoreError(f"cannot read {p}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            out[p] = "other"
            continue
        try:
            out[p] = (p.read_bytes(), stat.S_IMODE(st.st_mode))
        except OSError as exc:
            raise KeyStoreError(f"cannot read {p}: {exc.strerror or exc}") from None
    return out


def _put_back(saved: _Saved) -> None:
    """The files as _save found them (written atomically, with their mode)."""
    for p, old in saved.items():
        if old == "other":
            continue
        if old is None:
            with contextlib.suppress(IsADirectoryError):
                p.unlink(missing_ok=True)
            continue
        assert isinstance(old, tuple)
        data, mode = old
        try:
            if p.read_bytes() == data and stat.S_IMODE(p.stat().st_mode) == mode:
                continue
        except OSError:
            pass
        put_back(p, data, mode)


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
    """Whether `data` starts as a PKCS#12 PFX does (RFC 7292): a DER SEQUENCE whose first
    element is the version, INTEGER 3. A DER certificate's first element is a SEQUENCE,
    a DER private key's INTEGER 0 or 1; text is no SEQUENCE at all."""
    if len(data) < 5 or data[0] != 0x30:
        return False
    first = data[1]
    if first & 0x80 and first != 0x80:         # long form; 0x80: BER, length not given
        size = first & 0x7F
        if size > 4:
            return False
        start = 2 + size
    else:
        start = 2
    return data[start:start + 3] == b"\x02\x01\x03"
