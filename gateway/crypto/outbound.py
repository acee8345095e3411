"""Outbound signing and encryption: the "crypto" stage of the outbound pipeline.

Per queue `sign = none|smime|pgp` (with the key of the queue's system address)
and `encrypt = never|opportunistic|required`; a trusted client may override
both per message with X-Deskgate-Sign / X-Deskgate-Encrypt. Sign, then
encrypt. S/MIME: multipart/signed (detached, SHA-256) and enveloped-data
(AES-256-CBC). PGP: RFC 3156 PGP/MIME (sign+encrypt in one OpenPGP message when
both are PGP). The sender's own certificate/key is added as a recipient so the
stored copy stays readable by the helpdesk.

One message goes to all its recipients, so encryption happens when every
recipient has a usable key of one method; `opportunistic` otherwise sends it
unencrypted (logged), `required` refuses it (5xx at submission), never plain.
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
from gateway.errors import PermanentError, SmtpReply

SIGN = ("none", "smime", "pgp")
ENCRYPT = ("never", "opportunistic", "required")


class CryptoRefused(PermanentError):
    """The message cannot be signed/encrypted as the policy demands; never sent."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.reply = SmtpReply(554, "5.7.5", text[:400])


@dataclass
class Protected:
    data: bytes
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
    usable = [e for e in found if not e.expired]
    if usable:
        return usable[0], ""
    if found:
        return None, f"{addr} (certificate expired {found[0].not_after:%Y-%m-%d})"
    return None, f"{addr} (no certificate)"


def _pgp_recipient(stores: CryptoStores, addr: str) -> tuple[PgpKey | None, str]:
    found = stores.pgp.find(addr, encrypt=True) if stores.pgp.available() else []
    usable = [k for k in found if k.usable]
    if usable:
        return usable[0], ""
    if found:
        return None, f"{addr} (key {'revoked' if found[0].revoked else 'expired'})"
    return None, f"{addr} (no key)"


def _recipients(stores: CryptoStores, method: str, rcpts: list[str]
                ) -> tuple[list[Any], list[str]]:
    keys: list[Any] = []
    missing: list[str] = []
    for r in rcpts:
        k, why = (_smime_recipient if method == "smime" else _pgp_recipient)(stores, r)
        if k is None:
            missing.append(why)
        elif k not in keys:
            keys.append(k)
    return keys, missing


def _smime_signer(stores: CryptoStores, sender: str) -> SmimeEntry:
    found = [e for e in stores.smime.find(sender, private=True)]
    usable = [e for e in found if not e.expired]
    if not usable:
        why = (f"its certificate expired {found[0].not_after:%Y-%m-%d}" if found
               else "no certificate with a private key")
        raise CryptoRefused(f"cannot sign: {why} for {sender}")
    return usable[0]


def _pgp_signer(stores: CryptoStores, sender: str) -> PgpKey:
    found = stores.pgp.find(sender, secret=True, sign=True) if stores.pgp.available() else []
    usable = [k for k in found if k.usable]
    if not usable:
        raise CryptoRefused(f"cannot sign: no usable PGP secret key for {sender}")
    return usable[0]


# ---------------------------------------------------------------- policy


def protect(data: bytes, stores: CryptoStores, sender: str, recipients: list[str],
            sign: str = "none", encrypt: str = "never") -> Protected:
    """Sign and/or encrypt a whole message (bytes in, bytes out). Blocking."""
    if sign not in SIGN or encrypt not in ENCRYPT:
        raise CryptoRefused(f"unknown crypto policy sign={sign!r} encrypt={encrypt!r}")
    out = Protected(data, {"signed": False, "encrypted": False, "method": "", "signer": ""})
    if sign == "none" and encrypt == "never":
        return out
    outer, entity = split_message(data)
    entity = seven_bit(entity)

    method, keys = "", list[Any]()
    if encrypt != "never":
        order = [sign] + [m for m in ("smime", "pgp") if m != sign] if sign != "none" \
            else ["smime", "pgp"]
        first_missing: list[str] = []
        for m in order:
            keys, missing = _recipients(stores, m, recipients)
            if not missing:
                method = m
                break
            first_missing = first_missing or missing
        if not method:
            text = "no usable key for " + ", ".join(first_missing)
            if encrypt == "required":
                raise CryptoRefused(f"encryption required but {text}; not sent")
            out.notes.append(f"not encrypted: {text}")
            if sign == "none":
                return out          # nothing to do: the message goes as submitted

    try:
        pgp_signer: PgpKey | None = None
        if sign == "smime":
            entity = smime_signed(entity, _smime_signer(stores, sender))
            out.info.update(signed=True, signer=sender)
        elif sign == "pgp":
            pgp_signer = _pgp_signer(stores, sender)
            out.info.update(signed=True, signer=sender)
            if method != "pgp":
                entity = pgp_signed(entity, stores, pgp_signer)
        if method == "smime":
            own = [e for e in stores.smime.find(sender, private=True) if not e.expired][:1]
            entity = smime_enveloped(entity, keys + [e for e in own if e not in keys])
        elif method == "pgp":
            own_keys = [k for k in stores.pgp.find(sender, secret=True, encrypt=True)
                        if k.usable][:1] if stores.pgp.available() else []
            entity = pgp_encrypted(entity, stores, keys + [k for k in own_keys if k not in keys],
                                   pgp_signer if sign == "pgp" else None)
    except (smime.SmimeError, pgp.PgpError, KeyStoreError) as exc:
        raise CryptoRefused(str(exc)) from None
    if method:
        out.info.update(encrypted=True)
    out.info["method"] = method or (sign if sign != "none" else "")
    out.data = b"\r\n".join([*outer, b"MIME-Version: 1.0"]) + b"\r\n" + entity
    return out


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
    if sign == "none" and encrypt == "never":
        return
    stores = rt.crypto if isinstance(rt.crypto, CryptoStores) else stores_for(rt.config)
    sender = ctx.from_email or ""
    try:
        res = protect(serialize(ctx.msg), stores, sender, list(ctx.recipients), sign, encrypt)
    except CryptoRefused as exc:
        ctx.log.log("Error", "Crypto", str(exc))
        raise
    ctx.msg = as_message(res.data)
    ctx.crypto = dict(res.info)
    for n in res.notes:
        ctx.log.log("Notice", "Crypto", n)
    ctx.log.log("Info", "Crypto", f"sign={sign} encrypt={encrypt}: "
                + ("signed " if res.info["signed"] else "")
                + (f"encrypted ({res.info['method']})" if res.info["encrypted"] else
                   "not encrypted"))


def _register() -> None:
    from gateway.outbound.pipeline import register_outbound_stage

    register_outbound_stage("crypto", crypto_stage)


_register()
