#!/usr/bin/env python3
"""Throughput of S/MIME and PGP on 5 KB messages against the plain prepare pipeline,
all measured in this one invocation (rounds interleaved, medians reported).

  plain        the inbound prepare pipeline (parse → decrypt → trust → filters → ...)
               on a plain 5 KB message: the baseline
  smime-sign   outbound: multipart/signed, SHA-256 (cryptography)
  smime-enc    outbound: enveloped-data, AES-256 (cryptography)
  smime-sign+enc
  smime-dec    inbound prepare pipeline on an S/MIME encrypted message (cryptography)
  smime-verify inbound prepare pipeline on an S/MIME signed message (openssl cms -verify)
  pgp-sign+enc outbound PGP/MIME signed and encrypted (one gpg process)
  pgp-dec      inbound prepare pipeline on a PGP/MIME encrypted+signed message (gpg)

    python bench/crypto.py [--seconds 1.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.commlog import CommObj  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.crypto.outbound import protect_copies  # noqa: E402
from gateway.inbound import pipeline  # noqa: E402
from gateway.inbound.stages import build_stages  # noqa: E402
from gateway.model import Envelope, MessageContext  # noqa: E402
from gateway.runtime import build_runtime  # noqa: E402
from tests.peers.ca import TestCA  # noqa: E402
from tests.peers.gpg import GpgPeer, kill_agent, short_home  # noqa: E402

SUPPORT = "support@example.org"
CUSTOMER = "cust@customer.test"

CONF = """
[gateway]
hostname = "bench.test"
[[queue]]
name = "Raw"
[[queue]]
name = "Support"
address = "support@example.org"
[[address]]
email = "support@example.org"
queue = "Support"
[crypto]
smime_dir = "keys/smime"
smime_ca_file = "keys/smime/ca.pem"
gnupg_home = "{home}"
"""


def body_5k() -> bytes:
    line = b"The quick brown fox jumps over the lazy dog; ticket text for the benchmark.\r\n"
    return line * (5000 // len(line))


def message(frm: str, to: str, mid: str) -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: bench\r\nMessage-ID: <{mid}@bench>\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + body_5k()


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per second over about `seconds` (at least 3 operations)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - start
        if el >= seconds and n >= 3:
            return n / el


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dg-bench-crypto-"))
    home = short_home("dgb")
    peer = GpgPeer()
    try:
        conf = tmp / "conf.d"
        conf.mkdir()
        (conf / "10.toml").write_text(CONF.format(home=home))
        ca = TestCA(tmp / "ca")
        sup = ca.issue("Support", emails=(SUPPORT,), filename="support")
        cus = ca.issue("Customer", emails=(CUSTOMER,), filename="customer")
        sdir = tmp / "keys" / "smime"
        sdir.mkdir(parents=True)
        shutil.copy(ca.ca_path, sdir / "ca.pem")
        shutil.copy(sup.cert, sdir / f"{SUPPORT}.pem")
        shutil.copy(sup.key, sdir / f"{SUPPORT}.key")
        shutil.copy(cus.cert, sdir / f"{CUSTOMER}.pem")
        (sdir / f"{SUPPORT}.key").chmod(0o600)

        print("generating PGP keys (gpg --quick-gen-key, default algorithm) ...", flush=True)
        peer.gen_key(f"Customer <{CUSTOMER}>")
        admin = GpgPeer()
        try:
            admin.gen_key(f"Support <{SUPPORT}>", passphrase="pw")  # noqa: S106 - a throwaway key
            sec = admin.export_secret(SUPPORT, "pw")
            peer.import_(admin.export(SUPPORT))
        finally:
            admin.close()

        stages = build_stages().prepare
        cfg = load_config(conf)
        rt = build_runtime(cfg)
        stores = rt.crypto
        stores.pgp.import_(sec, "pw")
        stores.pgp.import_(peer.export(CUSTOMER))

        plain_in = message(CUSTOMER, SUPPORT, "plain")
        plain_out = message(SUPPORT, CUSTOMER, "out")
        # Inbound samples made the way correspondents make them (the gateway's own
        # outbound functions, verified by openssl/gpg in the interop tests).
        inner = b"Content-Type: text/plain\r\n\r\n" + body_5k()
        hdr = f"From: {CUSTOMER}\r\nTo: {SUPPORT}\r\nSubject: bench\r\nMessage-ID: <x@b>\r\n"
        from gateway.crypto.keystore import SmimeStore
        from gateway.crypto.outbound import smime_enveloped, smime_signed

        cstore = SmimeStore(tmp / "cust-smime", ca.ca_path)
        cstore.import_(cus.cert, cus.key)
        cust_entry = cstore.find(CUSTOMER, private=True)[0]
        smime_enc_in = hdr.encode() + b"MIME-Version: 1.0\r\n" + smime_enveloped(
            inner, stores.smime.find(SUPPORT))
        smime_sig_in = hdr.encode() + b"MIME-Version: 1.0\r\n" + smime_signed(inner, cust_entry)
        armored = peer.encrypt(inner, SUPPORT, sign_as=CUSTOMER)
        pgp_in = hdr.encode() + (
            b'MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; '
            b'protocol="application/pgp-encrypted"; boundary="b"\r\n\r\n--b\r\n'
            b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
            + armored.replace(b"\n", b"\r\n") + b"\r\n--b--\r\n")

        def prep(raw: bytes, expect: str = "") -> Callable[[], object]:
            def run() -> object:
                ctx = MessageContext(envelope=Envelope(mail_from=CUSTOMER,
                                                       recipients=(SUPPORT,), raw=raw),
                                     log=CommObj("Message"))
                pipeline.prepare(ctx, rt, stages)
                if expect == "dec":
                    assert ctx.crypto.decrypted, ctx.crypto
                if expect == "sig":
                    assert ctx.crypto.signature_valid, ctx.crypto
                return ctx
            return run

        def out(sign: str, enc: str) -> Callable[[], object]:
            def run() -> object:
                (r,) = protect_copies(plain_out, stores, SUPPORT, [CUSTOMER], sign, enc)
                assert r.info["signed"] or r.info["encrypted"]
                return r
            return run

        cases: dict[str, Callable[[], object]] = {
            "plain": prep(plain_in),
            "smime-sign": out("smime", "never"),
            "smime-enc": out("none", "required"),
            "smime-sign+enc": out("smime", "required"),
            "smime-dec": prep(smime_enc_in, "dec"),
            "smime-verify": prep(smime_sig_in, "sig"),
            "pgp-sign+enc": out("pgp", "required"),
            "pgp-dec": prep(pgp_in, "dec"),
        }
        for fn in cases.values():     # warm up (gpg-agent start, caches)
            fn()
        results: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(args.rounds):
            for name, fn in cases.items():
                results[name].append(rate(fn, args.seconds))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        base = statistics.median(results["plain"])
        print(f"\n5 KB messages, median of {args.rounds} rounds of ~{args.seconds}s each")
        print(f"{'case':<16}{'msg/s':>10}{'ms/msg':>10}{'vs plain':>10}")
        for name, vals in results.items():
            m = statistics.median(vals)
            print(f"{name:<16}{m:>10.1f}{1000 / m:>10.2f}{m / base:>10.3f}")
    finally:
        kill_agent(home)
        peer.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
