"""What an admin meets when a key is not usable: recipients whose certificate is not
yet valid, PGP keys that are revoked, expired or disabled, a signing key whose stored
passphrase is wrong; inbound, S/MIME and PGP bodies that are damaged."""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
import time

import pytest

from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, SUPPORT_PASS, crlf
from tests.integration.crypto.test_crypto_outbound import message, plain_text, submit
from tests.integration.crypto.test_crypto_pgp_inbound import INNER, pgp_mime_encrypted
from tests.integration.crypto.test_crypto_smime_inbound import encrypt, with_headers
from tests.peers.gpg import GpgPeer

OTHER = "other@elsewhere.test"


def _log_entries(env) -> str:
    from sqlalchemy import create_engine, select

    from gateway.store.tables import CommEntry

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        rows = conn.execute(select(CommEntry.priority, CommEntry.key, CommEntry.value)).all()
    eng.dispose()
    return "\n".join(f"{p} {k} {v}" for p, k, v in rows)


class TestSmimeRecipientNotYetValid:
    def future_cert(self, env):
        cert = env.ca.issue("Customer", emails=(CUSTOMER,), days=60, not_before_days=-10,
                            filename="future")
        shutil.copy(cert.cert, env.root / "keys" / "smime" / f"{CUSTOMER}.pem")

    def test_required_refused_and_the_reply_says_not_yet_valid(self, crypto_env):
        """A certificate valid only from next week is not used; the reply says so and
        does not call it expired."""
        self.future_cert(crypto_env)
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 554 and res.reply.enhanced == "5.7.5"
        assert "not valid before" in res.reply.text and "expired" not in res.reply.text
        assert data == b""

    def test_opportunistic_plain_and_logged(self, crypto_env):
        """opportunistic: sent plain; the log says the certificate is not yet valid."""
        self.future_cert(crypto_env)
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: opportunistic\r\n"))
        assert res.reply.code == 250
        assert b"pkcs7" not in data and "Grüße" in plain_text(data)


    def test_keys_smime_list_flags_it_not_yet_valid(self, crypto_env):
        """`keys smime list` flags the certificate not yet valid, with its start date,
        and does not call it expired (JSON and text); a valid one has neither flag."""
        from tests.integration.crypto.test_crypto_keys_cli import cli, listed

        self.future_cert(crypto_env)
        rows = {e["addresses"][0]: e for e in listed(crypto_env.conf, "smime")}
        future = rows[CUSTOMER]
        assert future["not_yet_valid"] is True and future["expired"] is False
        start = dt.datetime.fromisoformat(future["not_before"])
        assert dt.timedelta(days=9) < start - dt.datetime.now(dt.UTC) < dt.timedelta(days=11)
        assert rows[SUPPORT]["not_yet_valid"] is False and rows[SUPPORT]["expired"] is False
        assert dt.datetime.fromisoformat(rows[SUPPORT]["not_before"]) < dt.datetime.now(dt.UTC)
        text = cli(crypto_env.conf, "keys", "smime", "list").stdout
        line = next(ln for ln in text.splitlines() if CUSTOMER in ln)
        assert "not-yet-valid" in line and "expired" not in line

    def test_keys_smime_import_warns_not_yet_valid(self, crypto_env):
        """Importing a certificate valid only from next week warns that it is not valid
        before its start date, not that it has expired."""
        from tests.integration.crypto.test_crypto_keys_cli import cli

        cert = crypto_env.ca.issue("Other", emails=(OTHER,), days=60, not_before_days=-10,
                                   filename="futother")
        r = cli(crypto_env.conf, "keys", "smime", "import", str(cert.cert))
        assert r.returncode == 0, r.stderr
        assert "is not valid before" in r.stderr and "expired" not in r.stderr

    def test_own_certificate_not_yet_valid_refuses_signing(self, crypto_env):
        """sign=smime with the queue's certificate valid only from next week: 554."""
        new = crypto_env.ca.issue("Support", emails=(SUPPORT,), days=60, not_before_days=-10,
                                  filename="futsup")
        sdir = crypto_env.root / "keys" / "smime"
        shutil.copy(new.cert, sdir / f"{SUPPORT}.pem")
        shutil.copy(new.key, sdir / f"{SUPPORT}.key")
        res, data = submit(crypto_env, message("X-Deskgate-Sign: smime\r\n"))
        assert res.reply.code == 554 and "not valid before" in res.reply.text
        assert data == b""


