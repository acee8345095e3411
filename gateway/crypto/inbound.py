"""The inbound "decrypt" prepare stage (runs on a worker thread, before "trust").

Layers are peeled from the outside in, at most MAX_LAYERS deep: S/MIME
enveloped-data, S/MIME signed (multipart/signed detached or opaque
signed-data), PGP/MIME encrypted and signed (RFC 3156); then inline PGP in the
text body. The bodies and attachments are re-extracted from the innermost MIME
entity. Nothing here raises: a failure is recorded in ctx.crypto.error with a
Warn in the communication log, and the message goes on as received.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32

import structlog

from gateway.crypto import pgp, smime
from gateway.crypto.keystore import CryptoStores, SmimeEntry, stores_for
from gateway.crypto.pgpkeyring import GpgUnavailable
from gateway.inbound.parse import addresses, decode_bytes, extract_bodies, part_filename
from gateway.inbound.pipeline import Offload, inline_budget
from gateway.model import Crypto, Envelope, MessageContext
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_LAYERS = 4
SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
SMIME_SIG = ("application/pkcs7-signature", "application/x-pkcs7-signature")
PGP_BEGIN_MSG = "-----BEGIN PGP MESSAGE-----"
PGP_END_MSG = "-----END PGP MESSAGE-----"
PGP_BEGIN_SIGNED = "-----BEGIN PGP SIGNED MESSAGE-----"
PGP_END_SIG = "-----END PGP SIGNATURE-----"


def canonical(data: bytes) -> bytes:
    """CRLF line endings everywhere (the form signatures are computed over)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def first_part_bytes(raw: bytes, boundary: str) -> bytes | None:
    """The exact bytes of the first body part of the multipart with this boundary.

    Boundaries are unique within a message, so this finds the part at any depth
    without re-serialising it (re-serialising would change what was signed).
    """
    b = re.escape(boundary.encode("utf-8", "surrogateescape"))
    m = re.search(rb"(?:^|\n)--" + b + rb"[ \t]*\r?\n", raw)
    if not m:
        return None
    start = m.end()
    end = re.search(rb"\r?\n--" + b, raw[start:])
    if not end:
        return None
    return raw[start:start + end.start()]


def _payload(part: Message | str) -> bytes:
    if isinstance(part, str):
        return part.encode("utf-8", "surrogateescape")
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


@dataclass
class Unwrapped:
    """The outcome of peeling the layers of one message."""

    crypto: Crypto = field(default_factory=Crypto)
    inner: Message | None = None          # innermost entity when it differs from the message
    notes: list[str] = field(default_factory=list)


