"""PGP primitives over python-gnupg (a gpg process per call: blocking, keep off the loop).

Keys are trusted as imported (`--trust-model always` in PgpStore): whoever may
import keys into the gateway's GnuPG home decides whom the gateway trusts.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.crypto import pgpkeyring
from gateway.crypto.keystore import PgpKey, PgpStore, timed_out
from gateway.crypto.pgpkeyring import GpgUnavailable


class PgpError(Exception):
    """Decryption, signing or encryption failed; the text says why (never a secret).

    `temporary`: gpg gave no verdict on the keys (it timed out, was killed, could not
    reach its agent): the same call may work later.
    """

    def __init__(self, text: str, *, temporary: bool = False) -> None:
        super().__init__(text)
        self.temporary = temporary


@dataclass
class PgpSignature:
    """One signature as gpg reported it (a message may carry several)."""

    key_id: str
    fingerprint: str = ""
    signers: list[str] = field(default_factory=list)     # addresses of the signing key
    valid: bool = False
    error: str = ""
    name: str = ""          # the key's first user id (an S/MIME certificate's subject)
    # False when gpg gave no verdict (timed out, could not be started, ended without a
    # status line): the signature is neither good nor bad, and error says why.
    checked: bool = True


@dataclass
class PgpVerification:
    """The signatures gpg found; valid only when there is one and every one is good.
    `checked` is False when gpg gave no verdict at all (see PgpSignature.checked)."""

    signed: bool
    valid: bool = False
    signers: list[str] = field(default_factory=list)
    fingerprint: str = ""
    error: str = ""
    signatures: list[PgpSignature] = field(default_factory=list)
    checked: bool = True


# Statuses python-gnupg records for a signature (GOODSIG, BADSIG, ERRSIG, EXPSIG,
# EXPKEYSIG, REVKEYSIG, NO_PUBKEY); a decryption records others (NO_SECKEY, ...).
_SIG_STATUSES = frozenset({"signature good", "signature valid", "signature bad",
                           "signature error", "signature expired", "no public key",
                           "signing key has expired", "signing key was revoked"})

# gpg's status keywords that give the verdict on one signature (doc/DETAILS in GnuPG).
_SIG_VERDICTS = {"GOODSIG": "", "BADSIG": "signature bad", "ERRSIG": "signature error",
                 "EXPSIG": "signature expired", "EXPKEYSIG": "signing key has expired",
                 "REVKEYSIG": "signing key was revoked"}
_STATUS = "[GNUPG:] "


def _has_signature(res: Any) -> bool:
    """Whether gpg reported a signature at all. A decryption result's key_id alone
    does not say so: python-gnupg sets it from ENC_TO (a key the message is
    encrypted to) and NO_SECKEY."""
    if getattr(res, "valid", False) or getattr(res, "signature_id", None) \
            or getattr(res, "sig_info", None):
        return True
    return any(p.get("status") in _SIG_STATUSES for p in getattr(res, "problems", None) or ())


def _status_signatures(stderr: str) -> list[dict[str, str]]:
    """Each signature's status lines from gpg's status output, one dict per signature.

    python-gnupg keeps only the last signature's verdict, so with several the
    answer would be whatever signature came last. gpg starts each with NEWSIG.
    """
    out: list[dict[str, str]] = []
    cur: dict[str, str] | None = None
    for line in stderr.splitlines():
        if not line.startswith(_STATUS):
            continue
        key, _, value = line[len(_STATUS):].partition(" ")
        parts = value.split()
        if key == "NEWSIG":
            cur = {}
            out.append(cur)
        elif key in _SIG_VERDICTS and parts:
            if cur is None or "verdict" in cur:       # no NEWSIG (older gpg)
                cur = {}
                out.append(cur)
            cur["verdict"], cur["key_id"] = key, parts[0].upper()
            if key == "ERRSIG":
                cur["rc"] = parts[5] if len(parts) > 5 else ""
                cur["fingerprint"] = parts[6].upper() if len(parts) > 6 else ""
        elif key == "VALIDSIG" and cur is not None and parts:
            # the primary key's fingerprint when a subkey made the signature
            cur["fingerprint"] = (parts[9] if len(parts) > 9 else parts[0]).upper()
            cur["validsig"] = "1"
    return [g for g in out if "verdict" in g]


def _signature(store: PgpStore, st: dict[str, str]) -> PgpSignature:
    key_id, fpr = st["key_id"], st.get("fingerprint", "")
    key: PgpKey | None = None
    if fpr:
        key = next((k for k in store.all_keys() if k.fingerprint == fpr), None) \
            or store.by_keyid(fpr[-16:])
    if key is None:
        key = store.by_keyid(key_id)
    verdict = st["verdict"]
    valid = verdict == "GOODSIG" and "validsig" in st
    error = "" if valid else _SIG_VERDICTS[verdict] or "signature invalid"
    if verdict == "ERRSIG" and (st.get("rc") == "9" or key is None):
        error = f"no public key for signer {key_id}"
    return PgpSignature(key_id, key.fingerprint if key else fpr,
                        list(key.addresses) if key else [], valid, error,
                        key.uids[0] if key and key.uids else "")


def _verification(store: PgpStore, res: Any) -> PgpVerification:
    """A python-gnupg Verify/Crypt result → our verdict on every signature in it."""
    found = _status_signatures(getattr(res, "stderr", "") or "")
    if not found:
        return _single_verification(store, res)
    sigs = [_signature(store, st) for st in found]
    bad = [s for s in sigs if not s.valid]
    return PgpVerification(True, not bad, list(dict.fromkeys(a for s in sigs for a in s.signers)),
                           sigs[0].fingerprint, "; ".join(s.error for s in bad), sigs)


def _single_verification(store: PgpStore, res: Any) -> PgpVerification:
    """The verdict from python-gnupg's fields alone (no status lines to read)."""
    if not _has_signature(res):
        return PgpVerification(signed=False)
    status = getattr(res, "status", "") or ""
    fpr = getattr(res, "pubkey_fingerprint", None) or getattr(res, "fingerprint", None) or ""
    key_id = getattr(res, "key_id", None) or ""
    key: PgpKey | None = None
    if fpr:
        key = next((k for k in store.all_keys() if k.fingerprint == fpr), None) \
            or store.by_keyid(fpr[-16:])
    elif key_id:
        key = store.by_keyid(key_id)
    signers = list(key.addresses) if key else []
    valid = bool(getattr(res, "valid", False)) and status in ("signature valid", "signature good",
                                                              "decryption ok")
    error = ""
    if not valid:
        key_status = getattr(res, "key_status", None) or ""
        if key_status:
            error = key_status
        elif status == "no public key" or (not key and not valid):
            error = f"no public key for signer {key_id or fpr}"
        elif "expired" in status or "revoked" in status:
            error = status
        elif status:
            error = status if status != "decryption ok" else "signature invalid"
        else:
            error = "signature invalid"
    fingerprint = key.fingerprint if key else fpr
    return PgpVerification(True, valid, signers, fingerprint, error,
                           [PgpSignature(key_id, fingerprint, signers, valid, error)])


