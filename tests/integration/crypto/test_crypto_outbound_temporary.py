"""Outbound signing/encryption that fails for a temporary reason (gpg timed out, could
not reach its agent) is tried again later, not refused or sent unprotected; a real
key problem is still refused."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.app import Gateway
from gateway.crypto import pgpkeyring
from gateway.crypto.pgpkeyring import GpgUnavailable, PgpStore
from gateway.outbound.autoresponse import build_requests
from gateway.store.tables import AutoResponse, AutoResponseRequest, CommEntry
from tests.integration.crypto.crypto_helpers import CUSTOMER, CryptoEnv
from tests.integration.crypto.test_crypto_outbound import message, outbound_rows, submit
from tests.peers.gpg import GpgPeer, kill_agent

# gpg's options for signing (python-gnupg: --sign/-sa/-sb; with encryption: --sign).
SIGNING = "-s|-sa|-sb|--sign|--detach-sign"
LISTING = "--list-keys|--list-secret-keys"


def wrapper(tmp_path: Path, when: str, then: str) -> Path:
    """A gpg that runs `then` when one of its arguments matches the case pattern `when`,
    and is the real gpg otherwise."""
    path = tmp_path / "gpg-wrapper"
    path.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in ' + when + ")\n  " + then
                    + ";;\nesac; done\nexec gpg \"$@\"\n")
    path.chmod(0o755)
    return path


def use_gpg(env: CryptoEnv, binary: Path | str) -> None:
    (env.conf / "60-gpg.toml").write_text(f'[crypto]\ngpg_binary = "{binary}"\n')
    env.reload()


def comm_entries(env: CryptoEnv) -> list[tuple[str, str, str]]:
    """(priority, key, value) of every communication log entry."""
    from sqlalchemy import create_engine

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(
            select(CommEntry.priority, CommEntry.key, CommEntry.value)).all()]
    eng.dispose()
    return rows  # type: ignore[return-value]


@pytest.fixture
def short_gpg_timeout(monkeypatch):
    monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)


class TestRelayPath:
    def test_signing_timeout_is_a_temporary_failure(self, pgp_env, tmp_path,
                                                    short_gpg_timeout):
        """A signing gpg killed after its timeout: 451 (the client sends it again),
        nothing queued, and the log names the timeout; not a 554 refusal."""
        use_gpg(pgp_env, wrapper(tmp_path, SIGNING, "exec sleep 20"))
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 451 and data == b""
        entries = comm_entries(pgp_env)
        assert any(p == "Warn" and k == "Crypto" and "gpg did not answer within 2 s" in v
                   for p, k, v in entries), entries
        assert any(p == "Error" and "not queued (451)" in v and "did not answer" in v
                   for p, _, v in entries), entries

    def test_key_listing_timeout_does_not_send_plain(self, pgp_env, tmp_path,
                                                     short_gpg_timeout):
        """encrypt=opportunistic while listing the keys times out: the recipient who has
        a key is not sent a plain copy (as if there were no key); 451, nothing queued."""
        use_gpg(pgp_env, wrapper(tmp_path, LISTING, "exec sleep 20"))
        res, data = submit(pgp_env, message("X-Deskgate-Encrypt: opportunistic\r\n"))
        assert res.reply.code == 451 and data == b""
        assert outbound_rows(pgp_env) == []
        assert any(p == "Warn" and k == "Crypto" and "listing the keys" in v
                   for p, k, v in comm_entries(pgp_env))

    def test_unreachable_agent_is_a_temporary_failure(self, pgp_env, tmp_path):
        """gpg finds no gpg-agent when signing (and may not start one): 451, not a
        refusal."""
        home = pgp_env.gnupg_home
        use_gpg(pgp_env, wrapper(tmp_path, SIGNING, f'gpgconf --homedir "{home}" --kill '
                                 'gpg-agent; exec gpg --no-autostart "$@"'))
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 451 and data == b""
        assert any(p == "Warn" and k == "Crypto" and "No agent running" in v
                   for p, k, v in comm_entries(pgp_env)), comm_entries(pgp_env)

    def test_gpg_that_cannot_be_started_is_a_temporary_failure(self, pgp_env, tmp_path):
        """A gpg_binary that cannot be run: 451 naming it, not a refusal."""
        use_gpg(pgp_env, tmp_path / "no-such-gpg")
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 451 and data == b""
        assert any(p == "Warn" and k == "Crypto" and "no-such-gpg" in v
                   for p, k, v in comm_entries(pgp_env))

    def test_wrong_passphrase_is_still_refused(self, pgp_env):
        """A key problem (the stored passphrase does not fit) stays a permanent 554."""
        st = pgp_env.stores.pgp
        fpr = next(k.fingerprint for k in st.all_keys() if k.secret)
        st.passphrase_path(fpr).write_text("not-the-passphrase\n")
        kill_agent(pgp_env.gnupg_home)       # forget the passphrase cached at import
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 554 and "wrong passphrase" in res.reply.text
        assert data == b""


class TestKeyListing:
    def test_timed_out_listing_raises_and_is_not_kept(self, pgp_env, tmp_path,
                                                      short_gpg_timeout):
        """A listing that timed out raises GpgUnavailable (no empty key list, which would
        read as 'no key' until the keyring changes); once gpg answers, the keys are there."""
        hang = wrapper(tmp_path, LISTING, "exec sleep 20")
        store = PgpStore(pgp_env.gnupg_home, str(hang))
        with pytest.raises(GpgUnavailable, match="did not answer within 2 s"):
            store.find(CUSTOMER, encrypt=True)
        hang.write_text('#!/bin/sh\nexec gpg "$@"\n')
        assert [k.addresses for k in store.find(CUSTOMER, encrypt=True)] == [(CUSTOMER,)]


SIGNED_QUEUE = ('[[queue]]\nname = "Signed"\naddress = "signed@example.org"\nsign = "pgp"\n'
                'auto_response_new = "Ticket {ticket_number} received."\n'
                '[[address]]\nemail = "signed@example.org"\nqueue = "Signed"\n')


def incoming() -> bytes:
    return (f"From: {CUSTOMER}\r\nTo: signed@example.org\r\nSubject: help\r\n"
            "Message-ID: <tmp1@customer.test>\r\n\r\nplease help\r\n").encode()


class TestAutoResponse:
    def test_signing_timeout_is_built_again_and_then_sent(self, crypto_env, deliver, tmp_path,
                                                          short_gpg_timeout):
        """An auto-response whose signing gpg timed out stays as a request (a failed
        build, a Warn naming the cause) and is built, signed and queued on the retry."""
        GpgPeer(crypto_env.gnupg_home).gen_key("Signed <signed@example.org>")
        (crypto_env.conf / "80-signed.toml").write_text(SIGNED_QUEUE)
        gpg = wrapper(tmp_path, SIGNING, "exec sleep 20")
        use_gpg(crypto_env, gpg)
        d = deliver(incoming(), rcpts=("signed@example.org",))
        assert d.outcome.action == "new"
        assert outbound_rows(crypto_env) == []
        gw = Gateway(crypto_env.config)
        try:
            with gw.engine.connect() as conn:
                (req,) = conn.execute(select(AutoResponseRequest.__table__)).all()
                counted = conn.execute(select(AutoResponse.id)).all()
            assert req.attempts == 1 and "gpg did not answer within 2 s" in req.last_error
            assert req.next_attempt is not None and len(counted) == 1
            entries = comm_entries(crypto_env)
            assert any(p == "Warn" and k == "AutoResponse" and "did not answer" in v
                       and "again" in v for p, k, v in entries), entries
            assert not any(v.startswith("no auto-response") for _, _, v in entries)
            # gpg answers again and the retry is due: built, signed and queued.
            gpg.write_text('#!/bin/sh\nexec gpg "$@"\n')
            with gw.engine.begin() as conn:
                conn.execute(update(AutoResponseRequest).values(next_attempt=None))
            assert asyncio.run(build_requests(lambda: gw.runtime, gw.writer, gw.engine)) == 1
            with gw.engine.connect() as conn:
                assert conn.execute(select(AutoResponseRequest.id)).all() == []
        finally:
            gw.close()
        (row,) = outbound_rows(crypto_env)
        assert message_from_bytes(row).get_content_type() == "multipart/signed"
