"""The Connection object an LMTP connection leaves in the communication log."""

from __future__ import annotations

from gateway import errors
from gateway.inbound.lmtp_record import ConnectionRecord
from gateway.model import Outcome


def outcome(action, reply=errors.DELIVERED):
    return Outcome(replies=(reply,), action=action)


class TestConnectionRecord:
    def test_summary_counts_each_ending(self):
        """Stored counts new and follow-up; other endings are named only when they happen."""
        r = ConnectionRecord("unix")
        for o in (outcome("new"), outcome("followup"), outcome("duplicate", errors.DUPLICATE),
                  outcome("quarantine", errors.QUARANTINED), outcome("new", errors.TEMPFAIL),
                  None):
            r.mail("a@c.test")
            r.message(o)
            r.ended()
        r.too_big()
        assert r.summary() == ("7 message(s): 2 stored, 1 duplicate, 2 temporary failure, "
                               "1 quarantined, 1 too big; 0 recipient(s) refused")

    def test_temporary_failure_is_a_warning(self):
        """A message answered 451 makes the connection Warning, not Failed."""
        r = ConnectionRecord("127.0.0.1:2525")
        r.mail("a@c.test")
        r.message(outcome("new", errors.TEMPFAIL))
        r.ended()
        comm = r.finish()
        assert (comm.status, comm.objects[0].status) == ("Warning", "Warning")
        assert comm.end is not None and comm.account == "127.0.0.1:2525"

    def test_open_transaction_at_close_is_failed(self):
        """Closing with MAIL given and no final reply is Failed with one Error entry that
        names the sender, the recipients and the stage."""
        r = ConnectionRecord("unix")
        r.mail("a@c.test")
        r.rcpt()
        r.data()
        r.delivering()
        comm = r.finish(ConnectionResetError("reset by peer"))
        assert comm.status == "Failed"
        [err] = [e for e in comm.objects[0].entries if e.priority == "Error"]
        assert err.value == ("connection lost before the final reply of the transaction "
                             "from <a@c.test> with 1 recipient(s) (reset by peer)")

    def test_idle_timeout_is_not_a_failure(self):
        """An idle connection closed by the timeout stays Successful."""
        r = ConnectionRecord("unix")
        r.timed_out = True
        comm = r.finish()
        assert comm.status == "Successful"
        assert [e.value for e in comm.objects[0].entries][-1] == \
            "closed after the idle timeout"
