"""A gpg that does not answer (hangs past its timeout, exits non-zero, cannot be
started) while the PGP keys are listed: `deskgate keys pgp ...` says so in one line
and exits 75, `deskgate check` does not run gpg, and inbound mail is kept."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.crypto import pgpkeyring
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, CryptoEnv
from tests.integration.crypto.test_crypto_keys_cli import cli
from tests.integration.crypto.test_crypto_outbound_temporary import (
    LISTING,
    use_gpg,
    wrapper,
)
from tests.integration.crypto.test_crypto_pgp_inbound import INNER, pgp_mime_encrypted

# gpg's options for deleting a key (python-gnupg: --delete-key, --yes --delete-secret-key).
DELETING = "--delete-key|--delete-secret-key|--delete-keys|--delete-secret-keys"

# What each broken gpg is, and the words of the error it must give.
BROKEN = {"hangs": ("exec sleep 20", "gpg did not answer within 2 s"),
          "fails": ("echo 'gpg: keydb_search failed: Connection timed out' >&2; exit 2",
                    "gpg failed (exit status 2)")}


@pytest.fixture
def short_gpg_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)


def broken_gpg(env: CryptoEnv, tmp_path: Path, how: str) -> str:
    """Make the listing gpg of env hang or fail; the words its error must hold."""
    then, words = BROKEN[how]
    use_gpg(env, wrapper(tmp_path, LISTING, then))
    return words


class TestKeysPgpList:
    @pytest.mark.parametrize("how", sorted(BROKEN))
    @pytest.mark.parametrize("as_json", [False, True])
    def test_one_line_and_exit_75(self, pgp_env, tmp_path, short_gpg_timeout, how, as_json):
        """keys pgp list with a gpg that hangs or fails: exit 75 (EX_TEMPFAIL), one
        stderr line naming the cause, no traceback, nothing on stdout."""
        words = broken_gpg(pgp_env, tmp_path, how)
        t0 = time.monotonic()
        r = cli(pgp_env.conf, "keys", "pgp", "list", *(["--json"] if as_json else []))
        assert time.monotonic() - t0 < 15
        assert r.returncode == 75, (r.stdout, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("keys pgp list: listing the keys: ") and words in lines[0]
        assert "Traceback" not in r.stderr

    def test_gpg_that_cannot_be_started(self, pgp_env, tmp_path):
        """A gpg_binary that does not exist: exit 75 and a line naming it."""
        use_gpg(pgp_env, tmp_path / "no-such-gpg")
        r = cli(pgp_env.conf, "keys", "pgp", "list", "--json")
        assert r.returncode == 75 and r.stdout == ""
        assert r.stderr.startswith("keys pgp list: cannot run gpg (") and "no-such-gpg" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

    def test_works_again_once_gpg_answers(self, pgp_env, tmp_path, short_gpg_timeout):
        """The failed listing is not kept: with gpg answering again both keys are listed."""
        broken_gpg(pgp_env, tmp_path, "hangs")
        assert cli(pgp_env.conf, "keys", "pgp", "list").returncode == 75
        use_gpg(pgp_env, "gpg")
        r = cli(pgp_env.conf, "keys", "pgp", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert sorted(a for k in json.loads(r.stdout) for a in k["addresses"]) == \
            sorted([CUSTOMER, SUPPORT])

    def test_smime_list_does_not_need_gpg(self, pgp_env, tmp_path, short_gpg_timeout):
        """keys smime list runs no gpg: unaffected by a gpg that hangs."""
        broken_gpg(pgp_env, tmp_path, "hangs")
        r = cli(pgp_env.conf, "keys", "smime", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert any(SUPPORT in e["addresses"] for e in json.loads(r.stdout))


class TestKeysPgpImportRemove:
    @pytest.mark.parametrize("how", sorted(BROKEN))
    def test_remove(self, pgp_env, tmp_path, short_gpg_timeout, how):
        """keys pgp remove looks the key up first: exit 75 with the cause, nothing removed."""
        words = broken_gpg(pgp_env, tmp_path, how)
        r = cli(pgp_env.conf, "keys", "pgp", "remove", CUSTOMER)
        assert r.returncode == 75 and r.stdout == ""
        assert r.stderr.startswith("keys pgp remove: ") and words in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        use_gpg(pgp_env, "gpg")
        assert any(k.addresses == (CUSTOMER,) for k in pgp_env.stores.pgp.all_keys())

    @pytest.mark.parametrize("how", sorted(BROKEN))
    @pytest.mark.parametrize("who", [CUSTOMER, SUPPORT])
    def test_remove_whose_deletion_gets_no_answer(self, pgp_env, tmp_path, short_gpg_timeout,
                                                  how, who):
        """The lookup works but gpg's deletion hangs or fails: exit 75 with one line that
        names the cause, nothing on stdout, and the key is still listed (it was reported
        removed). For the secret key's address the secret key is kept too."""
        then, words = BROKEN[how]
        use_gpg(pgp_env, wrapper(tmp_path, DELETING, then))
        r = cli(pgp_env.conf, "keys", "pgp", "remove", who)
        assert r.returncode == 75, (r.stdout, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("keys pgp remove: ") and words in lines[0]
        assert "not removed" in lines[0] and lines[0].endswith("try again later")
        use_gpg(pgp_env, "gpg")
        keys = [k for k in pgp_env.stores.pgp.all_keys() if who in k.addresses]
        assert len(keys) == 1 and keys[0].secret is (who == SUPPORT)

    def test_remove_says_what_was_removed_before_the_failure(self, pgp_env, tmp_path,
                                                             short_gpg_timeout):
        """The secret key was deleted, the public key's deletion hangs: exit 75 and the
        line says the secret key was removed; the public key is still listed."""
        fpr = next(k.fingerprint for k in pgp_env.stores.pgp.all_keys() if k.secret)
        use_gpg(pgp_env, wrapper(tmp_path, "--delete-key", "exec sleep 20"))
        r = cli(pgp_env.conf, "keys", "pgp", "remove", SUPPORT)
        assert r.returncode == 75 and r.stdout == ""
        assert f"the key {fpr} was not removed: gpg did not answer within 2 s (the " \
               f"secret key {fpr} was removed before that)" in r.stderr
        use_gpg(pgp_env, "gpg")
        keys = [k for k in pgp_env.stores.pgp.all_keys() if SUPPORT in k.addresses]
        assert len(keys) == 1 and not keys[0].secret

    def test_remove_that_gpg_refuses(self, pgp_env, tmp_path):
        """gpg answers the deletion with a DELETE_PROBLEM: exit 65 with gpg's reason in
        one line, and the key is still listed."""
        use_gpg(pgp_env, wrapper(tmp_path, DELETING,
                                 "echo '[GNUPG:] DELETE_PROBLEM 3' >&2; exit 2"))
        r = cli(pgp_env.conf, "keys", "pgp", "remove", CUSTOMER, "--json")
        assert r.returncode == 65 and r.stdout == ""
        assert r.stderr.startswith("keys pgp remove: ") and "Ambiguous specification" in r.stderr
        assert "not removed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        use_gpg(pgp_env, "gpg")
        assert any(CUSTOMER in k.addresses for k in pgp_env.stores.pgp.all_keys())

    def test_remove_with_gpg_answering_removes(self, pgp_env):
        """The real gpg removes both keys of the secret key's address and the stored
        passphrase: exit 0, the key no longer listed."""
        fpr = next(k.fingerprint for k in pgp_env.stores.pgp.all_keys() if k.secret)
        r = cli(pgp_env.conf, "keys", "pgp", "remove", SUPPORT)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"removed {fpr}")
        assert not any(SUPPORT in k.addresses for k in pgp_env.stores.pgp.all_keys())
        assert not pgp_env.stores.pgp.passphrase_path(fpr).exists()

    @pytest.mark.parametrize("how", sorted(BROKEN))
    def test_import(self, pgp_env, pgp_keys, tmp_path, short_gpg_timeout, how):
        """keys pgp import lists the keys before and after: exit 75 with the cause
        (not 65, which says the file is bad)."""
        words = broken_gpg(pgp_env, tmp_path, how)
        pub = tmp_path / "cust.asc"
        pub.write_bytes(pgp_keys.customer_public)
        r = cli(pgp_env.conf, "keys", "pgp", "import", str(pub), "--json")
        assert r.returncode == 75 and r.stdout == ""
        assert r.stderr.startswith("keys pgp import: ") and words in r.stderr
        assert "Traceback" not in r.stderr


