"""Error tree. Replies to mail clients carry a generic text; the cause goes to the log."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class SmtpReply:
    """An SMTP/LMTP reply: code, enhanced status code and text."""

    code: int
    enhanced: str
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @cached_property
    def wire(self) -> bytes:
        """The reply line as the listeners send it (CRLF included), made once."""
        return f"{self}\r\n".encode("utf-8", "surrogateescape")


# Named replies, so no literal is scattered around the listeners.
OK = SmtpReply(250, "2.0.0", "OK")
DELIVERED = SmtpReply(250, "2.1.5", "delivered")
DUPLICATE = SmtpReply(250, "2.1.5", "already delivered")
IGNORED = SmtpReply(250, "2.1.5", "accepted and dropped by policy")
QUARANTINED = SmtpReply(250, "2.1.5", "accepted into quarantine")
SENDER_OK = SmtpReply(250, "2.1.0", "sender OK")
RCPT_OK = SmtpReply(250, "2.1.5", "recipient OK")
TEMPFAIL = SmtpReply(451, "4.3.0", "temporary local problem, try again later")
RCPT_TEMP_INVALID = SmtpReply(450, "4.2.1", "mailbox temporarily disabled")
RCPT_INVALID = SmtpReply(550, "5.2.1", "mailbox disabled")
RCPT_UNKNOWN = SmtpReply(550, "5.1.1", "no such system address")
TOO_BIG = SmtpReply(552, "5.3.4", "message too big")
TOO_MANY_RCPTS = SmtpReply(452, "4.5.3", "too many recipients")
BAD_SEQUENCE = SmtpReply(503, "5.5.1", "bad sequence of commands")
SYNTAX = SmtpReply(501, "5.5.4", "syntax error in parameters")
BAD_ADDRESS = SmtpReply(553, "5.1.3", "malformed address")
SHUTTING_DOWN = SmtpReply(421, "4.3.2", "service shutting down")


class DeskgateError(Exception):
    """Base of our own exceptions."""


class TemporaryError(DeskgateError):
    """Something that may work on a retry (database down, peer unreachable)."""


class PermanentError(DeskgateError):
    """Something that will not work on a retry (bad data, policy refusal)."""


class InUse(DeskgateError):
    """Something `deskgate serve` needs (pid file, socket, port) is taken; the text names it."""


@dataclass(frozen=True)
class ConfigError:
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.reason}"
        return f"{self.file}: {self.reason}"


class ConfigErrors(DeskgateError):
    """One or more configuration errors; str() lists them one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
