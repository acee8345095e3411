"""Inbound PGP/MIME (RFC 3156) and inline PGP against messages produced by gpg."""

from __future__ import annotations

import asyncio
import base64
import subprocess

import pytest

from gateway.crypto.keystore import KeyStoreError
from gateway.model import Envelope
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, SUPPORT_PASS, crlf
from tests.peers.gpg import kill_agent

HEAD = (f"From: Customer <{CUSTOMER}>\r\nTo: {SUPPORT}\r\nSubject: vpn broken\r\n"
        "Message-ID: <{mid}@customer.test>\r\nMIME-Version: 1.0\r\n")
INNER = crlf(b'Content-Type: multipart/mixed; boundary="in"\n\n--in\n'
             b"Content-Type: text/plain; charset=utf-8\n\nThe VPN drops every 5 minutes.\n"
             b"server: vpn02\n--in\nContent-Type: application/octet-stream\n"
             b'Content-Disposition: attachment; filename="vpn.log"\n\nlog line\n--in--\n')


def pgp_mime_encrypted(armored: bytes, mid: str) -> bytes:
    return HEAD.format(mid=mid).encode() + crlf(
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
        b'boundary="enc"\n\n--enc\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n'
        b'--enc\nContent-Type: application/octet-stream; name="encrypted.asc"\n\n'
        + armored + b"\n--enc--\n")


def pgp_mime_signed(content: bytes, sig: bytes, mid: str) -> bytes:
    return HEAD.format(mid=mid).encode() + crlf(
        b'Content-Type: multipart/signed; micalg=pgp-sha256; '
        b'protocol="application/pgp-signature"; boundary="sig"\n\n--sig\n'
        + content + b"\n--sig\n"
        b'Content-Type: application/pgp-signature; name="signature.asc"\n\n'
        + sig + b"\n--sig--\n")


def inline(body: bytes, mid: str) -> bytes:
    return HEAD.format(mid=mid).encode() + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" \
        + crlf(body)


