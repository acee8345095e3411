"""Outbound signing and encryption: the "crypto" stage of the outbound pipeline.

Per queue `sign = none|smime|pgp` (with the key of the queue's system address)
and `encrypt = never|opportunistic|required`; a trusted client may override
both per message with X-Deskgate-Sign / X-Deskgate-Encrypt. Sign, then
encrypt. S/MIME: multipart/signed (detached, SHA-256) and enveloped-data
(AES-256-CBC). PGP: RFC 3156 PGP/MIME (sign+encrypt in one OpenPGP message when
both are PGP). The sender's own certificate/key is added as a recipient so the
stored copy stays readable by the helpdesk.

Encryption is per recipient: when one method has a usable key for every
recipient, one copy goes to all of them (preference: the signing method, then
S/MIME, then PGP). Otherwise the message is split into one copy per method, each
recipient taking the first method it has a key for. Under `opportunistic` the
recipients without a key get a plain copy (still signed when asked, logged);
`required` refuses the whole message (5xx at submission) unless every recipient
has a key, never sends it plain. Each copy becomes its own outbound queue row.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Any

from gateway.crypto import pgp, smime
from gateway.crypto.keystore import CryptoStores, KeyStoreError, PgpKey, SmimeEntry, stores_for
from gateway.crypto.pgpkeyring import GpgUnavailable
from gateway.errors import PermanentError, SmtpReply, TemporaryError
from gateway.outbound.context import OutboundCopy

SIGN = ("none", "smime", "pgp")
ENCRYPT = ("never", "opportunistic", "required")


class CryptoRefused(PermanentError):
    """The message cannot be signed/encrypted as the policy demands; never sent."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.reply = SmtpReply(554, "5.7.5", text[:400])


class CryptoUnavailable(TemporaryError):
    """gpg could not sign, encrypt or list the keys now (it timed out, could not be
    started, could not reach its agent): nothing is known against the message, so it
    is tried again later (a submission is answered 451, an auto-response built again
    on relay.retry), never refused or sent unprotected for it."""


@dataclass
class Protected:
    """One copy of a message as it goes out, and the recipients it goes to."""

    data: bytes
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)    # "addr (why)": plain for lack of a key


# ---------------------------------------------------------------- MIME plumbing


def _b64(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76)) + b"\r\n"


