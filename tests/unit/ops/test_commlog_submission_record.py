"""The communication of a submission connection that went wrong (submission_record)."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.outbound.submission_record import MAX_REFUSALS_LOGGED, SubmissionRecord, transaction


def entries(rec: SubmissionRecord) -> list[tuple[str, str, str]]:
    return [(e.priority, e.key, e.value) for e in rec.obj.entries]


def test_refusals_past_the_cap_are_counted_not_logged() -> None:
    """A client refused again and again does not grow one communication without end."""
    rec = SubmissionRecord("192.0.2.1:4711")
    for n in range(MAX_REFUSALS_LOGGED + 5):
        rec.refused("RCPT", f"RCPT TO:<u{n}@customer.test>", "452 4.5.3 Too many recipients")
    comm = rec.finish()
    got = entries(rec)
    assert sum(1 for _, k, _ in got if k == "RCPT") == MAX_REFUSALS_LOGGED
    assert got[-1] == ("Notice", "Refused", "5 more refused commands not logged")
    assert (comm.status, comm.direction, comm.account_type) == ("Warning", "Outgoing", "SMTP")


def test_a_lost_transaction_is_failed_and_a_bare_timeout_a_warning() -> None:
    env = SimpleNamespace(mail_from="<>", rcpt_tos=["a@customer.test"])
    lost = SubmissionRecord("192.0.2.1:1")
    assert lost.finish(lost=f"during DATA of {transaction(env)}", timed_out=True).status \
        == "Failed"
    assert entries(lost)[-1] == ("Error", "Connection", "timed out during DATA of the "
                                 "transaction from <> with 1 recipient(s)")
    idle = SubmissionRecord("192.0.2.1:2")
    assert idle.finish(timed_out=True).status == "Warning"
    assert entries(idle)[-1] == ("Notice", "Connection", "closed after the idle timeout")