class TestPgpMime:
    def test_encrypted_and_signed_decrypted_and_verified(self, pgp_env, pgp_keys, deliver):
        """gpg --encrypt --sign in PGP/MIME: decrypted, signature valid, attachments extracted."""
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT, sign_as=CUSTOMER)
        d = deliver(pgp_mime_encrypted(armored, "p1"))
        c = d.crypto
        assert c["method"] == "pgp" and c["encrypted"] and c["decrypted"]
        assert c["signed"] and c["signature_valid"] is True and c["signer"] == CUSTOMER
        assert c["error"] == ""
        assert "VPN drops" in d.article["body"]
        assert [a["filename"] for a in d.article["attachments"]] == ["vpn.log"]
        assert d.ticket["queue"] == "Support"
        assert d.ticket["dynamic_fields"] == {"Server": "vpn02"}

    def test_encrypted_unsigned_is_not_signed(self, pgp_env, pgp_keys, deliver):
        """Encrypted without a signature (PGP/MIME and inline): not reported as signed."""
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        for raw in (pgp_mime_encrypted(armored, "u1"),
                    inline(pgp_keys.customer.encrypt(b"inline secret\n", SUPPORT), "u2")):
            c = deliver(raw).crypto
            assert c["decrypted"] and c["signed"] is False
            assert c["signature_valid"] is None and c["signer"] == "" and c["error"] == ""

    def test_encrypted_to_several_keys_of_which_we_hold_one(self, pgp_env, pgp_keys, deliver):
        """Encrypted to a third party's key and ours: decrypted with ours; the other
        recipient's key is not taken for a signer."""
        from tests.peers.gpg import GpgPeer

        other = GpgPeer()
        try:
            other.gen_key("Other <other@elsewhere.test>")
            pgp_keys.customer.import_(other.export("other@elsewhere.test"))
        finally:
            other.close()
        for signed in (False, True):
            args = ["--armor", "--encrypt", "-r", "other@elsewhere.test", "-r", SUPPORT]
            args += ["--sign", "--local-user", CUSTOMER] if signed else []
            armored = pgp_keys.customer.run(*args, input=INNER).stdout
            c = deliver(pgp_mime_encrypted(armored, f"several-{signed}")).crypto
            assert c["decrypted"] and c["error"] == ""
            assert c["signed"] is signed
            assert c["signature_valid"] is (True if signed else None)

    def test_signed_valid(self, pgp_env, pgp_keys, deliver):
        """multipart/signed with a gpg detached signature over the canonical part: valid."""
        sig = pgp_keys.customer.detach_sign(INNER, CUSTOMER)
        d = deliver(pgp_mime_signed(INNER, sig, "p2"))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is True and c["signer"] == CUSTOMER
        assert not c["encrypted"] and "VPN drops" in d.article["body"]

    def test_signed_tampered_invalid(self, pgp_env, pgp_keys, deliver):
        """A signed part changed in transit: signature_valid false."""
        sig = pgp_keys.customer.detach_sign(INNER, CUSTOMER)
        raw = pgp_mime_signed(INNER, sig, "p3").replace(b"every 5", b"every 6")
        d = deliver(raw)
        assert d.crypto["signed"] and d.crypto["signature_valid"] is False
        assert d.crypto["error"].startswith("signature invalid")

    def test_signer_unknown_key(self, crypto_env, pgp_keys, deliver):
        """Signed by a key the gateway does not have: not valid, 'no public key'."""
        crypto_env.stores.pgp.import_(pgp_keys.support_secret, SUPPORT_PASS)  # no customer key
        sig = pgp_keys.customer.detach_sign(INNER, CUSTOMER)
        d = deliver(pgp_mime_signed(INNER, sig, "p4"))
        assert d.crypto["signed"] and d.crypto["signature_valid"] is False
        assert "no public key" in d.crypto["error"]

    def test_expired_signing_key(self, crypto_env, deliver):
        """A signature by a PGP key that has since expired: not valid, the error says expired."""
        import time

        from tests.peers.gpg import GpgPeer

        peer = GpgPeer()
        try:
            peer.run("--quick-gen-key", f"Customer <{CUSTOMER}>", "ed25519", "sign",
                     "seconds=2")
            sig = peer.detach_sign(INNER, CUSTOMER)
            crypto_env.stores.pgp.import_(peer.export(CUSTOMER))
        finally:
            peer.close()
        time.sleep(3)
        d = deliver(pgp_mime_signed(INNER, sig, "p7"))
        assert d.outcome.action == "new"
        assert d.crypto["signed"] and d.crypto["signature_valid"] is False
        assert "expired" in d.crypto["error"]

    def test_no_secret_key_message_kept(self, crypto_env, pgp_keys, deliver):
        """Encrypted to a key whose secret the gateway lacks: stored with a clear error."""
        crypto_env.stores.pgp.import_(pgp_keys.customer_public)   # no support secret key
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        d = deliver(pgp_mime_encrypted(armored, "p5"))
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert "no secret key" in d.crypto["error"]

    def test_wrong_stored_passphrase_message_kept(self, pgp_env, pgp_keys, deliver):
        """The stored passphrase no longer fits: stored undecrypted, error names the passphrase."""
        st = pgp_env.stores.pgp
        fpr = next(k.fingerprint for k in st.all_keys() if k.secret)
        st.passphrase_path(fpr).write_text("not-the-passphrase\n")
        from tests.peers.gpg import kill_agent

        kill_agent(pgp_env.gnupg_home)       # forget the passphrase cached at import
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        d = deliver(pgp_mime_encrypted(armored, "p6"))
        assert not d.crypto["decrypted"]
        assert "wrong passphrase" in d.crypto["error"]
        assert d.outcome.action == "new"

    def test_hanging_gpg_times_out_and_the_message_is_kept(self, pgp_env, pgp_keys, deliver,
                                                          monkeypatch, tmp_path):
        """A gpg that never answers is stopped after the timeout: stored with a clear error."""
        import time

        from gateway.crypto import pgpkeyring

        wrapper = tmp_path / "gpg-hangs"
        wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = --decrypt ] && exec sleep 20;'
                           ' done\nexec gpg "$@"\n')
        wrapper.chmod(0o755)
        (pgp_env.conf / "60-gpg.toml").write_text(f'[crypto]\ngpg_binary = "{wrapper}"\n')
        pgp_env.reload()
        monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        t0 = time.monotonic()
        d = deliver(pgp_mime_encrypted(armored, "hang1"))
        assert time.monotonic() - t0 < 15
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert "gpg did not answer within 2 s" in d.crypto["error"]