class TestCheck:
    def test_check_runs_no_gpg(self, pgp_env, tmp_path, short_gpg_timeout):
        """deskgate check does not list the PGP keys: a hanging gpg neither holds it up
        nor makes it fail."""
        broken_gpg(pgp_env, tmp_path, "hangs")
        t0 = time.monotonic()
        r = cli(pgp_env.conf, "check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 < 2
        assert "Traceback" not in r.stderr


class TestInbound:
    @pytest.mark.parametrize("how", sorted(BROKEN))
    def test_encrypted_mail_is_kept(self, pgp_env, pgp_keys, deliver, tmp_path,
                                    short_gpg_timeout, how):
        """PGP/MIME mail while listing the keys hangs or fails: stored as received (not
        quarantined, nothing lost) and the crypto error names the cause; `tickets
        redecrypt` can decrypt it later."""
        words = broken_gpg(pgp_env, tmp_path, how)
        armored = pgp_keys.customer.encrypt(INNER, SUPPORT)
        t0 = time.monotonic()
        d = deliver(pgp_mime_encrypted(armored, f"unavail-{how}"))
        assert time.monotonic() - t0 < 20
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert d.crypto["error"].startswith("PGP: listing the keys: ") and \
            words in d.crypto["error"], d.crypto["error"]