def _candidates(store: PgpStore, prefer: list[str]) -> list[str | None]:
    """Passphrases to try: keys of the preferred addresses first, then the others."""
    keys = [k for k in store.all_keys() if k.secret]
    keys.sort(key=lambda k: 0 if any(a in prefer for a in k.addresses) else 1)
    out: list[str | None] = []
    for k in keys:
        pw = store.passphrase(k.fingerprint)
        if pw not in out:
            out.append(pw)
    return out or [None]


def decrypt(store: PgpStore, data: bytes, prefer: list[str]) -> tuple[bytes, PgpVerification]:
    """Decrypt (and verify an embedded signature); prefer the keys of these addresses."""
    if not store.available():
        raise PgpError("no GnuPG key store")
    last = None
    for pw in _candidates(store, prefer):
        res = store.gpg.decrypt(data, passphrase=pw,
                                extra_args=["--pinentry-mode", "loopback"])
        if _STATUS + "BADSIG " in (res.stderr or ""):
            return _decrypt_signed(store, data, pw)
        if res.ok:
            return res.data, _verification(store, res)
        last = res
        err = (res.stderr or "").lower()
        if not any(t in err for t in ("bad passphrase", "bad_passphrase", "missing_passphrase")):
            break       # another passphrase would not help
    assert last is not None
    raise _decrypt_error(last)


