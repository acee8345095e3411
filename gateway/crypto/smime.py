"""S/MIME primitives (blocking; call them off the event loop).

Sign, encrypt and decrypt use `cryptography`'s pkcs7 module in-process.
Two things it cannot do go to the `openssl` command line:

* signature verification (cryptography has none for PKCS#7/CMS): `openssl cms
  -verify` checks the signature, the certificate chain against smime_ca_file,
  validity dates and the S/MIME purpose in one call; re-implementing chain
  validation in Python would be more code and less checked than the tool
  every S/MIME implementation is tested against;
* decryption of content ciphers cryptography does not offer (3DES, which is
  still the default of `openssl smime -encrypt`): `openssl cms -decrypt`.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.crypto.keystore import SmimeEntry, cert_addresses, is_ca

OPENSSL = "openssl"
TIMEOUT = 30


class SmimeError(Exception):
    """Decryption or signing failed; the text says why (never a secret)."""


@dataclass
class Verification:
    valid: bool
    signers: list[str] = field(default_factory=list)     # signer certificate addresses
    error: str = ""
    content: bytes = b""                                   # opaque signed-data only


def decrypt(der: bytes, entries: list[SmimeEntry]) -> bytes:
    """Decrypt enveloped-data with the first of `entries` that is a recipient."""
    if not entries:
        raise SmimeError("no private key of a system address among the recipients")
    problems: list[str] = []
    for e in entries:
        try:
            key = e.private_key()
        except Exception as exc:  # a key problem is reported, not raised
            problems.append(str(exc))
            continue
        try:
            return pkcs7.pkcs7_decrypt_der(der, e.cert, key, [])
        except UnsupportedAlgorithm:
            return _openssl_decrypt(der, e)
        except ValueError as exc:
            if "No recipient found" in str(exc):
                problems.append(f"not encrypted to the certificate of {e.addresses[0]}")
                continue
            raise SmimeError(f"cannot decrypt: {exc}") from None
    raise SmimeError("; ".join(problems))


def _openssl_decrypt(der: bytes, e: SmimeEntry) -> bytes:
    assert e.key_path is not None
    args = [OPENSSL, "cms", "-decrypt", "-inform", "DER", "-binary", "-recip", str(e.path),
            "-inkey", str(e.key_path)]
    if e.passphrase_path is not None:
        args += ["-passin", f"file:{e.passphrase_path}"]
    r = subprocess.run(args, input=der, capture_output=True, timeout=TIMEOUT, check=False)
    if r.returncode != 0:
        raise SmimeError("cannot decrypt: " + _first_error(r.stderr))
    return r.stdout


def _first_error(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln and ":" in ln:
            return ln.rsplit(":", 1)[-1].strip() or ln
    return lines[0] if lines else "openssl failed"


def _verify_reason(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    for ln in text.splitlines():
        if "Verify error:" in ln:
            return "certificate not trusted: " + ln.split("Verify error:", 1)[1].strip()
    low = text.lower()
    if "digest failure" in low or "content verify error" in low or "digest mismatch" in low:
        return "content was modified after signing (digest mismatch)"
    if "signature failure" in low:
        return "signature failure"
    return "verification failed: " + _first_error(stderr)


def signer_addresses(sig_der: bytes) -> list[str]:
    """Addresses of the end-entity certificates carried in a signature."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(sig_der)
    except ValueError:
        return []
    out: list[str] = []
    for c in certs:
        if not is_ca(c):
            out += [a for a in cert_addresses(c) if a not in out]
    return out


def verify(sig_der: bytes, content: bytes | None, ca_file: Path,
           crl_file: Path | None = None) -> Verification:
    """Verify a detached (content given) or opaque (content None) signature.

    With `crl_file` the signer's certificate is checked against the CRLs in it
    (`-crl_check`): revoked → invalid, and so is a signer whose CA has no CRL
    there or whose CRL has expired, as openssl decides.
    """
    signers = signer_addresses(sig_der)
    if not ca_file.exists():
        return Verification(False, signers, f"no CA trust store ({ca_file})")
    with tempfile.TemporaryDirectory(prefix="dg-smime-") as tmp:
        sig = Path(tmp) / "sig.der"
        sig.write_bytes(sig_der)
        trust = ca_file
        if crl_file is not None:
            # `openssl cms` has no -CRLfile: CRLs are read from the -CAfile file.
            trust = Path(tmp) / "trust.pem"
            try:
                trust.write_bytes(ca_file.read_bytes() + b"\n" + crl_file.read_bytes())
            except OSError as exc:
                return Verification(False, signers, f"cannot read the CRL file {crl_file}: "
                                    f"{exc.strerror or exc}")
        args = [OPENSSL, "cms", "-verify", "-inform", "DER", "-in", str(sig), "-binary",
                "-CAfile", str(trust), "-purpose", "smimesign"]
        if crl_file is not None:
            args.append("-crl_check")
        if content is not None:
            data = Path(tmp) / "content"
            data.write_bytes(content)
            args += ["-content", str(data)]
        r = subprocess.run(args, capture_output=True, timeout=TIMEOUT, check=False)
    if r.returncode == 0:
        return Verification(True, signers, content=r.stdout if content is None else b"")
    out = b""
    if content is None:
        # Opaque: still recover the content so the message can be read.
        r2 = subprocess.run([OPENSSL, "cms", "-verify", "-inform", "DER", "-noverify",
                             "-nosigs", "-binary"], input=sig_der, capture_output=True,
                            timeout=TIMEOUT, check=False)
        out = r2.stdout if r2.returncode == 0 else b""
    return Verification(False, signers, _verify_reason(r.stderr), content=out)


# ---------------------------------------------------------------- outbound


def sign(content: bytes, cert: x509.Certificate, key: object,
         chain: tuple[x509.Certificate, ...] = ()) -> bytes:
    """A detached SHA-256 signature (DER) over content, as given (already canonical)."""
    b = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
    for c in chain:
        b = b.add_certificate(c)
    return b.sign(serialization.Encoding.DER,
                  [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])


def encrypt(content: bytes, certs: list[x509.Certificate]) -> bytes:
    """Enveloped-data (DER), AES-256-CBC, one recipient info per certificate."""
    b = pkcs7.PKCS7EnvelopeBuilder().set_data(content).set_content_encryption_algorithm(
        algorithms.AES256)
    for c in certs:
        b = b.add_recipient(c)
    return b.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
