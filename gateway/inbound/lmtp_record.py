"""What one LMTP connection leaves in the communication log.

The session feeds a `ConnectionRecord` as commands come in; when the connection
closes, `finish` turns it into a communication with one Connection object: the
peer and LHLO name, a Notice per refused command (the first MAX_REFUSALS_LOGGED
of them; one more Notice counts those left out), a summary of the messages and
an Error when the connection ended in the middle of a transaction. It holds only
counters and a bounded number of entries, so keeping it costs a message next to
nothing, and a connection refused recipient after recipient (a dictionary attack
relayed by the MTA) does not grow one communication without end.

`forwarded_client` writes what the MTA said about the original SMTP client of a
message (XFORWARD) as the message's Client entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.commlog import Comm, CommObj, Status
from gateway.errors import TEMPFAIL as TEMPFAIL_REPLY
from gateway.model import Outcome

# How a message ended, as the summary counts it.
STORED, DUPLICATE, TEMPFAIL = "stored", "duplicate", "temporary failure"
IGNORED, QUARANTINED, TOO_BIG = "ignored", "quarantined", "too big"
_KIND = {"new": STORED, "followup": STORED, "duplicate": DUPLICATE, "ignore": IGNORED,
         "quarantine": QUARANTINED}
MAX_REFUSALS_LOGGED = 100     # Notices for refused commands on one connection


class ConnectionRecord:
    """The Connection object of one LMTP connection, built while it runs."""

    def __init__(self, peer: str) -> None:
        self.comm = Comm("Incoming", "LMTP", peer)
        self.obj: CommObj = self.comm.obj("Connection")
        self.obj.log("Info", "Connection", f"from {peer}")
        self.counts = {STORED: 0, DUPLICATE: 0, TEMPFAIL: 0}
        self.messages = 0
        self.rcpts_refused = 0
        self.refusals = 0
        self.unlogged: dict[str, int] = {}     # refusals past the cap, by key
        self.timed_out = False
        self.raised: BaseException | None = None   # why the last delivery raised
        self._mail_from: str | None = None     # set while a transaction is open
        self._rcpts = 0
        self._stage = ""

    def lhlo(self, name: str) -> None:
        self.obj.log("Info", "LHLO", name)

    def refused(self, key: str, subject: str, reply: str) -> None:
        """A command answered 4xx/5xx: a Notice naming what and the reply sent."""
        self.refusals += 1
        if key == "RCPT":
            self.rcpts_refused += 1
        if self.refusals > MAX_REFUSALS_LOGGED:
            self.unlogged[key] = self.unlogged.get(key, 0) + 1
            return
        self.obj.log("Notice", key, f"{subject} refused: {reply}" if subject else reply)

    def unlogged_note(self) -> str:
        """What the Notice for the refusals past the cap says, "" when there were none."""
        n = sum(self.unlogged.values())
        if not n:
            return ""
        if set(self.unlogged) == {"RCPT"}:
            return f"{n} more refused recipient{'s' * (n != 1)} not logged"
        kinds = ", ".join(f"{c} {k}" for k, c in
                          sorted(self.unlogged.items(), key=lambda kc: (-kc[1], kc[0])))
        return f"{n} more refused command{'s' * (n != 1)} not logged ({kinds})"

    def mail(self, mail_from: str) -> None:
        self._mail_from, self._rcpts, self._stage = mail_from, 0, "before DATA"

    def rcpt(self) -> None:
        self._rcpts += 1

    def data(self) -> None:
        self._stage = "during DATA"

    def delivering(self) -> None:
        self._stage = "before the final reply"

    def message(self, outcome: Outcome | None) -> None:
        """A message got its final replies; None when delivery raised (temporary; the
        session set `raised`). A temporary failure gets a Warn naming the message, the
        reply and the cause: no Message communication was written for it (the
        database may be what failed)."""
        if outcome is None or (outcome.replies and outcome.replies[0].temporary):
            kind = TEMPFAIL
            self._tempfail(outcome)
        else:
            kind = _KIND.get(outcome.action, STORED)
        self.messages += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _tempfail(self, outcome: Outcome | None) -> None:
        if outcome is not None:
            reply, cause = str(outcome.replies[0]), outcome.detail
        else:
            error, self.raised = self.raised, None
            reply = str(TEMPFAIL_REPLY)
            cause = f"{type(error).__name__}: {error}" if error is not None else ""
        self.obj.log("Warn", "Message",
                     f"message from <{self._mail_from or ''}> to {self._rcpts} recipient(s) "
                     f"answered {reply}" + (f" ({cause[:2000]})" if cause else ""))

    def too_big(self) -> None:
        self.messages += 1
        self.counts[TOO_BIG] = self.counts.get(TOO_BIG, 0) + 1

    def ended(self) -> None:
        """The transaction is over: final reply sent, RSET or LHLO."""
        self._mail_from = None

    def summary(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items()
                           if n or kind in (STORED, DUPLICATE, TEMPFAIL))
        return (f"{self.messages} message(s): {counts}; "
                f"{self.rcpts_refused} recipient(s) refused")

    def finish(self, error: BaseException | None = None) -> Comm:
        """Close the object and the communication when the connection is gone."""
        obj = self.obj
        note = self.unlogged_note()
        if note:
            obj.log("Notice", "Refused", note)
        obj.log("Info", "Summary", self.summary())
        status: Status = "Successful"
        if self.refusals or self.counts[TEMPFAIL] or self.counts.get(TOO_BIG):
            status = "Warning"
        if self._mail_from is not None:
            how = "timed out" if self.timed_out else "connection lost"
            cause = f" ({error})" if error is not None and str(error) else ""
            obj.log("Error", "Connection",
                    f"{how} {self._stage} of the transaction from <{self._mail_from}> with "
                    f"{self._rcpts} recipient(s){cause}")
            status = "Failed"
        elif self.timed_out:
            obj.log("Info", "Connection", "closed after the idle timeout")
        obj.close(status)
        self.comm.close(status)
        return self.comm


LOCAL_SUBMISSION = "local submission (no client address)"


def forwarded_client(attrs: Mapping[str, str | None]) -> str:
    """The original client of an XFORWARD transaction as Postfix logs one:
    'mx.example.org[192.0.2.1]:4711 HELO mx.example.org, ESMTP, login alice'; "" when
    the MTA sent no ADDR. ADDR=[UNAVAILABLE] marks a local submission to the MTA, whose
    other client attributes are ignored (XFORWARD_README)."""
    addr = attrs.get("ADDR")
    if not addr:
        return LOCAL_SUBMISSION if "ADDR" in attrs else ""
    port = attrs.get("PORT")
    text = f"{attrs.get('NAME') or 'unknown'}[{addr}]" + (f":{port}" if port else "")
    helo = attrs.get("HELO")
    if helo:
        text += f" HELO {helo}"
    proto, login = attrs.get("PROTO"), attrs.get("LOGIN")
    return ", ".join([text, *([proto] if proto else []),
                      *([f"login {login}"] if login else [])])