class TestInlinePgp:
    def test_inline_encrypted_and_signed(self, pgp_env, pgp_keys, deliver):
        """An inline -----BEGIN PGP MESSAGE----- body (encrypted+signed) is decrypted, verified."""
        armored = pgp_keys.customer.encrypt(b"Inline secret: reset my token\nserver: tok01\n",
                                            SUPPORT, sign_as=CUSTOMER)
        d = deliver(inline(armored, "i1"))
        c = d.crypto
        assert c["encrypted"] and c["decrypted"] and c["signature_valid"] is True
        assert "reset my token" in d.article["body"]
        assert "BEGIN PGP" not in d.article["body"]
        assert d.ticket["dynamic_fields"] == {"Server": "tok01"}
        assert "reset my token" in d.params["BodyDecrypted"]

    def test_inline_in_base64_found_on_the_loop_decrypted_on_the_pool(self, pgp_env, pgp_keys,
                                                                      deliver):
        """An armored block inside a base64 body escapes the cheap look before the
        pipeline (may_need_crypto sees neither the armor nor a crypto content type); the
        decrypt stage finds it on the event loop and the message is prepared again on
        the worker pool, where gpg decrypts it."""
        from gateway.crypto.inbound import may_need_crypto

        armored = pgp_keys.customer.encrypt(b"Base64 secret: unlock account 42\n",
                                            SUPPORT, sign_as=CUSTOMER)
        raw = crlf(HEAD.format(mid="i3").encode() + b"Content-Type: text/plain; charset=utf-8\n"
                   b"Content-Transfer-Encoding: base64\n\n"
                   + base64.encodebytes(crlf(armored)))
        assert not may_need_crypto(Envelope(mail_from=CUSTOMER, recipients=(SUPPORT,), raw=raw))
        d = deliver(raw)
        c = d.crypto
        assert c["encrypted"] and c["decrypted"] and c["signature_valid"] is True
        assert "unlock account 42" in d.article["body"]
        assert d.thread.startswith("pipeline")     # gpg ran on the worker pool, not the loop

    def test_inline_clearsigned(self, pgp_env, pgp_keys, deliver):
        """A clearsigned body verifies and the stored body is the cleartext."""
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n- dash line\n", CUSTOMER)
        d = deliver(inline(signed, "i2"))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is True and not c["encrypted"]
        assert "Please call me back." in d.article["body"]
        assert "BEGIN PGP" not in d.article["body"]
        assert c["partially_signed"] is False


UNSIGNED_BEGIN = "-----BEGIN UNSIGNED TEXT (not covered by the PGP signature)-----"
UNSIGNED_END = "-----END UNSIGNED TEXT-----"