def _boundary() -> bytes:
    return b"----=_deskgate_" + secrets.token_hex(12).encode()


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """(outer header fields without Content-*/MIME-Version, the MIME entity)."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sep = data.find(b"\r\n\r\n")
    head, body = (data, b"") if sep < 0 else (data[:sep], data[sep + 4:])
    fields = re.split(rb"\r\n(?![ \t])", head) if head else []
    outer = [f for f in fields if not f.lower().startswith((b"content-", b"mime-version:"))]
    content = [f for f in fields if f.lower().startswith(b"content-")]
    if not any(f.lower().startswith(b"content-type:") for f in content):
        content.insert(0, b"Content-Type: text/plain; charset=" + (
            b"us-ascii" if body.isascii() else b"utf-8"))
    return outer, b"\r\n".join(content) + b"\r\n\r\n" + body


def seven_bit(entity: bytes) -> bytes:
    """Re-encode 8-bit leaf parts as base64: signed content must survive any relay."""
    if entity.isascii():
        return entity
    from gateway.outbound.rewrite import serialize

    msg = message_from_bytes(entity, policy=compat32)
    for part in msg.walk():
        if part.is_multipart():
            continue
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        del part["Content-Transfer-Encoding"]
        part.set_payload(base64.encodebytes(payload).decode("ascii"))
        part["Content-Transfer-Encoding"] = "base64"
    out = serialize(msg)
    # serialize() writes the entity as a message: it starts with the content headers.
    return out


def _multipart(ctype: bytes, first: bytes, second: bytes, boundary: bytes,
               preamble: bytes = b"") -> bytes:
    return (ctype + b'; boundary="' + boundary + b'"\r\n\r\n' + preamble
            + b"--" + boundary + b"\r\n" + first + b"\r\n--" + boundary + b"\r\n"
            + second + b"\r\n--" + boundary + b"--\r\n")


def smime_signed(entity: bytes, entry: SmimeEntry) -> bytes:
    sig = smime.sign(entity, entry.cert, entry.private_key(), entry.chain)
    return _multipart(
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b"micalg=sha-256", entity,
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n' + _b64(sig),
        _boundary(), b"This is an S/MIME signed message\r\n\r\n")


def smime_enveloped(entity: bytes, entries: list[SmimeEntry]) -> bytes:
    der = smime.encrypt(entity, [e.cert for e in entries])
    return (b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; '
            b'name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n' + _b64(der))


def pgp_signed(entity: bytes, stores: CryptoStores, key: PgpKey) -> bytes:
    sig = pgp.sign_detached(stores.pgp, entity, key)
    return _multipart(
        b'Content-Type: multipart/signed; micalg=pgp-sha256; '
        b'protocol="application/pgp-signature"', entity,
        b'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
        b"Content-Description: OpenPGP digital signature\r\n"
        b'Content-Disposition: attachment; filename="signature.asc"\r\n\r\n'
        + sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), _boundary(),
        b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n")


def pgp_encrypted(entity: bytes, stores: CryptoStores, keys: list[PgpKey],
                  signer: PgpKey | None) -> bytes:
    armored = pgp.encrypt(stores.pgp, entity, keys, signer)
    return _multipart(
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"',
        b"Content-Type: application/pgp-encrypted\r\n"
        b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n",
        b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
        b"Content-Description: OpenPGP encrypted message\r\n"
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n'
        + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), _boundary(),
        b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n")


# ---------------------------------------------------------------- keys


def _smime_recipient(stores: CryptoStores, addr: str) -> tuple[SmimeEntry | None, str]:
    found = stores.smime.find(addr)
    usable = [e for e in found if e.usable]
    if usable:
        return usable[0], ""
    if found:
        return None, f"{addr} ({found[0].unusable_reason})"
    return None, f"{addr} (no certificate)"


def _pgp_recipient(stores: CryptoStores, addr: str) -> tuple[PgpKey | None, str]:
    # Every key of the address, not only those gpg lists as able to encrypt: a revoked
    # or expired key loses its encryption capability, and the reason is what the
    # admin needs to read.
    found = stores.pgp.find(addr) if stores.pgp.available() else []
    usable = [k for k in found if k.usable and k.can_encrypt]
    if usable:
        return usable[0], ""
    why = next((k.unusable_reason for k in found if k.unusable_reason), "")
    if why:
        return None, f"{addr} ({why})"
    if found:
        return None, f"{addr} (key cannot encrypt)"
    return None, f"{addr} (no key)"


def _smime_signer(stores: CryptoStores, sender: str) -> SmimeEntry:
    found = [e for e in stores.smime.find(sender, private=True)]
    usable = [e for e in found if e.usable]
    if not usable:
        why = (found[0].unusable_reason if found
               else "no certificate with a private key")
        raise CryptoRefused(f"cannot sign: {why} for {sender}")
    return usable[0]


def _pgp_signer(stores: CryptoStores, sender: str) -> PgpKey:
    found = stores.pgp.find(sender, secret=True) if stores.pgp.available() else []
    usable = [k for k in found if k.usable and k.can_sign]
    if not usable:
        why = next((k.unusable_reason for k in found if k.unusable_reason), "")
        raise CryptoRefused(f"cannot sign: no usable PGP secret key for {sender}"
                            + (f" ({why})" if why else ""))
    return usable[0]


# ---------------------------------------------------------------- policy


@dataclass
class Group:
    """Recipients that get the same copy: encrypted with `method`, or plain ("")."""

    method: str
    recipients: list[str] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # plain: why, per recipient


def _order(sign: str) -> list[str]:
    """Encryption methods by preference: the signing method first."""
    return [sign] + [m for m in ("smime", "pgp") if m != sign] if sign != "none" \
        else ["smime", "pgp"]


def _reason(reasons: list[str]) -> str:
    """Why a recipient has no usable key, from each method's answer in preference
    order: a key that exists but may not be used (revoked, expired, disabled, not yet
    valid) says more than another method's "no key"."""
    return next((r for r in reasons if not r.endswith(("(no certificate)", "(no key)"))),
                reasons[0])


