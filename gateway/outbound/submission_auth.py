"""AUTH of the submission listener: PLAIN and LOGIN behind the lock-out.

A mixin of SubmissionSession (gateway.outbound.submission): aiosmtpd's AUTH
refused inside a mail transaction (RFC 4954 4: 503) before the password is checked
or counted, Postfix's 501 without a mechanism, mechanism names in any case; a PLAIN
authorization identity other than the user's own is refused, and so is an empty
response ("=" as the initial one), as a wrong password is. The password check
(scrypt) runs on a worker thread (Submission.verify).
"""

from __future__ import annotations

from base64 import b64decode
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult

from gateway.outbound.submission_policy import Submission
from gateway.outbound.submission_replies import (
    AUTH_BAD,
    AUTH_IN_TRANSACTION,
    AUTH_OK,
    AUTH_SYNTAX,
    LOCKED_OUT,
)

# The listener's logger: the lines read as they did before AUTH had a module of its own.
log = structlog.get_logger("gateway.outbound.submission")


class SubmissionAuth(SMTP):
    """AUTH PLAIN and LOGIN of a submission session (mixed into SubmissionSession)."""

    # Set by SubmissionSession.
    sub: Submission
    _cmd: tuple[str, str] | None

    # AUTH LOGIN's prompts as Postfix (Cyrus SASL) and Dovecot send them; aiosmtpd's end
    # in a NUL byte.
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def _auth_offered(self) -> bool:
        """Whether EHLO lists AUTH (after STARTTLS where TLS is required for it)."""
        return not self._auth_require_tls or self._tls_protocol is not None

    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH behind the lock-out; refused inside a mail transaction
        (RFC 4954 4: 503), before the password is checked or counted; the mechanism in
        any case; Postfix's 501 without one."""
        assert self.session is not None
        # The mechanism only: the rest of the line is the client's credentials.
        self._cmd = ("AUTH", f"AUTH {(arg or '').split(' ', 1)[0][:20]}")
        if self.envelope is not None and self.envelope.mail_from:
            await self.push(AUTH_IN_TRANSACTION)
            return
        if (self.session.extended_smtp and self._auth_offered()
                and not self.session.authenticated):
            args = (arg or "").split()
            if not 1 <= len(args) <= 2:
                await self.push(AUTH_SYNTAX)
                return
            # SASL mechanism names in any case, as Dovecot and Cyrus SASL take them.
            arg = " ".join([args[0].upper(), *args[1:]])
        client = self.session.peer[0] if isinstance(self.session.peer, tuple) else ""
        if not self.sub.guard.begin(client):
            await self.push(LOCKED_OUT)
            return
        try:
            await super().smtp_AUTH(arg)
        finally:
            self.sub.guard.end(client)

    async def _check(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        assert self.session is not None
        name = login.decode("utf-8", "replace")
        user = await self.sub.verify(name, password.decode("utf-8", "replace"))
        if user is None:
            self.sub.auth_failed(self.session.peer, name)
            return AuthResult(success=False, handled=False, message=AUTH_BAD)
        self.sub.guard.succeeded(self.session.peer[0] if isinstance(self.session.peer, tuple)
                                 else "")
        self.session.deskgate_user = user  # type: ignore[attr-defined]
        log.info("submission AUTH ok", user=name, mechanism=mechanism)
        return AuthResult(success=True, auth_data=user, message=AUTH_OK)

    async def _initial_response(self, arg: str) -> bytes | None:
        """AUTH's decoded initial response ("=" is an empty one, RFC 4954 4); None once
        501 is answered to one that is not base64."""
        if arg == "=":
            return b""
        try:
            return b64decode(arg.encode(), validate=True)
        except ValueError:
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob: bytes | None
        if len(args) == 1:
            response = await self.challenge_auth("")
            blob = response if isinstance(response, bytes) else None
        else:
            blob = await self._initial_response(args[1])
        if blob is None:
            return AuthResult(success=False, handled=True)
        if not blob:
            # An empty response names no user and no password: a failed attempt.
            return await self._check("PLAIN", b"", b"")
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        if parts[0] and parts[0] != parts[1]:
            # No user may act as another (RFC 4616 authzid): refused, and counted.
            assert self.session is not None
            self.sub.auth_failed(self.session.peer, parts[1].decode("utf-8", "replace"))
            return AuthResult(success=False, handled=False, message=AUTH_BAD)
        return await self._check("PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login: bytes | None
        if len(args) == 1:
            response = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            login = response if isinstance(response, bytes) else None
        else:
            login = await self._initial_response(args[1])
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check("LOGIN", login, password)