class TestInlinePartlySigned:
    def test_text_appended_after_a_signed_block_is_marked_unsigned(self, pgp_env, pgp_keys,
                                                                  deliver):
        """Text added after a valid clearsigned block is framed as unsigned; the crypto
        result says only part of the body is signed."""
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n", CUSTOMER)
        d = deliver(inline(signed + b"\nPS: wire 5000 EUR to DE00 1234 today.\n", "ps1"))
        c, body = d.crypto, d.article["body"]
        assert c["signature_valid"] is True and c["partially_signed"] is True
        assert body.index("Please call me back.") < body.index(UNSIGNED_BEGIN) \
            < body.index("PS: wire 5000 EUR") < body.index(UNSIGNED_END)
        assert "BEGIN PGP" not in body

    def test_text_before_a_signed_block_is_marked_unsigned(self, pgp_env, pgp_keys, deliver):
        """Text put in front of a clearsigned block is framed as unsigned as well."""
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n", CUSTOMER)
        d = deliver(inline(b"Urgent: reset my password to hunter2.\n\n" + signed, "ps2"))
        body = d.article["body"]
        assert d.crypto["partially_signed"] is True
        assert body.index(UNSIGNED_BEGIN) < body.index("Urgent: reset") \
            < body.index(UNSIGNED_END) < body.index("Please call me back.")

    def test_forged_end_marker_in_the_unsigned_text_is_escaped(self, pgp_env, pgp_keys,
                                                               deliver):
        """Unsigned text cannot close its own frame: a line that looks like the end
        marker is dash-escaped, so the frame ends only where deskgate ends it."""
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n", CUSTOMER)
        forged = f"ignore this\n{UNSIGNED_END}\nNew bank account: DE00 9999\n".encode()
        body = deliver(inline(signed + forged, "ps3")).article["body"]
        assert f"\n{UNSIGNED_END}\nNew bank" not in body
        assert f"- {UNSIGNED_END}" in body
        assert body.rstrip().endswith(UNSIGNED_END)
        assert body.index(UNSIGNED_BEGIN) < body.index("New bank account")

    def test_whole_body_signed_is_not_partial(self, pgp_env, pgp_keys, deliver):
        """A body that is only the clearsigned block (blank lines around it) has no marks."""
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n", CUSTOMER)
        d = deliver(inline(b"\n" + signed + b"\n\n", "ps4"))
        assert d.crypto["partially_signed"] is False
        assert "UNSIGNED TEXT" not in d.article["body"]

    def test_text_outside_an_encrypted_and_signed_block_is_marked(self, pgp_env, pgp_keys,
                                                                  deliver):
        """Plain text next to an inline encrypted+signed block is neither encrypted nor
        signed: framed as unsigned, the decrypted signed text is not."""
        armored = pgp_keys.customer.encrypt(b"Reset my token.\n", SUPPORT, sign_as=CUSTOMER)
        d = deliver(inline(armored + b"\nAlso send the token to eve@evil.test\n", "ps5"))
        c, body = d.crypto, d.article["body"]
        assert c["decrypted"] and c["signature_valid"] is True and c["partially_signed"] is True
        assert body.index("Reset my token.") < body.index(UNSIGNED_BEGIN) \
            < body.index("eve@evil.test") < body.index(UNSIGNED_END)

    def test_second_signed_block_is_verified_and_the_text_between_is_marked(
            self, pgp_env, pgp_keys, deliver):
        """Two clearsigned blocks: both are unwrapped and verified, the text between
        them is framed as unsigned."""
        one = pgp_keys.customer.clearsign(b"First signed part.\n", CUSTOMER)
        two = pgp_keys.customer.clearsign(b"Second signed part.\n", CUSTOMER)
        d = deliver(inline(one + b"\ninjected between\n\n" + two, "ps6"))
        c, body = d.crypto, d.article["body"]
        assert c["signature_valid"] is True and c["partially_signed"] is True
        assert "BEGIN PGP" not in body
        assert body.index("First signed part.") < body.index(UNSIGNED_BEGIN) \
            < body.index("injected between") < body.index(UNSIGNED_END) \
            < body.index("Second signed part.")


COLLEAGUE = "colleague@customer.test"


@pytest.fixture(scope="module")
def colleague(pgp_keys):
    """A second signer's key in the correspondent's GnuPG home; its public key."""
    home = pgp_keys.customer
    if home.run("--list-secret-keys", COLLEAGUE, check=False).returncode != 0:
        home.gen_key(f"Colleague <{COLLEAGUE}>")
    return home.export(COLLEAGUE)


def _sigs(c):
    return sorted((s["signer"], s["valid"]) for s in c["signatures"])


