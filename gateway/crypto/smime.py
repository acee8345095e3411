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

import contextlib
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.crypto.keystore import SmimeEntry, cert_addresses, fingerprint

OPENSSL = "openssl"
TIMEOUT = 30


class SmimeError(Exception):
    """Decryption or signing failed; the text says why (never a secret)."""


def _run(args: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """openssl, stopped after TIMEOUT seconds together with any child it started.

    subprocess.run(timeout=...) kills only openssl itself and leaves a child that
    holds its pipes running; here openssl leads a process group of its own and the
    whole group is killed (gateway.crypto.pgpkeyring.drain, as for gpg).
    """
    from gateway.crypto.pgpkeyring import drain

    try:
        proc = subprocess.Popen(args, bufsize=0, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        raise SmimeError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
    with proc:
        # Fed by a thread: a message larger than the pipe holds would block here for
        # good if openssl stopped reading; killing the group ends the thread.
        feeder = threading.Thread(target=_feed, args=(proc.stdin, data or b""),
                                  name="openssl-input", daemon=True)
        feeder.start()
        out, err, timed = drain(proc, time.monotonic() + TIMEOUT)
        feeder.join(1.0)
        rc = proc.wait()
    if timed:
        raise SmimeError(f"openssl did not answer within {TIMEOUT} s")
    return subprocess.CompletedProcess(args, rc, out, err)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError, ValueError):   # openssl ended before reading it all
        while view:
            view = view[pipe.write(view) or 0:]        # unbuffered: it may write a part
        pipe.close()


@dataclass
class SignerResult:
    """One SignerInfo's verdict; `addresses` and `subject` come from its certificate."""

    addresses: list[str] = field(default_factory=list)
    fingerprint: str = ""
    subject: str = ""
    valid: bool = False
    error: str = ""
    # False when openssl gave no verdict (it did not answer within TIMEOUT, or could
    # not be started): the signature is neither good nor bad, and error says why.
    checked: bool = True


@dataclass
class Verification:
    """Every SignerInfo checked on its own; valid only when each one is.
    `checked` is False when openssl gave no verdict on one of them."""

    valid: bool
    signers: list[str] = field(default_factory=list)     # signer certificate addresses
    error: str = ""
    content: bytes = b""                                   # opaque signed-data only
    signatures: list[SignerResult] = field(default_factory=list)
    checked: bool = True


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
    r = _run(args, der)
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


def verify(sig_der: bytes, content: bytes | None, ca_file: Path,
           crl_file: Path | None = None) -> Verification:
    """Verify a detached (content given) or opaque (content None) signature.

    Each SignerInfo is checked by its own `openssl cms -verify` (one call would
    stop at the first bad one and name no signer), and its signer is the
    certificate openssl matched to it, not any certificate the message carries.
    With `crl_file` the signer's certificate is checked against the CRLs in it
    (`-crl_check`): revoked → invalid, and so is a signer whose CA has no CRL
    there or whose CRL has expired, as openssl decides.

    An openssl that gives no answer (past TIMEOUT, or not started) gives no verdict:
    that SignerInfo is not checked, and so is every one after it, without starting
    openssl again (a hanging openssl would cost a timeout per call).
    """
    results: list[SignerResult] = []
    out = b""
    no_answer = ""        # why openssl gave no answer, once it did not
    with tempfile.TemporaryDirectory(prefix="dg-smime-") as tmp:
        d = Path(tmp)
        problem = "" if ca_file.exists() else f"no CA trust store ({ca_file})"
        trust = ca_file
        if crl_file is not None and not problem:
            # `openssl cms` has no -CRLfile: CRLs are read from the -CAfile file.
            trust = d / "trust.pem"
            try:
                trust.write_bytes(ca_file.read_bytes() + b"\n" + crl_file.read_bytes())
            except OSError as exc:
                problem = f"cannot read the CRL file {crl_file}: {exc.strerror or exc}"
        data = None
        if content is not None:
            data = d / "content"
            data.write_bytes(content)
        for i, part in enumerate(cms_split_signers(sig_der)):
            if no_answer:          # openssl gave no answer for an earlier SignerInfo
                results.append(SignerResult(error=no_answer, checked=False))
                continue
            sig, signer = d / f"sig{i}.der", d / f"signer{i}.pem"
            sig.write_bytes(part)
            base = [OPENSSL, "cms", "-verify", "-inform", "DER", "-in", str(sig), "-binary",
                    "-signer", str(signer)] + (["-content", str(data)] if data else [])
            error, checked = problem, True
            r: subprocess.CompletedProcess[bytes] | None = None
            try:
                if not problem:
                    args = [*base, "-CAfile", str(trust), "-purpose", "smimesign"]
                    if crl_file is not None:
                        args.append("-crl_check")
                    r = _run(args)
                    error = "" if r.returncode == 0 else _verify_reason(r.stderr)
            except SmimeError as exc:
                no_answer = error = str(exc)
                checked = False
            if error:
                # Which certificate signed (and, opaque, the content so the message can
                # be read), without checking anything.
                try:
                    r = _run([*base, "-noverify", "-nosigs"])
                except SmimeError as exc:
                    no_answer, r = no_answer or str(exc), None
            if r is not None:
                out = out or (r.stdout if r.returncode == 0 else b"")
            results.append(_signer_result(signer, error, checked))
    valid = bool(results) and all(x.valid for x in results)
    return Verification(valid, list(dict.fromkeys(a for x in results for a in x.addresses)),
                        "; ".join(x.error for x in results if not x.valid),
                        content=out if content is None else b"", signatures=results,
                        checked=all(x.checked for x in results))


def _signer_result(signer_pem: Path, error: str, checked: bool = True) -> SignerResult:
    try:
        cert = x509.load_pem_x509_certificates(signer_pem.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return SignerResult(error=error or "signer certificate not found", checked=checked)
    return SignerResult(cert_addresses(cert), fingerprint(cert), cert.subject.rfc4514_string(),
                        not error, error, checked)


# ------------------------------------------------- CMS SignedData, one signer at a time

def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(start of contents, end of contents, end of element) of the BER element at pos."""
    p = pos + 1
    if data[pos] & 0x1F == 0x1F:             # high tag number
        while data[p] & 0x80:
            p += 1
        p += 1
    first = data[p]
    p += 1
    if first == 0x80:                        # indefinite length: up to end-of-contents
        if not data[pos] & 0x20:
            raise ValueError("indefinite length on a primitive element")
        q = p
        while data[q:q + 2] != b"\0\0":
            q = _tlv(data, q)[2]
        return p, q, q + 2
    if first & 0x80:
        n = first & 0x7F
        length, p = int.from_bytes(data[p:p + n], "big"), p + n
    else:
        length = first
    if p + length > len(data):
        raise ValueError("element runs past the end")
    return p, p + length, p + length


def _children(data: bytes, start: int, end: int) -> list[bytes]:
    out = []
    while start < end and data[start:start + 2] != b"\0\0":
        nxt = _tlv(data, start)[2]
        out.append(data[start:nxt])
        start = nxt
    return out


def _der(tag: int, contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return bytes([tag, n]) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + contents


def cms_split_signers(der: bytes) -> list[bytes]:
    """A ContentInfo with SignedData, once per SignerInfo with only that one in it.

    Everything else (certificates, CRLs, encapsulated content) is copied byte for
    byte, so each copy verifies exactly as its SignerInfo does in the original.
    One signer, or anything that does not parse as SignedData: [der] unchanged,
    for openssl to judge.
    """
    try:
        s, e, _ = _tlv(der, 0)
        oid, explicit = _children(der, s, e)[:2]
        s, e, _ = _tlv(explicit, 0)
        signed_data = _children(explicit, s, e)[0]
        s, e, _ = _tlv(signed_data, 0)
        fields = _children(signed_data, s, e)
        if signed_data[0] != 0x30 or len(fields) < 4 or fields[-1][0] != 0x31:
            return [der]
        s, e, _ = _tlv(fields[-1], 0)
        infos = _children(fields[-1], s, e)
    except (IndexError, ValueError, RecursionError):   # not ours to judge: openssl's
        return [der]
    if len(infos) < 2:
        return [der]
    head = b"".join(fields[:-1])
    return [_der(0x30, oid + _der(0xA0, _der(0x30, head + _der(0x31, si)))) for si in infos]


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