def partition(stores: CryptoStores, sign: str, recipients: list[str]) -> list[Group]:
    """Recipients grouped by encryption method; the plain group (if any) comes last.

    A method every recipient has a usable key for makes one group (one copy for
    all). Otherwise each recipient takes the first method in preference order it
    has a key for, and those with none form the plain group.
    """
    order = _order(sign)
    found: dict[tuple[str, str], tuple[Any, str]] = {}

    def key(method: str, addr: str) -> tuple[Any, str]:
        if (method, addr) not in found:
            found[method, addr] = (_smime_recipient if method == "smime"
                                   else _pgp_recipient)(stores, addr)
        return found[method, addr]

    def add(g: Group, addr: str, k: Any) -> None:
        g.recipients.append(addr)
        if k not in g.keys:
            g.keys.append(k)

    for m in order:
        if all(key(m, r)[0] is not None for r in recipients):
            whole = Group(m)
            for r in recipients:
                add(whole, r, key(m, r)[0])
            return [whole]
    groups = {m: Group(m) for m in order}
    plain = Group("")
    for r in recipients:
        m = next((m for m in order if key(m, r)[0] is not None), "")
        if m:
            add(groups[m], r, key(m, r)[0])
        else:
            plain.recipients.append(r)
            plain.missing.append(_reason([key(m, r)[1] for m in order]))
    return [g for g in (*groups.values(), plain) if g.recipients]


def protect_copies(data: bytes, stores: CryptoStores, sender: str, recipients: list[str],
                   sign: str = "none", encrypt: str = "never") -> list[Protected]:
    """Sign and/or encrypt a whole message, one copy per recipient group. Blocking.

    Encrypted copies come first, each also to the sender's own certificate/key.
    Under `opportunistic` recipients without a usable key get a plain copy (signed
    when `sign` asks for it); `required` refuses unless every recipient has one.
    CryptoRefused for a key or policy problem, CryptoUnavailable when gpg gave no
    answer (try again later).
    """
    try:
        return _protect_copies(data, stores, sender, recipients, sign, encrypt)
    except GpgUnavailable as exc:        # also while looking the keys up
        raise CryptoUnavailable(str(exc)) from None


def _protect_copies(data: bytes, stores: CryptoStores, sender: str, recipients: list[str],
                    sign: str, encrypt: str) -> list[Protected]:
    if sign not in SIGN or encrypt not in ENCRYPT:
        raise CryptoRefused(f"unknown crypto policy sign={sign!r} encrypt={encrypt!r}")
    groups = partition(stores, sign, recipients) if encrypt != "never" \
        else [Group("", list(recipients))]
    copies = [Protected(data, {"signed": False, "encrypted": False, "method": "", "signer": ""},
                        recipients=list(g.recipients), missing=list(g.missing))
              for g in groups]
    for g, out in zip(groups, copies, strict=True):
        if g.missing:
            text = "no usable key for " + ", ".join(g.missing)
            if encrypt == "required":
                raise CryptoRefused(f"encryption required but {text}; not sent")
            out.notes.append(f"not encrypted: {text}")
    if sign == "none" and not any(g.method for g in groups):
        return copies           # nothing to do: the message goes as submitted
    outer, entity = split_message(data)
    entity = seven_bit(entity)
    head = b"\r\n".join([*outer, b"MIME-Version: 1.0"]) + b"\r\n"
    try:
        sign_entity = _signed_entity(stores, sender, sign, entity)
        for g, out in zip(groups, copies, strict=True):
            if g.method == "pgp" and sign == "pgp":
                # Signed and encrypted in one OpenPGP message.
                body = _encrypted(stores, sender, g, entity, sign_entity.pgp_key)
            elif g.method:
                body = _encrypted(stores, sender, g, sign_entity(), None)
            elif sign != "none":
                body = sign_entity()
            else:
                continue        # a plain copy of an unsigned message: as submitted
            if sign != "none":
                out.info.update(signed=True, signer=sender)
            out.info.update(encrypted=bool(g.method), method=g.method or sign)
            out.data = head + body
    except GpgUnavailable:
        raise
    except pgp.PgpError as exc:
        if exc.temporary:
            raise CryptoUnavailable(str(exc)) from None
        raise CryptoRefused(str(exc)) from None
    except (smime.SmimeError, KeyStoreError) as exc:
        raise CryptoRefused(str(exc)) from None
    return copies


class _SignedEntity:
    """The entity signed by the sender, made once and only when a copy needs it."""

    def __init__(self, stores: CryptoStores, entity: bytes, smime_entry: SmimeEntry | None,
                 pgp_key: PgpKey | None) -> None:
        self.stores, self.entity = stores, entity
        self.smime_entry, self.pgp_key = smime_entry, pgp_key
        self.signed: bytes | None = None

    def __call__(self) -> bytes:
        if self.signed is None:
            if self.smime_entry is not None:
                self.signed = smime_signed(self.entity, self.smime_entry)
            elif self.pgp_key is not None:
                self.signed = pgp_signed(self.entity, self.stores, self.pgp_key)
            else:
                self.signed = self.entity
        return self.signed