class _Peeler:
    def __init__(self, stores: CryptoStores, candidates: list[str], from_email: str) -> None:
        self.stores = stores
        self.candidates = candidates      # system addresses first, then other recipients
        self.from_email = from_email
        self.out = Unwrapped()
        self._no_address: list[str] = []     # good signatures whose key names no address

    # ------------------------------------------------------------ results

    def fail(self, text: str) -> None:
        c = self.out.crypto
        c.error = f"{c.error}; {text}" if c.error else text

    def _signature(self, method: str, valid: bool, signers: list[str], error: str) -> None:
        """One signature known by its signers' addresses (S/MIME, or no key store)."""
        self._signatures(method, [pgp.PgpSignature("", "", signers, valid, error)])

    def _smime_signatures(self, v: smime.Verification) -> None:
        """Every SignerInfo of an S/MIME signature, each with its certificate."""
        self._signatures("smime", [
            pgp.PgpSignature("", s.fingerprint, s.addresses, s.valid, s.error, s.subject,
                             checked=s.checked)
            for s in v.signatures] or [pgp.PgpSignature("", "", v.signers, v.valid, v.error,
                                                        checked=v.checked)])

    def _signatures(self, method: str, sigs: list[pgp.PgpSignature]) -> None:
        """Record every signature of one layer or block; finish() gives the verdict."""
        c = self.out.crypto
        c.signed = True
        c.method = c.method or method
        for s in sigs:
            signer = self.from_email if self.from_email in s.signers else (
                s.signers[0] if s.signers else "")
            # null: gpg or openssl gave no verdict (it did not answer), which is not a
            # bad signature
            c.signatures.append({"method": method, "signer": signer, "key_id": s.key_id,
                                 "fingerprint": s.fingerprint,
                                 "valid": s.valid if s.checked else None, "error": s.error})
            if not s.checked:
                self.fail(f"signature not checked: {s.error}")
                self.out.notes.append(f"{method} signature: not checked")
                continue
            if s.valid and not s.signers:
                self._no_address.append(_described(method, s))
            if not s.valid:
                who = signer or (f"key {s.key_id}" if s.key_id else "") or (
                    _described(method, s) if s.name else "")
                error = s.error or "signature invalid"
                if len(sigs) > 1 and who and not (s.key_id and s.key_id in error):
                    error += f" ({who})"
                self.fail(f"signature invalid: {error}")
            self.out.notes.append(f"{method} signature: "
                                  + ("valid" if s.valid else "not valid")
                                  + (f" (signer {signer})" if signer else ""))

    def finish(self) -> Unwrapped:
        """The message's verdict over every signature recorded.

        Valid only when every signature is good and one of them is the sender's
        (From); a signature that cannot be checked (no public key) is not good, and
        one by a key or certificate without an e-mail address is nobody's. Unknown
        (None, "not verified") when gpg or openssl gave no verdict on one and none
        is bad.
        """
        c = self.out.crypto
        if not c.signatures:
            return self.out
        signers = list(dict.fromkeys(s["signer"] for s in c.signatures if s["signer"]))
        c.signer = self.from_email if self.from_email in signers else (
            signers[0] if signers else "")
        if any(s["valid"] is False for s in c.signatures):
            c.signature_valid = False
        elif any(s["valid"] is None for s in c.signatures):
            c.signature_valid = None
        elif not (self.from_email and self.from_email in signers):
            c.signature_valid = False
            by = ([f"signed by {', '.join(signers)}"] if signers else []) + [
                f"{who} has no e-mail address" for who in dict.fromkeys(self._no_address)]
            self.fail(f"signature valid, signer mismatch ({'; '.join(by)}, "
                      f"From is {self.from_email or 'empty'})")
        else:
            c.signature_valid = True
        return self.out

    # ------------------------------------------------------------ layers

    def peel(self, raw: bytes, msg: Message) -> None:
        top = msg
        for _ in range(MAX_LAYERS):
            step = self._step(raw, msg)
            if step is None:
                break
            raw, msg = step
        if msg is not top:
            self.out.inner = msg

    def _step(self, raw: bytes, msg: Message) -> tuple[bytes, Message] | None:
        ctype = msg.get_content_type()
        if ctype in SMIME_TYPES or (ctype == "application/octet-stream"
                                    and part_filename(msg).lower().endswith(".p7m")):
            return self._smime_mime(msg)
        if ctype == "multipart/signed":
            return self._multipart_signed(raw, msg)
        if ctype == "multipart/encrypted" and \
                str(msg.get_param("protocol") or "").lower() == "application/pgp-encrypted":
            return self._pgp_encrypted(msg)
        return None

    def _smime_mime(self, msg: Message) -> tuple[bytes, Message] | None:
        kind = str(msg.get_param("smime-type") or "").lower()
        der = _payload(msg)
        c = self.out.crypto
        if kind in ("signed-data", "signeddata"):
            v = smime.verify(der, None, self.stores.smime.ca_file,
                             self.stores.smime.crl_file)
            self._smime_signatures(v)
            return _parsed(v.content) if v.content else None
        if kind not in ("enveloped-data", "envelopeddata", "authenveloped-data", ""):
            return None   # compressed-data, certs-only: left as they are
        c.encrypted, c.method = True, c.method or "smime"
        entries = self._smime_keys()
        try:
            inner = smime.decrypt(der, entries)
        except smime.SmimeError as exc:
            self.fail(f"S/MIME: {exc}")
            return None
        c.decrypted = True
        self.out.notes.append("S/MIME decrypted")
        return _parsed(inner)

    def _smime_keys(self) -> list[SmimeEntry]:
        seen: set[str] = set()
        out: list[SmimeEntry] = []
        for addr in self.candidates:
            for e in self.stores.smime.find(addr, private=True):
                if e.fingerprint not in seen:
                    seen.add(e.fingerprint)
                    out.append(e)
        return out

    def _multipart_signed(self, raw: bytes, msg: Message) -> tuple[bytes, Message] | None:
        protocol = str(msg.get_param("protocol") or "").lower()
        parts = msg.get_payload()
        if not isinstance(parts, list) or len(parts) != 2:
            self.fail("multipart/signed without exactly two parts")
            return None
        boundary = msg.get_boundary()
        content = first_part_bytes(raw, boundary) if boundary else None
        if content is None:
            self.fail("multipart/signed: signed part not found")
            return None
        content = canonical(content)
        sig = _payload(parts[1])
        if protocol in SMIME_SIG:
            v = smime.verify(sig, content, self.stores.smime.ca_file,
                             self.stores.smime.crl_file)
            self._smime_signatures(v)
        elif protocol == "application/pgp-signature":
            if not self.stores.pgp.available():
                self._signature("pgp", False, [], "no GnuPG key store")
            else:
                pv = pgp.verify_detached(self.stores.pgp, content, sig)
                self._signatures("pgp", pv.signatures)
        else:
            return None
        inner = parts[0]
        return (content, inner) if isinstance(inner, Message) else None

    def _pgp_encrypted(self, msg: Message) -> tuple[bytes, Message] | None:
        c = self.out.crypto
        c.encrypted, c.method = True, c.method or "pgp"
        parts = msg.get_payload()
        if not isinstance(parts, list) or len(parts) < 2:
            self.fail("PGP/MIME: multipart/encrypted without the encrypted part")
            return None
        try:
            inner, v = pgp.decrypt(self.stores.pgp, _payload(parts[1]), self.candidates)
        except pgp.PgpError as exc:
            self.fail(f"PGP: {exc}")
            return None
        c.decrypted = True
        self.out.notes.append("PGP/MIME decrypted")
        if v.signed:
            self._signatures("pgp", v.signatures)
        return _parsed(inner)

    # ------------------------------------------------------------ inline

    def inline(self, body: str) -> str | None:
        """Inline PGP in the text body: the new body text, or None when there is none.

        Text outside a signed block is not covered by its signature: it is framed
        as unsigned (see mark_unsigned) and the result records a partial signature.
        """
        if PGP_BEGIN_MSG in body:
            start = body.index(PGP_BEGIN_MSG)
            end = body.find(PGP_END_MSG, start)
            if end < 0:
                return None
            end += len(PGP_END_MSG)
            c = self.out.crypto
            c.encrypted, c.method = True, c.method or "pgp"
            try:
                plain, v = pgp.decrypt(self.stores.pgp, body[start:end].encode("utf-8"),
                                       self.candidates)
            except pgp.PgpError as exc:
                self.fail(f"PGP: {exc}")
                return None
            c.decrypted = True
            self.out.notes.append("inline PGP decrypted")
            if v.signed:
                self._signatures("pgp", v.signatures)
            text = decode_bytes(plain, "utf-8")
            if PGP_BEGIN_SIGNED in text:
                text = self.inline(text) or text
            if not v.signed:
                return body[:start] + text + body[end:]
            return self._assemble([(body[:start], False), (text, True), (body[end:], False)])
        if PGP_BEGIN_SIGNED in body and PGP_END_SIG in body:
            pieces: list[tuple[str, bool]] = []
            pos = 0
            while (start := body.find(PGP_BEGIN_SIGNED, pos)) >= 0:
                end = body.find(PGP_END_SIG, start)
                if end < 0:
                    break
                end += len(PGP_END_SIG)
                block = body[start:end]
                if not self.stores.pgp.available():
                    self._signature("pgp", False, [], "no GnuPG key store")
                else:
                    pv = pgp.verify_clearsigned(self.stores.pgp, block.encode("utf-8"))
                    self._signatures("pgp", pv.signatures)
                pieces += [(body[pos:start], False), (pgp.clearsigned_text(block), True)]
                pos = end
            if not pieces:
                return None
            return self._assemble([*pieces, (body[pos:], False)])
        return None

    def _assemble(self, pieces: list[tuple[str, bool]]) -> str:
        """The body from (text, signed) pieces; unsigned text that is not blank is framed."""
        if all(signed or not text.strip() for text, signed in pieces):
            return "".join(text for text, _ in pieces)
        self.out.crypto.partially_signed = True
        self.out.notes.append("only part of the body is signed (the rest is marked unsigned)")
        out = [text.strip("\r\n") if signed else mark_unsigned(text)
               for text, signed in pieces if signed or text.strip()]
        return "\n".join(out) + "\n"