def _decrypt_signed(store: PgpStore, data: bytes, pw: str | None
                    ) -> tuple[bytes, PgpVerification]:
    """Decrypt a message whose signatures gpg stopped checking at a bad one.

    Decryption runs in batch mode (gpg reads a passphrase only then), and in batch
    mode gpg exits at the first bad signature: the signatures after it are never
    checked, and the decryption is not even reported as done. So the encryption
    layer alone is taken off (--unwrap, batch mode, passphrase) and the signed
    message inside is read again without batch mode, where gpg checks every
    signature. Only then: a message without a bad signature costs one gpg run.
    """
    unwrapped = store.gpg.decrypt(data, passphrase=pw,
                                  extra_args=["--pinentry-mode", "loopback", "--unwrap"])
    if not unwrapped.ok or not unwrapped.data:
        raise _decrypt_error(unwrapped)
    # Nothing is left to decrypt, so nothing may ask for a passphrase.
    res = store.gpg.decrypt(bytes(unwrapped.data),
                            extra_args=[*_VERIFY_ARGS, "--pinentry-mode", "error"])
    if cause := no_answer(res):
        raise PgpError(temporary_decrypt_text(cause), temporary=True)
    if _STATUS + "PLAINTEXT " not in (res.stderr or ""):
        raise PgpError("cannot decrypt: gpg did not read the signed message inside "
                       f"the encryption ({res.status or 'gpg failed'})")
    return bytes(res.data), _verdict(store, res)


def _timeout_text() -> str:
    return f"gpg did not answer within {pgpkeyring.GPG_TIMEOUT} s"


def no_answer(res: Any) -> str:
    """Why gpg gave no verdict, or "" when it did: it timed out, was killed by a
    signal, or exited non-zero without a single status line (it could not even start
    its work: a lock in the GnuPG home, an agent it cannot reach, a broken install).
    Such a failure says nothing about the message or the keys."""
    if timed_out(res):
        return _timeout_text()
    rc = getattr(res, "returncode", 0)
    err = getattr(res, "stderr", "") or ""
    if rc and (rc < 0 or _STATUS not in err):
        last = err.strip().splitlines()[-1:]
        return (f"gpg gave no answer (exit status {rc}"
                + (f": {last[0][:200]}" if last else "") + ")")
    return ""


# What an undecrypted message's error says when gpg gave no answer: it was not the
# message, and `deskgate tickets redecrypt` decrypts it once gpg answers again.
REDECRYPT_LATER = "temporary; deskgate tickets redecrypt can decrypt it later"


def temporary_decrypt_text(cause: str) -> str:
    return f"cannot decrypt now: {cause} ({REDECRYPT_LATER})"


def _decrypt_error(res: Any) -> PgpError:
    if cause := no_answer(res):
        return PgpError(temporary_decrypt_text(cause), temporary=True)
    return PgpError(_decrypt_reason(res))


def _decrypt_reason(res: Any) -> str:
    err = res.stderr or ""
    low = err.lower()
    if "bad passphrase" in low or "bad_passphrase" in low:
        return "cannot decrypt: wrong passphrase for the secret key"
    if "missing_passphrase" in low:
        return "cannot decrypt: the secret key is protected and no passphrase is stored"
    if "no_seckey" in low or "no secret key" in low:
        return "cannot decrypt: no secret key of a system address among the recipients"
    if "no valid openpgp data" in low or "nodata" in low:
        return "cannot decrypt: no OpenPGP data"
    return f"cannot decrypt: {res.status or 'gpg failed'}"


# In batch mode (python-gnupg always passes --batch) gpg exits at the first bad
# signature, so the signatures after it would never be checked or reported. A
# verification asks nothing (and --no-tty forbids it), so batch mode is turned
# off again for it; decryption keeps it (a passphrase is only read in batch mode).
_VERIFY_ARGS = ["--no-batch"]


def verify_detached(store: PgpStore, content: bytes, signature: bytes) -> PgpVerification:
    try:
        with tempfile.TemporaryDirectory(prefix="dg-pgp-") as tmp:
            sig = Path(tmp) / "sig.asc"
            sig.write_bytes(signature)
            res = store.gpg.verify_data(str(sig), content, extra_args=_VERIFY_ARGS)
        return _verdict(store, res)
    except GpgUnavailable as exc:      # gpg not started, or the key listing failed
        return unchecked(str(exc))


def verify_clearsigned(store: PgpStore, text: bytes) -> PgpVerification:
    try:
        return _verdict(store, store.gpg.verify(text, extra_args=_VERIFY_ARGS))
    except GpgUnavailable as exc:
        return unchecked(str(exc))


def unchecked(cause: str) -> PgpVerification:
    """A signature gpg gave no verdict on: not valid, not invalid; cause says why."""
    return PgpVerification(True, False, error=cause, checked=False,
                           signatures=[PgpSignature("", error=cause, checked=False)])


def _verdict(store: PgpStore, res: Any) -> PgpVerification:
    """The verdict on a signature checked on its own (there is one, whatever gpg said)."""
    if cause := no_answer(res):
        return unchecked(cause)
    v = _verification(store, res)
    v.signed = True
    if not v.valid and not v.error:
        v.error = "signature invalid"
    if not v.signatures:
        v.signatures = [PgpSignature("", v.fingerprint, list(v.signers), v.valid, v.error)]
    return v