def _signed_entity(stores: CryptoStores, sender: str, sign: str, entity: bytes
                   ) -> _SignedEntity:
    """The sender's signing key looked up now: a missing one refuses the whole message."""
    return _SignedEntity(stores, entity,
                         _smime_signer(stores, sender) if sign == "smime" else None,
                         _pgp_signer(stores, sender) if sign == "pgp" else None)


def _encrypted(stores: CryptoStores, sender: str, g: Group, entity: bytes,
               pgp_signer: PgpKey | None) -> bytes:
    """The entity encrypted to the group's keys and the sender's own."""
    if g.method == "smime":
        own = [e for e in stores.smime.find(sender, private=True) if e.usable][:1]
        return smime_enveloped(entity, g.keys + [e for e in own if e not in g.keys])
    own_keys = [k for k in stores.pgp.find(sender, secret=True, encrypt=True)
                if k.usable][:1] if stores.pgp.available() else []
    return pgp_encrypted(entity, stores, g.keys + [k for k in own_keys if k not in g.keys],
                         pgp_signer)


def as_message(data: bytes) -> Message:
    """A Message whose serialisation gives back `data` byte for byte (body kept opaque)."""
    msg = message_from_bytes(data, policy=compat32)
    sep = data.find(b"\r\n\r\n")
    msg.set_payload(data[sep + 4:].decode("ascii", "surrogateescape"))
    return msg


def crypto_stage(ctx: Any, rt: Any) -> None:
    """Outbound pipeline stage (between rewrite and DKIM)."""
    from gateway.outbound.rewrite import serialize

    if ctx.kind == "dsn" or ctx.msg is None:
        return
    q = ctx.queue_config
    sign = (ctx.params.get("Sign") or (q.sign if q else "none")).strip().lower()
    encrypt = (ctx.params.get("Encrypt") or (q.encrypt if q else "never")).strip().lower()
    if q is not None and q.encrypt == "required" and encrypt in ("never", "opportunistic"):
        # A queue's `required` is a floor: a message may ask for more, never for less,
        # or one header would send plain what the admin said must not go plain.
        ctx.log.log("Notice", "Crypto", f"X-Deskgate-Encrypt: {encrypt} not followed: "
                    f"queue {q.name} requires encryption")
        encrypt = "required"
    if sign == "none" and encrypt == "never":
        return
    stores = rt.crypto if isinstance(rt.crypto, CryptoStores) else stores_for(rt.config)
    sender = ctx.from_email or ""
    try:
        copies = protect_copies(serialize(ctx.msg), stores, sender, list(ctx.recipients),
                                sign, encrypt)
    except CryptoRefused as exc:
        ctx.log.log("Error", "Crypto", str(exc))
        raise
    except CryptoUnavailable as exc:
        ctx.log.log("Warn", "Crypto", f"{exc}; not sent now, tried again later")
        raise
    for c in copies:
        for n in c.notes:
            ctx.log.log("Notice", "Crypto", n)
    ctx.msg = as_message(copies[0].data)
    ctx.crypto = dict(copies[0].info)
    prefix = f"sign={sign} encrypt={encrypt}: " + ("signed " if ctx.crypto["signed"] else "")
    if len(copies) == 1:
        ctx.log.log("Info", "Crypto", prefix + (f"encrypted ({ctx.crypto['method']})"
                                                if ctx.crypto["encrypted"] else "not encrypted"))
        return
    ctx.copies = [OutboundCopy(c.recipients, ctx.msg if i == 0 else as_message(c.data),
                               crypto=dict(c.info)) for i, c in enumerate(copies)]
    ctx.crypto = article_crypto(copies)
    ctx.log.log("Info", "Crypto", prefix + f"{len(copies)} copies: " + "; ".join(
        f"encrypted ({c.info['method']}) for " + ", ".join(c.recipients) if c.info["encrypted"]
        else "plain for " + ", ".join(c.missing or c.recipients) for c in copies))


def article_crypto(copies: list[Protected]) -> dict[str, Any]:
    """What the outgoing article records when its copies differ: encrypted only when
    every copy is, and who got which copy."""
    first = copies[0].info
    return {"signed": first["signed"], "signer": first["signer"],
            "encrypted": all(c.info["encrypted"] for c in copies),
            "method": "+".join(dict.fromkeys(c.info["method"] for c in copies
                                             if c.info["method"])),
            "copies": [{"recipients": c.recipients, "encrypted": c.info["encrypted"],
                        "method": c.info["method"]} for c in copies]}
