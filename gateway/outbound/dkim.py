"""DKIM signing: dkimpy's format and canonicalization, the key operation by `cryptography`.

dkimpy does RSA in pure Python (~10 ms per signature); here dkimpy canonicalizes
and hashes, and `cryptography` signs the SHA-256 digest (~1 ms for RSA-2048,
less for Ed25519, RFC 8463). relaxed/relaxed; the headers that matter are
oversigned (each listed once more than it occurs, so a header added after
signing breaks the signature). Several keys for one domain all sign: selector
rotation publishes the new key while the old one still verifies.
"""

from __future__ import annotations

import base64
import hashlib
import quopri
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from gateway.config import Config
from gateway.outbound.context import OutboundContext
from gateway.outbound.headers import MAX_LINE, fold_long_lines
from gateway.privatefiles import not_private
from gateway.runtime import Runtime

OVERSIGNED = (b"from", b"sender", b"to", b"cc", b"subject", b"date", b"message-id",
              b"reply-to", b"in-reply-to", b"references")
# Oversigned when present (as rspamd's "(x)"): a second one put on top, where a reader
# takes the first, breaks the signature. Absent, they are not signed, so a relay that
# adds MIME-Version to a plain message does not break it.
OVERSIGNED_IF_PRESENT = (b"mime-version", b"content-type", b"content-transfer-encoding")
# Signed once per occurrence when present.
ALSO_SIGNED = (b"content-disposition", b"auto-submitted", b"precedence", b"x-loop",
               b"list-unsubscribe", b"list-unsubscribe-post", b"list-id")
_CANON = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_PKCS1 = padding.PKCS1v15()
_PREHASHED = Prehashed(hashes.SHA256())

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key: PrivateKey
    subdomains: bool = False

    @property
    def algorithm(self) -> bytes:
        return b"ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) \
            else b"rsa-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(digest)
        return self.key.sign(digest, _PKCS1, _PREHASHED)


MIN_RSA_BITS = 1024     # RFC 8301 3.2: signers MUST NOT use shorter keys, verifiers refuse them


class KeyUnfit(ValueError):
    """A private key that loads but cannot sign DKIM; the text names the file."""


def load_private_key(path: Path) -> PrivateKey:
    """The key in `path`; OSError when it cannot be read, KeyUnfit when it is no key
    DKIM can sign with."""
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:       # cryptography: "Password was not given but ... is encrypted"
        raise KeyUnfit(f"{path}: encrypted with a passphrase, which deskgate cannot give; "
                       f"write it unencrypted (openssl pkey -in {path} -out NEW.pem), "
                       "owner-only") from None
    except ValueError:
        raise KeyUnfit(f"{path}: not a PEM private key (RSA or Ed25519, such as `deskgate "
                       "dkim keygen` or opendkim-genkey write)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyUnfit(f"{path}: only RSA and Ed25519 keys can sign DKIM")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise KeyUnfit(f"{path}: an RSA key of {key.key_size} bits; DKIM needs at least "
                       f"{MIN_RSA_BITS} (RFC 8301), 2048 is recommended (deskgate dkim "
                       "keygen writes 2048)")
    return key


def generate_key(ed25519_key: bool = False) -> PrivateKey:
    if ed25519_key:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def dns_record(key: PrivateKey) -> str:
    """The TXT record value: v=DKIM1; k=rsa|ed25519; p=..."""
    pub = key.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def zone_line(domain: str, selector: str, record: str) -> str:
    """A zone-file line, the name by its A-labels, the value split into 255-character
    strings."""
    chunks = [record[i:i + 255] for i in range(0, len(record), 255)]
    return (f'{selector}._domainkey.{dns_form(domain)}. IN TXT ( '
            + " ".join(f'"{c}"' for c in chunks) + " )")


def include_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    count = Counter(name.lower() for name, _ in headers)
    out = [name for name in OVERSIGNED for _ in range(count[name] + 1)]
    out += [name for name in OVERSIGNED_IF_PRESENT
            for _ in range(count[name] + 1 if count[name] else 0)]
    out += [name for name in ALSO_SIGNED for _ in range(count[name])]
    return out


