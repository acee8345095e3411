"""A gpg that gives no answer (hangs past its timeout, or exits without a status line)
while it checks a signature or decrypts: the signature is recorded as not checked (not
as invalid) and an undecrypted message's error says the failure was temporary."""

from __future__ import annotations

import json
import time

import pytest

from gateway.crypto import pgp, pgpkeyring
from gateway.crypto.pgpkeyring import PgpStore
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, CryptoEnv
from tests.integration.crypto.test_crypto_keys_cli import cli
from tests.integration.crypto.test_crypto_outbound_temporary import (
    comm_entries,
    use_gpg,
    wrapper,
)
from tests.integration.crypto.test_crypto_pgp_inbound import (
    COLLEAGUE,
    INNER,
    encrypted_with_bad_first_signature,
    inline,
    pgp_mime_encrypted,
    pgp_mime_signed,
)

# How each broken gpg behaves, and the words its cause must hold.
BROKEN = {"hangs": ("exec sleep 20", "gpg did not answer within 2 s"),
          "fails": ("echo 'gpg: waiting for lock (held by 4242) ...' >&2; exit 2",
                    "gpg gave no answer (exit status 2")}
VERIFY = "--verify"
DECRYPT = "--decrypt"


@pytest.fixture
def short_gpg_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)


@pytest.fixture
def colleague_key(pgp_keys) -> bytes:
    """A second signer's key in the correspondent's GnuPG home; its public key."""
    home = pgp_keys.customer
    if home.run("--list-secret-keys", COLLEAGUE, check=False).returncode != 0:
        home.gen_key(f"Colleague <{COLLEAGUE}>")
    return home.export(COLLEAGUE)


def not_checked(c: dict, words: str) -> None:
    """The crypto result of a message whose one signature gpg did not check."""
    assert c["signed"] is True
    assert c["signature_valid"] is None, c
    assert "signature invalid" not in c["error"], c["error"]
    assert c["error"].startswith("signature not checked: ") and words in c["error"], c["error"]
    assert len(c["signatures"]) == 1
    assert c["signatures"][0]["valid"] is None
    assert words in c["signatures"][0]["error"]


def redecrypted(env: CryptoEnv, number: str) -> dict:
    r = cli(env.conf, "tickets", "redecrypt", number, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]["crypto"]


class TestSignatureNotChecked:
    @pytest.mark.parametrize("how", sorted(BROKEN))
    def test_detached_signature(self, pgp_env, pgp_keys, deliver, tmp_path,
                                short_gpg_timeout, how):
        """PGP/MIME signed mail while gpg's --verify hangs or fails: stored, the signature
        not checked (signature_valid null, not false), the cause in the error and a Warn
        in the communication log; once gpg answers, tickets redecrypt finds it valid."""
        then, words = BROKEN[how]
        sig = pgp_keys.customer.detach_sign(INNER, CUSTOMER)
        use_gpg(pgp_env, wrapper(tmp_path, VERIFY, then))
        t0 = time.monotonic()
        d = deliver(pgp_mime_signed(INNER, sig, f"nc-{how}"))
        assert time.monotonic() - t0 < 15
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        not_checked(d.crypto, words)
        assert any(p == "Warn" and k == "Crypto" and "signature not checked" in v
                   and words in v for p, k, v in comm_entries(pgp_env))
        shown = cli(pgp_env.conf, "tickets", "show", d.ticket["number"]).stdout
        assert "Crypto: signed (pgp): not verified; error: signature not checked: " in shown
        assert f"signature 1 (pgp): unknown signer: not checked ({words}" in shown
        use_gpg(pgp_env, "gpg")
        c = redecrypted(pgp_env, d.ticket["number"])
        assert c["signature_valid"] is True and c["signer"] == CUSTOMER and c["error"] == ""

    def test_clearsigned_block(self, pgp_env, pgp_keys, deliver, tmp_path, short_gpg_timeout):
        """An inline clearsigned body while gpg's --verify hangs: not checked, not invalid."""
        then, words = BROKEN["hangs"]
        signed = pgp_keys.customer.clearsign(b"Please call me back.\n", CUSTOMER)
        use_gpg(pgp_env, wrapper(tmp_path, VERIFY, then))
        d = deliver(inline(signed, "nc-clear"))
        not_checked(d.crypto, words)
        assert "Please call me back." in d.article["body"]

    def test_a_bad_signature_next_to_an_unchecked_one_is_still_invalid(self, pgp_env):
        """A signature gpg found bad keeps the message invalid whatever another's state."""
        from gateway.crypto.inbound import _Peeler

        peeler = _Peeler(pgp_env.stores, [SUPPORT], CUSTOMER)
        peeler._signatures("pgp", [
            pgp.PgpSignature("A1", "", [CUSTOMER], False, "signature bad"),
            pgp.PgpSignature("", "", [], False, "gpg did not answer within 2 s",
                             checked=False)])
        c = peeler.finish().crypto
        assert c.signature_valid is False
        assert [s["valid"] for s in c.signatures] == [False, None]
        assert "signature invalid: signature bad" in c.error
        assert "signature not checked: gpg did not answer within 2 s" in c.error