def clearsigned_text(text: str) -> str:
    """The cleartext of a `-----BEGIN PGP SIGNED MESSAGE-----` block (dash-unescaped)."""
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines)
                     if ln.strip() == "-----BEGIN PGP SIGNED MESSAGE-----")
        sig = next(i for i, ln in enumerate(lines) if i > start
                   and ln.strip() == "-----BEGIN PGP SIGNATURE-----")
    except StopIteration:
        return text
    i = start + 1
    while i < sig and lines[i].strip():      # armor headers (Hash: ...)
        i += 1
    body = [ln[2:] if ln.startswith("- ") else ln for ln in lines[i + 1:sig]]
    return "\n".join(lines[:start] + body)


# ---------------------------------------------------------------- outbound


def sign_detached(store: PgpStore, content: bytes, key: PgpKey) -> bytes:
    res = store.gpg.sign(content, keyid=key.fingerprint, passphrase=store.passphrase(
        key.fingerprint), detach=True, extra_args=["--pinentry-mode", "loopback",
                                                    "--digest-algo", "SHA256"])
    if not res.data:
        raise PgpError(f"cannot sign with {key.fingerprint}: " + _sign_reason(res),
                       temporary=_temporary(res))
    return bytes(res.data)


def _sign_reason(res: Any) -> str:
    if timed_out(res):
        return _timeout_text()
    if _temporary(res):
        # gpg's own words: without its agent gpg also says "No secret key".
        return _failure_text(res) or res.status or "gpg failed"
    low = (res.stderr or "").lower()
    if "bad passphrase" in low or "bad_passphrase" in low:
        return "wrong passphrase"
    if "no secret key" in low or "no_seckey" in low:
        return "no secret key"
    return _failure_text(res) or res.status or "gpg failed"


# gpg error codes (libgpg-error, the low 16 bits of a FAILURE/ERROR status code) that
# are about a key or recipient itself: another try gives the same answer. Any other
# failure (no agent, an IPC error, a timeout, gpg killed) is temporary.
_KEY_ERRORS = frozenset({
    6, 7, 9, 11, 16, 17,   # bad public/secret key, no public key, bad passphrase,
                           # no user id, no secret key
    37, 53, 54, 58,        # invalid user id, unusable public/secret key, no data (no
                           # usable key for a recipient)
    94, 101, 107, 125,     # certificate revoked/expired, ambiguous name, wrong key usage
    153, 177, 181, 220,    # key expired, no passphrase, missing key, no name
})


def _failure_codes(res: Any) -> list[int]:
    """The error codes of gpg's FAILURE and ERROR status lines."""
    out = []
    for line in (getattr(res, "stderr", "") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == _STATUS.strip() and \
                parts[1] in ("FAILURE", "ERROR") and parts[3].isdigit():
            out.append(int(parts[3]) & 0xFFFF)
    return out


def _failure_text(res: Any) -> str:
    """gpg's own last words on the failure ("signing failed: No agent running")."""
    lines = [ln[5:].strip() for ln in (getattr(res, "stderr", "") or "").splitlines()
             if ln.startswith("gpg: ") and "failed: " in ln]
    return lines[-1] if lines else ""


def _temporary(res: Any) -> bool:
    """Whether a failed sign/encrypt says nothing about the keys, so a later try may
    work: a timeout, or no FAILURE/ERROR code that is a key problem."""
    if timed_out(res):
        return True
    low = (getattr(res, "stderr", "") or "").lower()
    if "bad_passphrase" in low or "missing_passphrase" in low:
        return False
    return not any(c in _KEY_ERRORS for c in _failure_codes(res))


def encrypt(store: PgpStore, content: bytes, recipients: list[PgpKey],
            signer: PgpKey | None = None) -> bytes:
    """Armored OpenPGP message to the recipients, signed inside when signer is given."""
    kw: dict[str, Any] = {"armor": True, "always_trust": True,
                          "extra_args": ["--pinentry-mode", "loopback"]}
    if signer is not None:
        kw["sign"] = signer.fingerprint
        kw["passphrase"] = store.passphrase(signer.fingerprint)
        kw["extra_args"] += ["--digest-algo", "SHA256"]
    res = store.gpg.encrypt(content, [k.fingerprint for k in recipients], **kw)
    if not res.ok:
        raise PgpError("cannot encrypt: " + (_sign_reason(res) if signer or timed_out(res) else
                                             (res.status or _failure_text(res)
                                              or "gpg failed")), temporary=_temporary(res))
    return bytes(res.data)
