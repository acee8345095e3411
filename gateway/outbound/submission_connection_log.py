"""The communication log of a submission connection: a record from the first
problem on (none while all goes well), each refusal noted with its command, and the
connection's communication written when it ends, if something went wrong on it.

A mixin of SubmissionSession (gateway.outbound.submission), which calls _refusal
on every 4xx/5xx reply it pushes and _log_connection when the connection is lost.
"""

from __future__ import annotations

import structlog
from aiosmtpd.smtp import SMTP

from gateway.outbound.submission_policy import Submission, peer_text
from gateway.outbound.submission_record import SubmissionRecord, transaction
from gateway.outbound.submission_replies import AUTH_BAD, INTERNAL_ERROR

# The listener's logger: the lines read as they did before this had a module of its own.
log = structlog.get_logger("gateway.outbound.submission")


class ConnectionLog(SMTP):
    """The communication log of one submission session (mixed into SubmissionSession)."""

    # Set by SubmissionSession.
    sub: Submission
    _record: SubmissionRecord | None
    _cmd: tuple[str, str] | None
    _stage: str
    _txn: str
    _timed_out: bool
    _quit: bool

    def _note(self) -> SubmissionRecord:
        if self._record is None:
            peer = self.session.peer if self.session is not None else None
            self._record = SubmissionRecord(peer_text(peer))
        return self._record

    def _log_connection(self, error: Exception | None) -> None:
        """The connection's communication, when something went wrong on it."""
        env = self.envelope
        lost = ""
        if self._stage:
            lost = f"{self._stage} of {self._txn}"
        elif env is not None and env.mail_from and not self._quit:
            lost = f"before DATA of {transaction(env)}"
        if self._record is None and not lost and not self._timed_out:
            return
        try:
            self.sub.write_log(self._note().finish(lost=lost, timed_out=self._timed_out,
                                                   error=error))
        except Exception:
            log.exception("submission: the connection was not logged",
                          client=peer_text(self.session.peer if self.session else None))

    def _refusal(self, status: str) -> None:
        """A 4xx/5xx reply on its way out, noted in the record with its command. Not
        the refusals logged on their own: a wrong password (submission_policy's
        auth_failed) and an internal error (internal_error)."""
        cmd, self._cmd = self._cmd, None
        if status.startswith((AUTH_BAD[:3], INTERNAL_ERROR[:9])):
            return
        key, subject = cmd or ("SMTP", "")
        if cmd is None and '" not recognized' in status:
            # aiosmtpd echoes the command word: a client out of step in AUTH may have
            # sent its credentials as one.
            status = status.partition('"')[0] + "(not logged) not recognized"
        self._note().refused(key, subject, status)