class TestDecryptNoAnswer:
    @pytest.mark.parametrize("how", sorted(BROKEN))
    def test_decrypt_error_is_temporary(self, pgp_env, pgp_keys, tmp_path,
                                        short_gpg_timeout, how):
        """pgp.decrypt with a gpg that hangs or fails without a status line: a temporary
        PgpError naming the cause."""
        then, words = BROKEN[how]
        store = PgpStore(pgp_env.gnupg_home, str(wrapper(tmp_path, DECRYPT, then)))
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        with pytest.raises(pgp.PgpError) as exc:
            pgp.decrypt(store, armored, [SUPPORT])
        assert exc.value.temporary
        assert words in str(exc.value)

    def test_a_real_decryption_failure_is_not_temporary(self, pgp_env, pgp_keys):
        """Data that is no OpenPGP message: gpg's answer, not temporary."""
        with pytest.raises(pgp.PgpError) as exc:
            pgp.decrypt(pgp_env.stores.pgp, b"-----BEGIN PGP MESSAGE-----\n\nAAAA\n"
                        b"-----END PGP MESSAGE-----\n", [SUPPORT])
        assert not exc.value.temporary

    def test_checking_the_signatures_inside_times_out(self, pgp_env, pgp_keys, colleague_key,
                                                      tmp_path, short_gpg_timeout):
        """Encrypted mail with a bad first signature is read a second time to check every
        signature; that second gpg hanging is a temporary PgpError too."""
        pgp_env.stores.pgp.import_(colleague_key)
        armored = encrypted_with_bad_first_signature(pgp_keys.customer, INNER,
                                                     COLLEAGUE, CUSTOMER)
        store = PgpStore(pgp_env.gnupg_home,
                         str(wrapper(tmp_path, "--no-batch", BROKEN["hangs"][0])))
        with pytest.raises(pgp.PgpError) as exc:
            pgp.decrypt(store, armored, [SUPPORT])
        assert exc.value.temporary and "gpg did not answer within 2 s" in str(exc.value)

    def test_stored_undecrypted_with_a_temporary_error(self, pgp_env, pgp_keys, deliver,
                                                        tmp_path, short_gpg_timeout):
        """PGP/MIME mail while gpg's decryption hangs: stored as received, the error says
        it was temporary and names tickets redecrypt, which decrypts it once gpg answers."""
        then, words = BROKEN["hangs"]
        use_gpg(pgp_env, wrapper(tmp_path, DECRYPT, then))
        d = deliver(pgp_mime_encrypted(pgp_keys.customer.encrypt(INNER, SUPPORT), "nc-dec"))
        c = d.crypto
        assert d.outcome.action == "new" and c["encrypted"] and not c["decrypted"]
        assert c["error"].startswith("PGP: cannot decrypt now: ") and words in c["error"]
        assert "tickets redecrypt" in c["error"]
        assert c["signature_valid"] is None
        use_gpg(pgp_env, "gpg")
        c = redecrypted(pgp_env, d.ticket["number"])
        assert c["decrypted"] and c["error"] == ""