def _described(method: str, s: pgp.PgpSignature) -> str:
    """A signing key or certificate as the error names it (it has no address to show)."""
    if method == "smime":
        return f"certificate {s.name or s.fingerprint or '(unknown)'}"
    return f"key {s.fingerprint or s.key_id or '(unknown)'}" + (f' "{s.name}"' if s.name else "")


UNSIGNED_BEGIN = "-----BEGIN UNSIGNED TEXT (not covered by the PGP signature)-----"
UNSIGNED_END = "-----END UNSIGNED TEXT-----"


def mark_unsigned(text: str) -> str:
    """Frame text that no signature covers, the way mail clients show it apart.

    Lines starting with five dashes are dash-escaped ("- ", as OpenPGP's cleartext
    does), so the unsigned text cannot close its own frame or fake an armor line.
    """
    lines = [("- " + ln) if ln.lstrip().startswith("-----") else ln
             for ln in text.strip("\r\n").splitlines()]
    return "\n".join([UNSIGNED_BEGIN, *lines, UNSIGNED_END])


def _parsed(data: bytes) -> tuple[bytes, Message]:
    data = canonical(data)
    return data, email.message_from_bytes(data, policy=compat32)


def decrypt_stage(ctx: MessageContext, rt: Runtime) -> None:
    """Decrypt and verify; fill ctx.crypto; re-extract bodies from the inner MIME."""
    p = ctx.parsed
    if p is None or not _may_have_crypto(p.msg, p.body):
        return
    if inline_budget() is not None:
        # On the event loop: may_need_crypto's cheap look missed it (a nested part, an
        # armored block inside base64). gpg and openssl are processes: start over on
        # the worker pool.
        raise Offload
    stores: CryptoStores = rt.crypto if isinstance(rt.crypto, CryptoStores) \
        else stores_for(rt.config)
    cfg = rt.config
    rcpts = list(ctx.envelope.recipients) + addresses(p.to_addr) + addresses(p.cc_addr)
    system = [a for a in dict.fromkeys(r for r in rcpts if r) if cfg.address_by_email(a)]
    others = [a for a in dict.fromkeys(r for r in rcpts if r) if a not in system]
    peeler = _Peeler(stores, system + others, p.from_email)
    outer_attachments = list(p.attachments)
    try:
        peeler.peel(canonical(ctx.envelope.raw), p.msg)
        if peeler.out.inner is not None:
            extract_bodies(peeler.out.inner, p)
        new_body = peeler.inline(p.body) if ("-----BEGIN PGP" in p.body) else None
        if new_body is not None:
            p.body = new_body
    except GpgUnavailable as exc:   # the key listing timed out or failed: say why
        log.warning("decrypt stage: gpg unavailable", error=str(exc), message_id=p.message_id)
        peeler.fail(f"PGP: {exc} ({pgp.REDECRYPT_LATER})")
    except Exception as exc:  # crypto trouble must never lose the message
        log.warning("decrypt stage failed", error=repr(exc), message_id=p.message_id)
        peeler.fail(f"{type(exc).__name__}: {exc}")
    c = peeler.finish().crypto
    ctx.crypto = c
    if not (c.encrypted or c.signed):
        return
    if c.decrypted:
        ctx.params["BodyDecrypted"] = p.body
        if not stores.store_decrypted_body:
            # Keep only the encrypted form in the article; filters still see the text.
            p.attachments = outer_attachments
    summary = ", ".join(peeler.out.notes) or "nothing decrypted or verified"
    ctx.log.log("Info", "Crypto", f"{c.method or 'crypto'}: {summary}")
    if c.error:
        ctx.log.log("Warn", "Crypto", c.error)
    if c.partially_signed:
        ctx.log.log("Warn", "Crypto", "only part of the body is signed: the text outside "
                    "the signed block is marked as unsigned text")
    ctx.trace.append(f"crypto: {summary}" + (f"; {c.error}" if c.error else ""))