def signed_by_two(content: bytes, sig: bytes, mid: str) -> bytes:
    """multipart/signed whose signature part (base64) holds the given OpenPGP packets."""
    return HEAD.format(mid=mid).encode() + crlf(
        b'Content-Type: multipart/signed; micalg=pgp-sha256; '
        b'protocol="application/pgp-signature"; boundary="sig"\n\n--sig\n'
        + content + b"\n--sig\nContent-Type: application/pgp-signature\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(sig) + b"--sig--\n")


class TestSeveralSignatures:
    def test_two_valid_signatures_are_both_recorded(self, pgp_env, pgp_keys, colleague,
                                                    deliver):
        """Clearsigned by the sender and a colleague (both keys known): both recorded,
        each with signer, key id and fingerprint; the message is valid."""
        pgp_env.stores.pgp.import_(colleague)
        signed = pgp_keys.customer.run("--clearsign", "-u", CUSTOMER, "-u", COLLEAGUE,
                                       input=b"Signed by two.\n").stdout
        c = deliver(inline(signed, "two1")).crypto
        assert c["signature_valid"] is True and c["signer"] == CUSTOMER and c["error"] == ""
        assert _sigs(c) == [(COLLEAGUE, True), (CUSTOMER, True)]
        fprs = {pgp_keys.customer.fingerprint(CUSTOMER), pgp_keys.customer.fingerprint(COLLEAGUE)}
        assert {s["fingerprint"] for s in c["signatures"]} == fprs
        assert {s["key_id"] for s in c["signatures"]} == {f[-16:] for f in fprs}
        assert all(s["method"] == "pgp" for s in c["signatures"])

    def test_a_bad_signature_next_to_a_good_one_makes_the_message_invalid(
            self, pgp_env, pgp_keys, colleague, deliver):
        """The sender's good signature and a colleague's bad one: both recorded, the
        message is not valid and the error names the bad signer."""
        pgp_env.stores.pgp.import_(colleague)
        cust = pgp_keys.customer
        good = cust.run("--detach-sign", "-u", CUSTOMER, input=crlf(INNER)).stdout
        bad = cust.run("--detach-sign", "-u", COLLEAGUE, input=b"something else\n").stdout
        c = deliver(signed_by_two(INNER, good + bad, "two2")).crypto
        assert c["signed"] and c["signature_valid"] is False and c["signer"] == CUSTOMER
        assert _sigs(c) == [(COLLEAGUE, False), (CUSTOMER, True)]
        assert "signature invalid: signature bad" in c["error"] and COLLEAGUE in c["error"]

    def test_signature_by_an_unknown_key_makes_the_message_invalid(self, pgp_env, pgp_keys,
                                                                   colleague, deliver):
        """A second signature whose key the gateway lacks cannot be checked: recorded
        with its key id, and the message is not valid."""
        signed = pgp_keys.customer.run("--clearsign", "-u", COLLEAGUE, "-u", CUSTOMER,
                                       input=b"Signed by two.\n").stdout
        c = deliver(inline(signed, "two3")).crypto
        assert c["signature_valid"] is False and c["signer"] == CUSTOMER
        unknown = next(s for s in c["signatures"] if not s["valid"])
        assert unknown["key_id"] == pgp_keys.customer.fingerprint(COLLEAGUE)[-16:]
        assert unknown["signer"] == ""
        assert "no public key" in c["error"]

    def test_encrypted_and_signed_by_two(self, pgp_env, pgp_keys, colleague, deliver):
        """Encrypted and signed by two keys: both signatures recorded after decryption."""
        pgp_env.stores.pgp.import_(colleague)
        armored = pgp_keys.customer.run("--armor", "--encrypt", "-r", SUPPORT, "--sign",
                                        "-u", CUSTOMER, "-u", COLLEAGUE, input=INNER).stdout
        c = deliver(pgp_mime_encrypted(armored, "two4")).crypto
        assert c["decrypted"] and c["signature_valid"] is True
        assert _sigs(c) == [(COLLEAGUE, True), (CUSTOMER, True)]

    def test_valid_signatures_none_by_the_sender_are_not_valid(self, pgp_env, pgp_keys,
                                                               colleague, deliver):
        """Only a colleague signed (validly): recorded as valid, the message is not valid
        for the sender in From."""
        pgp_env.stores.pgp.import_(colleague)
        signed = pgp_keys.customer.run("--clearsign", "-u", COLLEAGUE,
                                       input=b"Signed by the colleague.\n").stdout
        c = deliver(inline(signed, "two5")).crypto
        assert _sigs(c) == [(COLLEAGUE, True)]
        assert c["signature_valid"] is False and "signer mismatch" in c["error"]

    def test_a_single_signature_is_one_entry(self, pgp_env, pgp_keys, deliver):
        """One good signature: one entry, the message valid as before."""
        sig = pgp_keys.customer.detach_sign(INNER, CUSTOMER)
        c = deliver(pgp_mime_signed(INNER, sig, "two6")).crypto
        assert _sigs(c) == [(CUSTOMER, True)] and c["signature_valid"] is True


    def test_a_bad_first_signature_does_not_hide_the_others(self, pgp_env, pgp_keys,
                                                            colleague, deliver):
        """A detached set whose first signature is bad: gpg goes on to the next, so
        every signature is recorded (bad, then good ones) and the message is not valid."""
        pgp_env.stores.pgp.import_(colleague)
        cust = pgp_keys.customer
        bad = cust.run("--detach-sign", "-u", COLLEAGUE, input=b"something else\n").stdout
        good = cust.run("--detach-sign", "-u", CUSTOMER, input=crlf(INNER)).stdout
        also = cust.run("--detach-sign", "-u", COLLEAGUE, input=crlf(INNER)).stdout
        c = deliver(signed_by_two(INNER, bad + good + also, "two7")).crypto
        assert [(s["signer"], s["valid"]) for s in c["signatures"]] == [
            (COLLEAGUE, False), (CUSTOMER, True), (COLLEAGUE, True)]
        assert c["signatures"][0]["error"] == "signature bad"
        assert c["signatures"][0]["fingerprint"] == cust.fingerprint(COLLEAGUE)
        assert c["signed"] and c["signature_valid"] is False and c["signer"] == CUSTOMER
        assert "signature invalid: signature bad" in c["error"] and COLLEAGUE in c["error"]

    def test_a_bad_first_signature_in_a_clearsigned_block(self, pgp_env, pgp_keys,
                                                          colleague, deliver):
        """A clearsigned block whose armor holds a bad signature before the sender's good
        one: both recorded, the message not valid."""
        pgp_env.stores.pgp.import_(colleague)
        cust = pgp_keys.customer
        block = cust.clearsign(b"Signed text.\n", CUSTOMER)
        head, _, armor = block.partition(b"-----BEGIN PGP SIGNATURE-----")
        good = cust.run("--dearmor", input=b"-----BEGIN PGP SIGNATURE-----" + armor).stdout
        bad = cust.run("--detach-sign", "--textmode", "-u", COLLEAGUE,
                       input=b"Other text.\n").stdout
        both = base64.encodebytes(bad + good)
        signed = (head + b"-----BEGIN PGP SIGNATURE-----\n\n" + both
                  + b"-----END PGP SIGNATURE-----\n")
        c = deliver(inline(signed, "two8")).crypto
        assert [(s["signer"], s["valid"]) for s in c["signatures"]] == [
            (COLLEAGUE, False), (CUSTOMER, True)]
        assert c["signature_valid"] is False and "signature bad" in c["error"]

    def test_encrypted_with_a_bad_first_signature_records_every_signature(
            self, pgp_env, pgp_keys, colleague, deliver):
        """Encrypted and signed by two (one-pass, as gpg --encrypt --sign makes it) whose
        first signature is bad: decrypted, both signatures recorded in order, not valid
        (PGP/MIME and inline)."""
        pgp_env.stores.pgp.import_(colleague)
        armored = encrypted_with_bad_first_signature(pgp_keys.customer, INNER, COLLEAGUE,
                                                     CUSTOMER)
        text = encrypted_with_bad_first_signature(pgp_keys.customer, b"inline secret\n",
                                                  COLLEAGUE, CUSTOMER)
        for raw, shown in ((pgp_mime_encrypted(armored, "two9"), "VPN drops"),
                           (inline(text, "two10"), "inline secret")):
            d = deliver(raw)
            c = d.crypto
            assert c["encrypted"] and c["decrypted"], c["error"]
            assert [(s["signer"], s["valid"]) for s in c["signatures"]] == [
                (COLLEAGUE, False), (CUSTOMER, True)]
            assert c["signatures"][0]["error"] == "signature bad"
            assert c["signatures"][1]["fingerprint"] == pgp_keys.customer.fingerprint(CUSTOMER)
            assert c["signed"] and c["signature_valid"] is False and c["signer"] == CUSTOMER
            assert "signature bad" in c["error"] and COLLEAGUE in c["error"]
            assert shown in d.article["body"]


def _packets(peer, data: bytes) -> list[bytes]:
    """The top-level OpenPGP packets of data, cut where gpg --list-packets says."""
    listing = peer.run("--list-packets", input=data).stdout.decode()
    out = []
    for line in listing.splitlines():
        if line.startswith("# off="):
            f = dict(w.split("=", 1) for w in line[2:].split() if "=" in w)
            off, size = int(f["off"]), int(f["hlen"]) + int(f["plen"])
            out.append(data[off:off + size])
    return out


def encrypted_with_bad_first_signature(peer, content: bytes, bad_signer: str,
                                       good_signer: str) -> bytes:
    """gpg --encrypt --sign -u BAD -u GOOD, except that BAD's signature packet (the
    first after the data) was made over other data; to SUPPORT, armored.

    gpg signs and encrypts in one go, so the signed stream is made with --sign, the
    bad signer's packet swapped for one from a signature over other text, and the
    result encrypted as it is (--no-literal)."""
    signed = peer.run("--sign", "--compress-algo", "none", "-u", bad_signer, "-u",
                      good_signer, input=content).stdout
    other = peer.run("--sign", "--compress-algo", "none", "-u", bad_signer, "-u",
                     good_signer, input=b"something else\n").stdout
    ops1, ops2, literal, _replaced, sig_good = _packets(peer, signed)
    swapped = _packets(peer, other)[3]
    assert peer.fingerprint(bad_signer)[-16:] in peer.run(
        "--list-packets", input=swapped).stdout.decode().upper()
    inner = ops1 + ops2 + literal + swapped + sig_good
    return peer.run("--armor", "--encrypt", "--no-literal", "-r", SUPPORT,
                    input=inner).stdout


NOMAIL = "Build Server"


@pytest.fixture(scope="module")
def nomail_key(pgp_keys):
    """A key whose only user id names no e-mail address; its public key."""
    home = pgp_keys.customer
    if home.run("--list-secret-keys", NOMAIL, check=False).returncode != 0:
        home.gen_key(NOMAIL)
    return home.export(NOMAIL)


class TestSignerWithoutAddress:
    def test_good_signature_by_a_key_without_address_is_not_the_senders(
            self, pgp_env, pgp_keys, nomail_key, deliver):
        """A good signature by a known key that has no e-mail address cannot be From's:
        recorded as a good signature, the message not valid, the reason says why."""
        pgp_env.stores.pgp.import_(nomail_key)
        fpr = pgp_keys.customer.fingerprint(NOMAIL)
        sig = pgp_keys.customer.detach_sign(INNER, NOMAIL)
        c = deliver(pgp_mime_signed(INNER, sig, "na1")).crypto
        assert [(s["signer"], s["valid"], s["fingerprint"]) for s in c["signatures"]] == [
            ("", True, fpr)]
        assert c["signed"] and c["signature_valid"] is False and c["signer"] == ""
        assert "signer mismatch" in c["error"] and "no e-mail address" in c["error"]
        assert fpr[-16:] in c["error"]

    def test_tickets_show_says_the_key_has_no_address(self, pgp_env, pgp_keys, nomail_key,
                                                      deliver):
        """`tickets show N` names a good signature by a key without address as such,
        not as an unknown signer, and gives the reason in the crypto line."""
        import contextlib
        import io

        from gateway.cli import main

        pgp_env.stores.pgp.import_(nomail_key)
        sig = pgp_keys.customer.detach_sign(INNER, NOMAIL)
        d = deliver(pgp_mime_signed(INNER, sig, "na3"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["--config", str(pgp_env.conf), "tickets", "show", d.ticket["number"]])
        assert rc == 0
        text = out.getvalue()
        key_id = pgp_keys.customer.fingerprint(NOMAIL)[-16:]
        assert f"signature 1 (pgp): signer without e-mail address, key {key_id}: valid" in text
        assert "has no e-mail address" in text and "NOT valid" in text

    def test_no_address_key_next_to_the_senders_signature(self, pgp_env, pgp_keys,
                                                          nomail_key, deliver):
        """The sender's good signature and a good one by a key without address: every
        signature is good and one is the sender's, so the message is valid."""
        pgp_env.stores.pgp.import_(nomail_key)
        signed = pgp_keys.customer.run("--clearsign", "-u", CUSTOMER, "-u", NOMAIL,
                                       input=b"Signed by two.\n").stdout
        c = deliver(inline(signed, "na2")).crypto
        assert sorted((s["signer"], s["valid"]) for s in c["signatures"]) == [
            ("", True), (CUSTOMER, True)]
        assert c["signature_valid"] is True and c["signer"] == CUSTOMER and c["error"] == ""


class TestPgpImport:
    def test_wrong_passphrase_refused(self, crypto_env, pgp_keys):
        """Importing a protected secret key with a wrong passphrase: clear error, key not kept."""
        st = crypto_env.stores.pgp
        with pytest.raises(KeyStoreError, match="wrong passphrase"):
            st.import_(pgp_keys.support_secret, "wrong")
        assert not any(k.secret for k in st.all_keys())

    def test_protected_key_without_passphrase_refused(self, crypto_env, pgp_keys):
        """A protected secret key without --passphrase-file: refused, says what is missing."""
        with pytest.raises(KeyStoreError, match="passphrase-file"):
            crypto_env.stores.pgp.import_(pgp_keys.support_secret)

    def test_passphrase_file_private(self, pgp_env):
        """The stored passphrase file is readable by its owner only."""
        st = pgp_env.stores.pgp
        fpr = next(k.fingerprint for k in st.all_keys() if k.secret)
        assert st.passphrase_path(fpr).stat().st_mode & 0o077 == 0
        assert st.passphrase(fpr) == SUPPORT_PASS


def _agent_running(home) -> bool:
    res = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "--no-autostart",
                          "GETINFO pid", "/bye"], capture_output=True, timeout=30, check=False)
    return b"no gpg-agent running" not in res.stderr and res.stdout.startswith(b"D ")


