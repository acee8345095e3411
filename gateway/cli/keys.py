"""keys smime|pgp import|list|remove; tickets redecrypt N (registered by tickets)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    EX_DATAERR,
    EX_OK,
    EX_TEMPFAIL,
    add_json,
    load,
    print_json,
    print_table,
)


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="S/MIME certificates and PGP keys")
    ksub = p.add_subparsers(dest="keys_kind", metavar="KIND")
    ksub.required = True
    for kind in ("smime", "pgp"):
        kp = ksub.add_parser(kind, help=f"{'S/MIME' if kind == 'smime' else 'PGP'} key store")
        asub = kp.add_subparsers(dest="keys_action", metavar="ACTION")
        asub.required = True
        ip = asub.add_parser("import", help="import a certificate/key (PEM, DER or PKCS#12)"
                             if kind == "smime" else "import public or secret keys")
        if kind == "smime":
            ip.add_argument("cert", type=Path, metavar="CERT",
                            help="the certificate file (PEM, DER or PKCS#12; a PEM may hold "
                                 "the key too)")
            ip.add_argument("--key", type=Path, help="private key file (PEM or DER)")
        else:
            ip.add_argument("file", type=Path, metavar="FILE", help="armored or binary key file")
        ip.add_argument("--passphrase-file", type=Path,
                        help="file whose first line is the key's passphrase")
        add_json(ip)
        ip.set_defaults(func=cmd_import, kind=kind)
        lp = asub.add_parser("list", help="list keys")
        add_json(lp)
        lp.set_defaults(func=cmd_list, kind=kind)
        rp = asub.add_parser("remove", help="remove by address or fingerprint")
        rp.add_argument("id", metavar="ID", help="address or fingerprint" if kind == "pgp"
                        else "address, fingerprint or file name")
        add_json(rp)
        rp.set_defaults(func=cmd_remove, kind=kind)


def register_redecrypt(tsub: Any) -> None:
    """Called by gateway.cli.tickets to add `tickets redecrypt N`."""
    rp = tsub.add_parser("redecrypt", help="decrypt/verify the articles of a ticket again "
                                           "(after importing a key)")
    rp.add_argument("number")
    add_json(rp)
    rp.set_defaults(func=cmd_redecrypt)


def _stores(args: argparse.Namespace) -> Any:
    from gateway.crypto.keystore import stores_for

    return stores_for(load(args))


def _passphrase(args: argparse.Namespace) -> bytes | None:
    from gateway.crypto.keystore import read_passphrase

    if args.passphrase_file is None:
        return None
    return read_passphrase(args.passphrase_file)


def _row(d: dict[str, Any]) -> list[Any]:
    flags = [f.replace("_", "-") for f in ("expired", "not_yet_valid", "revoked", "disabled")
             if d.get(f)]
    if d.get("key_problem"):
        flags.append("key-unusable")
    return [", ".join(d["addresses"]), d["fingerprint"], (d.get("expires") or "never")[:10],
            "yes" if d["private_key"] else "no", ",".join(flags)]


HEAD = ["ADDRESSES", "FINGERPRINT", "EXPIRES", "PRIVATE", "FLAGS"]


def _unavailable(args: argparse.Namespace, exc: Exception) -> int:
    """gpg gave no answer (timed out, failed, could not be started): one line, exit 75."""
    print(f"keys {args.kind} {args.keys_action}: {exc}; try again later", file=sys.stderr)
    return EX_TEMPFAIL


def cmd_import(args: argparse.Namespace) -> int:
    from gateway.crypto.keystore import KeyStoreError
    from gateway.crypto.pgpkeyring import GpgUnavailable

    stores = _stores(args)
    try:
        pw = _passphrase(args)
        if args.kind == "smime":
            entries = [stores.smime.import_(args.cert, args.key, pw)]
        else:
            entries = stores.pgp.import_(args.file.read_bytes(),
                                         pw.decode("utf-8") if pw else None)
    except GpgUnavailable as exc:
        return _unavailable(args, exc)
    except KeyStoreError as exc:
        print(f"keys {args.kind} import: {exc}", file=sys.stderr)
        return EX_DATAERR
    except OSError as exc:
        print(f"keys {args.kind} import: {exc.filename}: cannot read: {exc.strerror}",
              file=sys.stderr)
        return EX_DATAERR
    rows = [e.as_dict() for e in entries]
    if args.json:
        print_json(rows)
    else:
        print_table([_row(d) for d in rows], HEAD)
    for e in entries:
        for note in getattr(e, "notes", ()):
            print(f"note: {note}", file=sys.stderr)
    for d in rows:
        if d["expired"]:
            print(f"warning: {d['fingerprint']} has expired ({d['expires']}); it will not be "
                  "used to encrypt", file=sys.stderr)
        elif d.get("not_yet_valid"):
            print(f"warning: {d['fingerprint']} is not valid before {d['not_before']}; it "
                  "will not be used to encrypt until then", file=sys.stderr)
    return EX_OK


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.crypto.pgpkeyring import GpgUnavailable

    stores = _stores(args)
    try:
        entries = stores.smime.entries() if args.kind == "smime" else stores.pgp.all_keys()
    except GpgUnavailable as exc:
        return _unavailable(args, exc)
    rows = [e.as_dict() for e in entries]
    if args.json:
        print_json(rows)
    else:
        print_table([_row(d) for d in rows], HEAD)
    return EX_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from gateway.crypto.keystore import KeyStoreError
    from gateway.crypto.pgpkeyring import GpgUnavailable

    stores = _stores(args)
    store = stores.smime if args.kind == "smime" else stores.pgp
    try:
        removed = [e.as_dict() for e in store.remove(args.id)]
    except GpgUnavailable as exc:
        return _unavailable(args, exc)
    except KeyStoreError as exc:      # gpg refused the deletion: its reason
        print(f"keys {args.kind} remove: {exc}", file=sys.stderr)
        return EX_DATAERR
    if not removed:
        print(f"keys {args.kind} remove: nothing matches {args.id!r}", file=sys.stderr)
        return 1
    if args.json:
        print_json(removed)
    else:
        for d in removed:
            print(f"removed {d['fingerprint']} ({', '.join(d['addresses'])})")
    return EX_OK


def cmd_redecrypt(args: argparse.Namespace) -> int:
    from gateway.crypto.redecrypt import redecrypt_ticket
    from gateway.runtime import build_runtime
    from gateway.store.db import make_engine

    cfg = load(args)
    rt = build_runtime(cfg)
    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    try:
        with engine.begin() as conn:
            results = redecrypt_ticket(conn, rt, args.number)
    finally:
        engine.dispose()
    if results is None:
        print(f"tickets redecrypt: no ticket {args.number}", file=sys.stderr)
        return 1
    if args.json:
        print_json([{"article_id": r.article_id, "crypto": r.crypto, "changed": r.changed,
                     "attachments": r.attachments} for r in results])
    else:
        if not results:
            print("no encrypted or signed article in this ticket")
        for r in results:
            c = r.crypto
            print(f"article {r.article_id}: decrypted={c['decrypted']} "
                  f"signature_valid={c['signature_valid']} signer={c['signer'] or '-'}"
                  + (f" error: {c['error']}" if c["error"] else ""))
            for line in signature_lines(c):
                print(f"  {line}")
    return EX_OK


def crypto_lines(crypto: dict[str, Any]) -> list[str]:
    """A crypto result as `tickets show` writes it: one line (encrypted/decrypted,
    signed by whom and whether valid, the error), then signature_lines indented."""
    method = f" ({crypto['method']})" if crypto.get("method") else ""
    parts = []
    if crypto.get("encrypted"):
        parts.append(f"encrypted{method}, "
                     + ("decrypted" if crypto.get("decrypted") else "not decrypted"))
    if crypto.get("signed"):
        valid = crypto.get("signature_valid")
        verdict = "valid" if valid else "not verified" if valid is None else "NOT valid"
        signer = f" by {crypto['signer']}" if crypto.get("signer") else ""
        parts.append(f"signed{method}{signer}: {verdict}")
    if crypto.get("error"):
        parts.append(f"error: {crypto['error']}")
    return ["Crypto: " + "; ".join(parts)] + ["  " + ln for ln in signature_lines(crypto)]


def _no_signer(sig: dict[str, Any]) -> str:
    # a good signature has a known key: with no signer, that key names no address
    return "signer without e-mail address" if sig.get("valid") else "unknown signer"


def signature_lines(crypto: dict[str, Any]) -> list[str]:
    """The partial signing and each signature of a crypto result, as an admin reads
    them: signer, key id and whether it is valid (and why not)."""
    out = []
    if crypto.get("partially_signed"):
        out.append("partially signed: text outside the signed block is not covered by a "
                   "signature")
    for n, s in enumerate(crypto.get("signatures") or [], 1):
        key = s.get("key_id") or s.get("fingerprint") or ""
        why = f" ({s['error']})" if s.get("error") else ""
        verdict = "valid" if s.get("valid") else (
            "not checked" if s.get("valid") is None else "NOT valid") + why
        out.append(f"signature {n} ({s.get('method') or '-'}): "
                   f"{s.get('signer') or _no_signer(s)}"
                   + (f", key {key}" if key else "") + f": {verdict}")
    return out
