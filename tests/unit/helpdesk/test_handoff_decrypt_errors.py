"""Which errors of decrypting again at hand-off time are temporary (the attempt is
retried) and which are final (the stored form is handed over)."""

from __future__ import annotations

import pytest

from gateway.helpdesk.mime import temporary_failure


class TestTemporaryFailure:
    """The crypto layer's texts for 'gpg/openssl gave no answer' are temporary."""

    @pytest.mark.parametrize("text", [
        "PGP: cannot decrypt: gpg did not answer within 30 s",
        "S/MIME: openssl did not answer within 30 s",
        "listing the keys: gpg did not answer within 30 s",
        "listing the keys: gpg failed (exit status 2): gpg: can't connect to the agent",
        "cannot run gpg (/usr/bin/gpg2): [Errno 2] No such file or directory",
        "S/MIME: cannot run openssl: No such file or directory",
        "PGP: decryption failed: No agent running",
        "PGP: cannot decrypt now: gpg gave no answer (exit status 2) "
        "(temporary; deskgate tickets redecrypt can decrypt it later)",
    ])
    def test_no_answer_is_temporary(self, text: str) -> None:
        """A timeout, a gpg or openssl that cannot run, an unreachable agent."""
        assert temporary_failure(text)

    @pytest.mark.parametrize("text", [
        "PGP: no secret key",
        "PGP: cannot decrypt: wrong passphrase for the secret key",
        "S/MIME: no private key of a system address among the recipients",
        "S/MIME: cannot decrypt: error:1C800064:Provider routines::bad decrypt",
        "PGP: decrypt_message failed: Unknown system error",
        "PGP/MIME: multipart/encrypted without the encrypted part",
    ])
    def test_key_and_message_problems_are_final(self, text: str) -> None:
        """No key, a wrong passphrase or a damaged message: another try changes nothing."""
        assert not temporary_failure(text)
