"""What a submission connection that went wrong leaves in the communication log.

A message the listener queues has its own communication (the outbound pipeline
writes it); a connection where nothing went wrong writes nothing else. At the first
problem (a command refused 4xx/5xx, a failed STARTTLS handshake) the session starts a
`SubmissionRecord`; when the connection closes, a record, an open transaction (the
client went away, or the idle timeout ended it) or a timeout becomes one Outgoing
SMTP communication with a Connection object: a Notice per refused command with the
reply sent (the first MAX_REFUSALS_LOGGED of them, then one Notice counting the
rest), and an Error when a transaction was lost. Failed AUTH has its own
communication (gateway.outbound.submission_policy) and is not repeated here; no
entry holds AUTH data, only the mechanism.
"""

from __future__ import annotations

from typing import Any

from gateway.commlog import Comm, CommObj, Status

MAX_REFUSALS_LOGGED = 100     # Notices for refused commands on one connection


class SubmissionRecord:
    """The Connection object of one submission connection, from its first problem."""

    def __init__(self, peer: str) -> None:
        self.comm = Comm("Outgoing", "SMTP", peer)
        self.obj: CommObj = self.comm.obj("Connection")
        self.obj.log("Info", "Connection", f"from {peer}")
        self.refusals = 0
        self.warned = False

    def refused(self, key: str, subject: str, reply: str) -> None:
        """A command answered 4xx/5xx: a Notice naming what and the reply sent."""
        self.refusals += 1
        if self.refusals <= MAX_REFUSALS_LOGGED:
            self.obj.log("Notice", key, f"{subject} refused: {reply}" if subject else reply)

    def warn(self, key: str, text: str) -> None:
        self.warned = True
        self.obj.log("Warn", key, text)

    def finish(self, *, lost: str = "", timed_out: bool = False,
               error: BaseException | None = None) -> Comm:
        """Close it when the connection is gone; `lost` describes the transaction that
        was open ("during DATA of the transaction from <a@b> with 1 recipient(s)")."""
        obj = self.obj
        n = self.refusals - MAX_REFUSALS_LOGGED
        if n > 0:
            obj.log("Notice", "Refused", f"{n} more refused command{'s' * (n != 1)} "
                    "not logged")
        status: Status = "Warning" if self.refusals or self.warned else "Successful"
        if lost:
            how = "timed out" if timed_out else "connection lost"
            cause = f" ({error})" if error is not None and str(error) else ""
            obj.log("Error", "Connection", f"{how} {lost}{cause}")
            status = "Failed"
        elif timed_out:
            obj.log("Notice", "Connection", "closed after the idle timeout")
            status = "Warning"
        obj.close(status)
        self.comm.close(status)
        return self.comm


def transaction(env: Any) -> str:
    """'the transaction from <a@b> with 2 recipient(s)' of an aiosmtpd Envelope."""
    sender = "" if env.mail_from == "<>" else env.mail_from or ""
    return f"the transaction from <{sender}> with {len(env.rcpt_tos)} recipient(s)"