class TestAgentLifetime:
    def test_closing_the_gateway_stops_its_gpg_agent(self, pgp_env, pgp_keys):
        """gpg starts an agent for the GnuPG home on the first decrypt; a stopped
        gateway must not leave it behind."""
        from gateway.app import Gateway

        armored = pgp_keys.customer.encrypt(INNER, SUPPORT, sign_as=CUSTOMER)
        kill_agent(pgp_env.gnupg_home)           # the fixture's own imports started one
        gw = Gateway(pgp_env.config)
        gw.prepare_store()
        env = Envelope(mail_from=CUSTOMER, recipients=(SUPPORT,),
                       raw=crlf(pgp_mime_encrypted(armored, "agent-1")))
        try:
            out = asyncio.run(gw.pipeline.deliver(env))
            assert out.replies[0].ok and out.action == "new"
            assert _agent_running(pgp_env.gnupg_home)
        finally:
            gw.close()
        assert not _agent_running(pgp_env.gnupg_home)


class TestRedecryptText:
    def test_text_output_shows_partial_signing_and_every_signature(self, pgp_env, pgp_keys,
                                                                   colleague, deliver):
        """`tickets redecrypt N` without --json: one line per signature with its signer,
        key id and whether it is valid (why not), and a line saying that only part of
        the body is signed."""
        import contextlib
        import io

        from gateway.cli import main

        signed = pgp_keys.customer.run("--clearsign", "-u", COLLEAGUE, "-u", CUSTOMER,
                                       input=b"Signed by two.\n").stdout
        d = deliver(inline(b"Added by someone.\n\n" + signed, "rd1"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["--config", str(pgp_env.conf), "tickets", "redecrypt",
                       d.ticket["number"]])
        assert rc == 0
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("article ") and "signature_valid=False" in lines[0]
        assert "  partially signed: text outside the signed block is not covered by a " \
               "signature" in lines
        ours = pgp_keys.customer.fingerprint(CUSTOMER)[-16:]
        theirs = pgp_keys.customer.fingerprint(COLLEAGUE)[-16:]
        sigs = sorted(ln.strip().split(" ", 3)[3] for ln in lines if ln.startswith("  signature "))
        assert len(sigs) == 2
        assert sigs[0] == f"{CUSTOMER}, key {ours}: valid"
        assert sigs[1].startswith(f"unknown signer, key {theirs}: NOT valid (")
        assert "no public key" in sigs[1]


class TestShowText:
    def test_tickets_show_reads_the_crypto_result(self, pgp_env, pgp_keys, deliver):
        """`tickets show N` without --json writes the crypto result as sentences, with the
        partial signing and each signature, not as a raw dictionary."""
        import contextlib
        import io

        from gateway.cli import main

        signed = pgp_keys.customer.run("--clearsign", "-u", CUSTOMER,
                                       input=b"Signed part.\n").stdout
        d = deliver(inline(b"Added by someone.\n\n" + signed, "show1"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["--config", str(pgp_env.conf), "tickets", "show", d.ticket["number"]])
        assert rc == 0
        text = out.getvalue()
        assert "{'" not in text
        assert f"Crypto: signed (pgp) by {CUSTOMER}: valid" in text
        assert "  partially signed: text outside the signed block is not covered" in text
        assert f"  signature 1 (pgp): {CUSTOMER}, key " in text