class TestSmimeSigningPassphrase:
    def test_wrong_stored_passphrase_refuses_with_the_reason(self, crypto_env):
        """sign=smime with a key whose passphrase file is wrong: 554 naming the
        passphrase, nothing queued unsigned."""
        from cryptography.hazmat.primitives import serialization

        from gateway.crypto.keystore import load_private_key

        sdir = crypto_env.root / "keys" / "smime"
        key = load_private_key(crypto_env.support.key.read_bytes(), None, "k")
        (sdir / f"{SUPPORT}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right")))
        pp = sdir / f"{SUPPORT}.passphrase"
        pp.write_text("wrong\n")
        pp.chmod(0o600)
        res, data = submit(crypto_env, message("X-Deskgate-Sign: smime\r\n"))
        assert res.reply.code == 554 and "wrong passphrase" in res.reply.text
        assert data == b""


def _customer_key(env, pgp_keys, how: str) -> None:
    """The customer's PGP key in the gateway's keyring, made unusable `how`."""
    peer = GpgPeer()
    try:
        if how == "expired":
            peer.run("--quick-gen-key", f"Customer <{CUSTOMER}>", "default", "default",
                     "seconds=2")
        else:
            peer.gen_key(f"Customer <{CUSTOMER}>")
        fpr = peer.fingerprint(CUSTOMER)
        if how == "revoked":
            rev = (peer.home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
            peer.import_(rev.replace(b":-----BEGIN", b"-----BEGIN"))
        env.stores.pgp.import_(peer.export(CUSTOMER))
    finally:
        peer.close()
    if how == "disabled":
        subprocess.run(["gpg", "--homedir", str(env.gnupg_home), "--batch",
                        "--command-fd", "0", "--edit-key", fpr], input=b"disable\nsave\n",
                       capture_output=True, check=True, timeout=30)
    if how == "expired":
        time.sleep(3)


class TestPgpRecipientUnusable:
    @pytest.mark.parametrize("how", ["revoked", "expired", "disabled"])
    def test_required_refused_naming_why(self, crypto_env, pgp_keys, how):
        """encrypt=required and the customer's only PGP key revoked, expired or disabled:
        554 naming the reason (not "no certificate"), nothing queued."""
        crypto_env.stores.pgp.import_(pgp_keys.support_secret, SUPPORT_PASS)
        _customer_key(crypto_env, pgp_keys, how)
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 554 and res.reply.enhanced == "5.7.5", res.reply
        assert f"{CUSTOMER} (key {how})" in res.reply.text
        assert data == b""

    @pytest.mark.parametrize("how", ["revoked", "expired", "disabled"])
    def test_opportunistic_plain_for_that_recipient(self, crypto_env, pgp_keys, how):
        """opportunistic: the copy goes plain (never encrypted to a disabled key) and the
        communication log says why."""
        crypto_env.stores.pgp.import_(pgp_keys.support_secret, SUPPORT_PASS)
        _customer_key(crypto_env, pgp_keys, how)
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: opportunistic\r\n"))
        assert res.reply.code == 250, res.reply
        assert "Grüße" in plain_text(data)
        assert f"{CUSTOMER} (key {how})" in _log_entries(crypto_env)


class TestDamagedInbound:
    def test_truncated_smime_body_is_kept_with_the_reason(self, crypto_env, deliver, tmp_path):
        """Half an enveloped-data: stored as received, the error and a Warn say S/MIME."""
        out = encrypt(crypto_env, tmp_path, "cms", "-aes256")
        head, _, body = crlf(out).partition(b"\r\n\r\n")
        der = base64.b64decode(body)
        damaged = head + b"\r\n\r\n" + base64.encodebytes(der[:len(der) // 2])
        d = deliver(with_headers("t1", damaged))
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert d.crypto["error"].startswith("S/MIME: ")
        assert [a["filename"] for a in d.article["attachments"]] == ["smime.p7m"]
        assert "Warn Crypto S/MIME" in _log_entries(crypto_env)

    def test_garbage_smime_body_is_kept_with_the_reason(self, crypto_env, deliver, tmp_path):
        out = encrypt(crypto_env, tmp_path, "cms", "-aes256")
        head, _, _ = crlf(out).partition(b"\r\n\r\n")
        d = deliver(with_headers("t2", head + b"\r\n\r\nnot base64 at all !!\r\n"))
        assert d.outcome.action == "new"
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert d.crypto["error"].startswith("S/MIME: ")

    def test_truncated_pgp_body_is_kept_with_the_reason(self, pgp_env, pgp_keys, deliver):
        """Half a PGP message (armor intact): stored, 'PGP: cannot decrypt' and a Warn."""
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        lines = armored.splitlines()
        cut = b"\n".join(lines[:len(lines) // 2] + lines[-1:])   # keeps the END line
        d = deliver(pgp_mime_encrypted(cut, "t3"))
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert d.crypto["error"].startswith("PGP: cannot decrypt")
        assert "Warn Crypto PGP" in _log_entries(pgp_env)



def test_keys_pgp_list_flags_a_disabled_key(crypto_env, pgp_keys):
    """`keys pgp list` shows a key disabled in the keyring (JSON `disabled`, text flag)."""
    from tests.integration.crypto.test_crypto_keys_cli import cli, listed

    _customer_key(crypto_env, pgp_keys, "disabled")
    rows = {e["addresses"][0]: e for e in listed(crypto_env.conf, "pgp")}
    assert rows[CUSTOMER]["disabled"] is True and rows[CUSTOMER]["revoked"] is False
    text = cli(crypto_env.conf, "keys", "pgp", "list").stdout
    assert "disabled" in next(ln for ln in text.splitlines() if CUSTOMER in ln)


def test_pgp_signing_key_expired_refuses_with_the_reason(crypto_env):
    """sign=pgp with the queue address's secret key expired: 554 saying so, nothing queued."""
    peer = GpgPeer()
    try:
        peer.run("--quick-gen-key", f"Example Support <{SUPPORT}>", "default", "default",
                 "seconds=2")
        crypto_env.stores.pgp.import_(peer.export_secret(SUPPORT))
    finally:
        peer.close()
    time.sleep(3)
    res, data = submit(crypto_env, message("X-Deskgate-Sign: pgp\r\n"))
    assert res.reply.code == 554 and res.reply.enhanced == "5.7.5", res.reply
    assert f"no usable PGP secret key for {SUPPORT} (key expired)" in res.reply.text
    assert data == b""


class TestRequiredIsAFloor:
    def secure_queue(self, env, encrypt: str = "required") -> None:
        (env.conf / "80-secure.toml").write_text(
            f'[[queue]]\nname = "Secure"\naddress = "secure@example.org"\n'
            f'encrypt = "{encrypt}"\n[[address]]\nemail = "secure@example.org"\n'
            'queue = "Secure"\n')
        env.reload()

    @pytest.mark.parametrize("asked", ["never", "opportunistic"])
    def test_header_cannot_weaken_a_required_queue(self, crypto_env, asked):
        """A queue with encrypt = required: X-Deskgate-Encrypt: never/opportunistic on a
        message does not send it plain to a recipient without a key; it is refused."""
        self.secure_queue(crypto_env)
        res, data = submit(crypto_env, message(f"X-Deskgate-Encrypt: {asked}\r\n"),
                           queue="Secure")
        assert res.reply.code == 554 and res.reply.enhanced == "5.7.5", res.reply
        assert "encryption required" in res.reply.text
        assert data == b""
        assert (f"X-Deskgate-Encrypt: {asked} not followed: queue Secure requires "
                "encryption") in _log_entries(crypto_env)

    def test_header_may_still_ask_more_than_the_queue(self, crypto_env):
        """An opportunistic queue: X-Deskgate-Encrypt: required is honoured (refused)."""
        self.secure_queue(crypto_env, "opportunistic")
        res, _ = submit(crypto_env, message("X-Deskgate-Encrypt: required\r\n"),
                        queue="Secure")
        assert res.reply.code == 554

    def test_header_may_turn_off_an_opportunistic_queue(self, crypto_env):
        self.secure_queue(crypto_env, "opportunistic")
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: never\r\n"),
                           queue="Secure")
        assert res.reply.code == 250 and "Grüße" in plain_text(data)


class TestDamagedSignatures:
    def test_garbage_pgp_signature_is_invalid_not_unchecked(self, pgp_env, deliver):
        """A signature part that is no OpenPGP data: stored, signature_valid false (not
        'gpg gave no answer', which would read as temporary)."""
        from tests.integration.crypto.test_crypto_pgp_inbound import pgp_mime_signed

        garbage = (b"-----BEGIN PGP SIGNATURE-----\n\nbm90IGEgc2lnbmF0dXJl\n=AAAA\n"
                   b"-----END PGP SIGNATURE-----\n")
        d = deliver(pgp_mime_signed(INNER, garbage, "g1"))
        assert d.outcome.action == "new"
        assert d.crypto["signed"] and d.crypto["signature_valid"] is False, d.crypto
        assert "signature invalid" in d.crypto["error"]
        assert "Warn Crypto signature invalid" in _log_entries(pgp_env)

    def test_truncated_smime_signature_is_invalid(self, crypto_env, deliver, tmp_path):
        """Half a detached S/MIME signature: stored, signature_valid false, a reason."""
        from tests.integration.crypto.test_crypto_smime_inbound import inner_entity, sign

        raw = with_headers("g2", sign(crypto_env, tmp_path, inner_entity()))
        head, sep, rest = raw.partition(b'filename="smime.p7s"\r\n\r\n')
        b64, _, tail = rest.partition(b"\r\n\r\n")
        lines = b64.split(b"\r\n")
        raw = head + sep + b"\r\n".join(lines[:len(lines) // 2]) + b"\r\n\r\n" + tail
        d = deliver(raw)
        assert d.outcome.action == "new"
        assert d.crypto["signed"] and d.crypto["signature_valid"] is False, d.crypto
        assert d.crypto["error"].startswith("signature invalid")