def unwrap(raw: bytes, msg: Message, rt: Runtime, recipients: list[str],
           from_email: str) -> Unwrapped:
    """Peel the S/MIME/PGP layers of a stored message again (the helpdesk hand-off
    passes on the decrypted MIME, which the store does not keep)."""
    stores: CryptoStores = rt.crypto if isinstance(rt.crypto, CryptoStores) \
        else stores_for(rt.config)
    system = [a for a in recipients if rt.config.address_by_email(a)]
    peeler = _Peeler(stores, system + [a for a in recipients if a not in system], from_email)
    peeler.peel(canonical(raw), msg)
    return peeler.finish()


def _may_have_crypto(msg: Message, body: str) -> bool:
    """Cheap check so plain mail pays nothing."""
    for part in msg.walk():
        ct = part.get_content_type()
        if ct in SMIME_TYPES or ct in ("multipart/signed", "multipart/encrypted") or (
                ct == "application/octet-stream"
                and part_filename(part).lower().endswith(".p7m")):
            return True
        if part is not msg and not part.is_multipart():
            break    # only the top-level structure decides; deep parts are attachments
    return "-----BEGIN PGP" in body


def may_need_crypto(env: Envelope) -> bool:
    """Mail that may carry S/MIME or PGP is prepared on the worker pool (gpg is a process).

    This runs for every message, so it looks only where crypto usually shows: an
    armored PGP block in the raw bytes, and the top-level header block (lowercased,
    so only that is copied). What it misses (crypto in a nested part, an armored
    block inside base64) is still caught: the decrypt stage, when it finds crypto on
    the event loop, raises Offload and the message is prepared again on the worker
    pool.
    """
    raw = env.raw
    if b"-----BEGIN PGP" in raw:
        return True
    # S/MIME and PGP/MIME name themselves in the top-level Content-Type (protocol=...)
    end = raw.find(b"\n\r\n", 0, _HEAD_LOOK)
    lf = raw.find(b"\n\n", 0, end if end >= 0 else _HEAD_LOOK)
    head = raw[:lf if lf >= 0 else end if end >= 0 else _HEAD_LOOK].lower()
    return b"pkcs7" in head or b"pgp-" in head


# How much of a message without an empty line may_need_crypto reads as its header.
_HEAD_LOOK = 64 * 1024
