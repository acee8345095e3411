"""An openssl that gives no answer (hangs past its timeout, or cannot be started) while
it checks an S/MIME signature: the signature is recorded as not checked (not as
invalid), the way a PGP signature gpg did not check is."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.crypto import smime
from tests.integration.crypto.crypto_helpers import CUSTOMER
from tests.integration.crypto.test_crypto_keys_cli import cli
from tests.integration.crypto.test_crypto_outbound_temporary import comm_entries
from tests.integration.crypto.test_crypto_smime_inbound import (
    inner_entity,
    sign,
    with_headers,
)

WORDS = "openssl did not answer within 2 s"


@pytest.fixture
def short_openssl_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smime, "TIMEOUT", 2)


def hanging_openssl(tmp_path: Path, when: str) -> Path:
    """An openssl that sleeps when one of its arguments matches the case pattern `when`
    and is the real openssl otherwise."""
    path = tmp_path / "openssl-hangs"
    path.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in ' + when
                    + ")\n  exec sleep 20;;\nesac; done\nexec openssl \"$@\"\n")
    path.chmod(0o755)
    return path


def not_checked(c: dict, words: str) -> None:
    """The crypto result of a message whose one signature openssl did not check."""
    assert c["signed"] is True, repr(c)
    assert c["signature_valid"] is None, c
    assert "signature invalid" not in c["error"], c["error"]
    assert c["error"].startswith("signature not checked: ") and words in c["error"], c["error"]
    assert len(c["signatures"]) == 1, c["signatures"]
    assert c["signatures"][0]["method"] == "smime"
    assert c["signatures"][0]["valid"] is None
    assert words in c["signatures"][0]["error"]


class TestSmimeSignatureNotChecked:
    def test_detached_signature_openssl_hangs(self, crypto_env, deliver, tmp_path,
                                              short_openssl_timeout, monkeypatch):
        """multipart/signed while openssl's check hangs: stored within a bounded time,
        the signature not checked (null, not false) with the timeout as its reason, a
        Warn in the communication log, and tickets show says "not verified"."""
        raw = with_headers("nc-s1", sign(crypto_env, tmp_path, inner_entity()))
        monkeypatch.setattr(smime, "OPENSSL", str(hanging_openssl(tmp_path, "-CAfile")))
        t0 = time.monotonic()
        d = deliver(raw)
        assert time.monotonic() - t0 < 15
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        not_checked(d.crypto, WORDS)
        assert "PC LOAD LETTER" in d.article["body"]
        assert any(p == "Warn" and k == "Crypto" and "signature not checked" in v
                   and WORDS in v for p, k, v in comm_entries(crypto_env))
        shown = cli(crypto_env.conf, "tickets", "show", d.ticket["number"]).stdout
        assert "signed (smime)" in shown and ": not verified; error: signature not " \
            "checked: " in shown, shown
        assert f": not checked ({WORDS}" in shown, shown
        assert "NOT valid" not in shown, shown

    def test_every_openssl_call_hangs(self, crypto_env, deliver, tmp_path,
                                      short_openssl_timeout, monkeypatch):
        """When the signer lookup hangs as well, the signature is still not checked and
        the message is stored within one timeout and a few seconds."""
        raw = with_headers("nc-s2", sign(crypto_env, tmp_path, inner_entity()))
        monkeypatch.setattr(smime, "OPENSSL", str(hanging_openssl(tmp_path, "-verify")))
        t0 = time.monotonic()
        d = deliver(raw)
        assert time.monotonic() - t0 < 8
        not_checked(d.crypto, WORDS)

    def test_opaque_signature_openssl_hangs(self, crypto_env, deliver, tmp_path,
                                            short_openssl_timeout, monkeypatch):
        """signed-data (opaque) while openssl's check hangs: not checked, and the content
        is still read out (the signer lookup answers)."""
        raw = with_headers("nc-s3", sign(crypto_env, tmp_path, inner_entity(), "-nodetach"))
        monkeypatch.setattr(smime, "OPENSSL", str(hanging_openssl(tmp_path, "-CAfile")))
        d = deliver(raw)
        not_checked(d.crypto, WORDS)
        assert d.crypto["signer"] == CUSTOMER
        assert "PC LOAD LETTER" in d.article["body"]

    def test_openssl_cannot_be_started(self, crypto_env, deliver, tmp_path, monkeypatch):
        """No openssl to run: not checked, the reason names it."""
        raw = with_headers("nc-s4", sign(crypto_env, tmp_path, inner_entity()))
        monkeypatch.setattr(smime, "OPENSSL", str(tmp_path / "no-such-openssl"))
        d = deliver(raw)
        not_checked(d.crypto, "cannot run ")

    def test_verify_returns_unchecked(self, crypto_env, tmp_path, short_openssl_timeout,
                                      monkeypatch):
        """smime.verify itself: a Verification that is not valid and not checked, its
        one SignerResult not checked with the reason; it does not raise."""
        raw = sign(crypto_env, tmp_path, b"hello\r\n", "-nodetach", "-outform", "DER")
        monkeypatch.setattr(smime, "OPENSSL", str(hanging_openssl(tmp_path, "-CAfile")))
        v = smime.verify(raw, None, crypto_env.root / "keys/smime/ca.pem")
        assert not v.valid and not v.checked
        assert [(s.checked, s.valid) for s in v.signatures] == [(False, False)]
        assert WORDS in v.signatures[0].error and WORDS in v.error
        assert v.signers == [CUSTOMER]