def signature_headers(data: bytes, keys: Sequence[DkimKey], now: int | None = None) -> bytes:
    """DKIM-Signature header lines (CRLF-terminated), one per key, for `data`."""
    headers, body = dkimpy.rfc822_parse(data)
    bh = base64.b64encode(hashlib.sha256(_CANON.canonicalize_body(body)).digest())
    include = include_headers(headers)
    canon_headers = _CANON.canonicalize_headers(headers)
    ts = str(int(now if now is not None else time.time())).encode()
    names = [name + b":" for name in include[:-1]] + [include[-1] + b";"]
    out = []
    for k in keys:
        tags = [b"v=1;", b"a=" + k.algorithm + b";", b"c=relaxed/relaxed;",
                b"d=" + k.domain.encode() + b";", b"s=" + k.selector.encode() + b";",
                b"t=" + ts + b";"]
        head = b"\r\n".join((_fold(b"DKIM-Signature:", tags, b" "), _fold(b"\th=", names),
                             b"\tbh=" + bh + b";"))
        value = head[len(b"DKIM-Signature:"):] + b"\r\n\tb="
        h = hashlib.sha256()
        dkimpy.hash_headers(h, _CANON, canon_headers, include, (b"DKIM-Signature", value), None)
        sig = base64.b64encode(k.sign_digest(h.digest()))
        chunks = [sig[i:i + 4] for i in range(0, len(sig), 4)]
        out.append(head + b"\r\n" + _fold(b"\tb=", chunks) + b"\r\n")
    return b"".join(out)


_WIDTH = 78     # RFC 5322 2.1.1: lines SHOULD be no longer


def _fold(start: bytes, pieces: Sequence[bytes], joiner: bytes = b"") -> bytes:
    """`start` and `pieces` joined by `joiner`, a new tab-indented line begun (instead
    of the joiner) where a line would pass 78 characters. DKIM tag values may be
    folded there (RFC 6376 3.2, 3.5: FWS around tags, after ':' in h=, inside b=),
    and relaxed canonicalization unfolds them."""
    lines = [start]
    for p in pieces:
        if len(lines[-1]) + len(joiner) + len(p) > _WIDTH and lines[-1].strip():
            lines.append(b"\t" + p)
        else:
            lines[-1] += (joiner if lines[-1].strip() else b"") + p
    return b"\r\n".join(lines)


def sign(data: bytes, keys: Sequence[DkimKey], now: int | None = None) -> bytes:
    """The message with a signature per key prepended."""
    return signature_headers(data, keys, now) + data if keys else data


# ----------------------------------------------------------------- 8-bit bodies

# Whose parts must keep their bytes: re-encoding them breaks that signature or cipher.
_SEALED = ("multipart/signed", "multipart/encrypted")


def seven_bit_body(msg: Message) -> Message:
    """Re-encode 8-bit body parts, and parts with a line over 998 octets, before
    signing: text quoted-printable, the rest base64.

    A relay whose next hop lacks 8BITMIME converts 8-bit parts to 7 bits itself, and
    a relay breaks a line longer than RFC 5322 allows (Postfix's
    smtp_line_length_limit inserts CRLF SP); either changes the body after signing
    (RFC 6376 section 5.3 asks the signer to convert first). Headers stay as they
    are; parts under multipart/signed or
    multipart/encrypted are left alone (they stay 8-bit, announced as BODY=8BITMIME).
    The message is changed in place and returned.
    """
    if not msg.is_multipart() and _unsendable(msg) and "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
        if "Content-Type" not in msg:
            msg["Content-Type"] = 'text/plain; charset="utf-8"'
    _recode(msg)
    return msg


def _unsendable(part: Message) -> bool:
    """8-bit, or with a line longer than RFC 5322 2.1.1 allows (998 octets)."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return False
    return not payload.isascii() or any(len(ln.rstrip("\r")) > MAX_LINE
                                        for ln in payload.split("\n"))


def _recode(part: Message) -> None:
    if part.get_content_type() in _SEALED:
        return
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                _recode(sub)
        return
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if not _unsendable(part) or cte in ("quoted-printable", "base64"):
        return
    raw = part.get_payload(decode=True)
    data = raw if isinstance(raw, bytes) else b""
    del part["Content-Transfer-Encoding"]
    if part.get_content_maintype() == "text":
        if part.get_param("charset") is None:
            part.set_param("charset", _charset(data))
        text = data.replace(b"\r\n", b"\n")
        part.set_payload(quopri.encodestring(text).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
    else:
        part.set_payload(base64.encodebytes(data).decode("ascii"))
        part["Content-Transfer-Encoding"] = "base64"


def _charset(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown-8bit"         # RFC 1428: 8-bit text of an unknown charset
    return "utf-8"


# ----------------------------------------------------------------- runtime

def load_keys(cfg: Config) -> dict[str, list[DkimKey]]:
    """domain → keys, from [[dkim]]; built on load and on every reload. Domains are
    kept by their A-labels: d= must be written so (RFC 6376 3.5), and a From domain
    matches in either form."""
    keys: dict[str, list[DkimKey]] = {}
    for d in cfg.dkim:
        domain = dns_form(d.domain)
        keys.setdefault(domain, []).append(
            DkimKey(domain, d.selector, load_private_key(cfg.path(d.key_file)),
                    d.subdomains))
    return keys


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _dns_labels(name: str) -> bool:
    """True when name is dot-separated labels of letters, digits and inner hyphens."""
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(x) for x in name.split("."))


def selector_problem(value: str) -> str | None:
    """Why `value` cannot be a selector (s=), None when it can. RFC 6376 3.1:
    selector = sub-domain *("." sub-domain). `dkim keygen` and `check` both use it."""
    if _dns_labels(value):
        return None
    return (f"{value!r} is not a selector (letters, digits and hyphens, labels "
            "separated by dots)")


def domain_problem(value: str) -> str | None:
    """Why `value` cannot be a signing domain (d=), None when it can: a DNS name of at
    least two labels; an internationalised one is checked by its A-labels (IDNA) and
    kept as given. `dkim keygen` and `check` both use it."""
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if not _dns_labels(ascii_name) or "." not in ascii_name:
        return f"{value!r} is not a domain name such as example.org"
    return None


def dns_form(domain: str) -> str:
    """A domain as DNS compares it: lower case, by its A-labels when it has any."""
    try:
        return domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return domain.lower()


def validate_dkim(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    """Each [[dkim]]: domain and selector DNS names (they go into d= and s= of every
    signature), a selector not listed twice for a domain, a loadable private key file."""
    seen: set[tuple[str, str]] = set()
    for i, d in enumerate(cfg.dkim):
        key = f"dkim[{i}]"
        where = str(cfg.conf_dir)   # load_config files it under the file of this entry
        for name, problem in (("domain", domain_problem(d.domain)),
                              ("selector", selector_problem(d.selector))):
            if problem is not None:
                add(where, f"{key}.{name}", problem)
        dns_name = (dns_form(d.domain), d.selector.lower())  # DNS names ignore case
        if dns_name in seen:
            add(where, f"{key}.selector", f"selector {d.selector!r} of {d.domain} is "
                "listed twice")
        seen.add(dns_name)
        try:
            load_private_key(cfg.path(d.key_file))
        except KeyUnfit as exc:
            add(where, f"{key}.key_file", str(exc))
            continue
        except (OSError, ValueError, TypeError) as exc:
            add(where, f"{key}.key_file", f"cannot load {cfg.path(d.key_file)}: "
                f"{getattr(exc, 'strerror', None) or exc}")
            continue
        problem = not_private(cfg.path(d.key_file))
        if problem is not None:
            add(where, f"{key}.key_file", problem)


MAX_VERIFIED_RSA_BITS = 4096    # RFC 8301 3.2: verifiers MUST handle 1024 to 4096


def dkim_warnings(cfg: Config) -> list[tuple[str, str]]:
    """(key, reason) for [[dkim]] keys that sign but may not verify everywhere (`check`
    prints them): a domain with Ed25519 keys only, RSA under 2048 or over 4096 bits."""
    out: list[tuple[int, str]] = []
    rsa_domains: set[str] = set()
    first_ed: dict[str, tuple[int, str]] = {}
    for i, d in enumerate(cfg.dkim):
        path = cfg.path(d.key_file)
        try:
            key = load_private_key(path)
        except (OSError, ValueError, TypeError):
            continue                    # validate_dkim reports it
        domain = dns_form(d.domain)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            first_ed.setdefault(domain, (i, d.domain))
            continue
        rsa_domains.add(domain)
        if key.key_size < 2048:
            out.append((i, f"{path}: an RSA key of {key.key_size} bits; RFC 8301 "
                           "recommends 2048 (deskgate dkim keygen writes 2048)"))
        elif key.key_size > MAX_VERIFIED_RSA_BITS:
            out.append((i, f"{path}: an RSA key of {key.key_size} bits; verifiers need "
                           f"not check keys over {MAX_VERIFIED_RSA_BITS} bits (RFC 8301)"))
    for domain, (i, name) in first_ed.items():
        if domain not in rsa_domains:
            out.append((i, f"{name} is signed with Ed25519 alone: receivers that do not "
                           "verify Ed25519 (RFC 8463) see its mail as unsigned; add an RSA "
                           f"key (deskgate dkim keygen {name} SELECTOR)"))
    return [(f"dkim[{i}].key_file", reason) for i, reason in sorted(out)]


def keys_for(rt: Runtime, from_email: str) -> list[DkimKey]:
    """The keys of the From domain; failing those, the keys of the nearest parent
    domain that were configured with `subdomains = true` (as OpenDKIM's SubDomains:
    d= is the parent, which DMARC's relaxed alignment accepts)."""
    table = rt.dkim
    domain = dns_form(from_email.rpartition("@")[2].rstrip("."))
    if domain in table:
        return table[domain]
    labels = domain.split(".")
    for i in range(1, len(labels) - 1):
        keys = [k for k in table.get(".".join(labels[i:]), []) if k.subdomains]
        if keys:
            return keys
    return []


def dkim_stage(ctx: OutboundContext, rt: Runtime) -> None:
    """Serialize the final message (every copy of it) with 8-bit parts and parts with
    overlong lines re-encoded to 7 bits, fold header lines over 998 octets, and sign
    it with every key of the From domain."""
    from gateway.outbound.rewrite import from_address, serialize

    assert ctx.msg is not None
    from_email = ctx.from_email or from_address(ctx.msg)
    keys = keys_for(rt, from_email)

    def signed(msg: Message) -> tuple[bytes, int]:
        """The signed bytes, and how many of them the signatures are (the queue puts
        the Received header below them: gateway.outbound.received)."""
        data = fold_long_lines(serialize(seven_bit_body(msg)))
        out = sign(data, keys)
        return out, len(out) - len(data)

    for c in ctx.copies:
        c.data, c.signed = signed(c.msg)
    if ctx.copies:
        ctx.data, ctx.signed = ctx.copies[0].data, ctx.copies[0].signed
    else:
        ctx.data, ctx.signed = signed(ctx.msg)
    if keys:
        ctx.log.log("Info", "DKIM", "signed " + (f"{len(ctx.copies)} copies " if ctx.copies
                                                 else "") + "with " + ", ".join(
            f"{k.selector}._domainkey.{k.domain} ({k.algorithm.decode()})" for k in keys))
    elif rt.dkim:
        domain = from_email.rpartition("@")[2]
        ctx.log.log("Info", "DKIM", f"not signed: no [[dkim]] key for {domain} (the From "
                    "domain)" if domain else "not signed: the message has no From address")
