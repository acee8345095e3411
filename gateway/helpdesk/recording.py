"""The record of one hand-off attempt: its outcome on the outbox row and its Outgoing
communication (Connection + Message object) in the log, in one transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.commlog import Comm, add_comm
from gateway.helpdesk import outbox
from gateway.helpdesk.base import Connector, Delivered, HandoffError
from gateway.helpdesk.items import ItemError, take_note
from gateway.helpdesk.outbox_claim import INTERRUPTED
from gateway.runtime import Runtime
from gateway.store import Deferred


def record(conn: Connection, rt: Runtime, connector: Connector, c: outbox.Claimed,
           result: Delivered | None, error: HandoffError | None, seconds: float,
           later: Deferred | None = None) -> outbox.Outcome:
    """Outcome and communication log of one attempt, in one transaction (the log with
    the transaction's deferred rows when `later` is given)."""
    cfg = rt.config.helpdesk
    comm = Comm("Outgoing", "Handoff", f"{connector.type} {connector.account}"[:200])
    # The Connection object tells what the helpdesk said: none for an item that never
    # reached the connector.
    conn_obj = comm.obj("Connection") if not isinstance(error, ItemError) else None
    msg = comm.obj("Message")
    msg.article_id = c.article_id
    earlier = f" ({c.earlier} before a retry by hand)" if c.earlier else ""
    msg.log("Info", "Attempt", f"hand-off #{c.id} ({c.kind}) attempt {c.attempts + 1}"
            f"{earlier} to {connector.type}, {seconds * 1000:.0f} ms")
    if note := take_note(c):
        msg.log("Notice", "Crypto", note)
    if result is not None:
        assert conn_obj is not None
        for prio, key, value in result.log:
            conn_obj.log(prio, key, value)  # type: ignore[arg-type]
        out = outbox.record_delivered(conn, c, ticket_id=result.ticket_id,
                                      ticket_number=result.ticket_number)
        what = ", ".join(x for x in (
            f"helpdesk ticket {result.ticket_number}" if result.ticket_number else "",
            f"id {result.ticket_id}" if result.ticket_id else "", result.detail) if x)
        conn_obj.close("Successful")
        if out.status == "deleted":
            msg.log("Notice", "Deleted", f"the helpdesk took it ({what or 'delivered'}); "
                    f"{_DELETED}")
            msg.close("Warning")
        elif out.status == "superseded":
            msg.log("Warn", "Superseded", f"the helpdesk took it ({what or 'delivered'}); "
                    f"{_SUPERSEDED} (that attempt looks in the helpdesk first where the "
                    "connector can)")
            msg.close("Warning")
        else:
            msg.log("Info", "Delivered", what or "delivered")
            msg.close("Successful")
    else:
        assert error is not None
        if conn_obj is None:
            msg.log("Error", "Item", f"not handed to {connector.type}: {error}"[:4000])
        else:
            conn_obj.log("Error" if not error.temporary else "Warn", "Helpdesk",
                         str(error)[:4000])
            conn_obj.close("Failed")
        out = outbox.record_failure(conn, c, str(error), temporary=error.temporary,
                                    schedule=cfg.retry)
        if out.status == "deleted":
            msg.log("Notice", "Deleted", f"{error}"[:3000] + f"; {_DELETED}")
            msg.close("Warning")
        elif out.status == "superseded":
            msg.log("Warn", "Superseded", f"{error}"[:3000] + f"; {_SUPERSEDED}")
            msg.close("Warning")
        elif out.status == "failed":
            why = "permanent error" if not error.temporary else "retries exhausted"
            # An ItemError is permanent only when the ticket or article is gone.
            then = (f"`deskgate handoff delete {c.id}` removes the row"
                    if isinstance(error, ItemError) and not error.temporary
                    else f"`deskgate handoff retry {c.id}` tries again")
            msg.log("Error", "Failed", f"{why}: {error}"[:4000] + f"; {then}")
            msg.close("Failed")
        else:
            assert out.next_attempt is not None
            msg.log("Warn", "Deferred", f"{error}"[:3000] + f"; next attempt "
                    f"{out.next_attempt:%Y-%m-%d %H:%M:%S}")
            msg.close("Warning")
    comm.close()
    add_comm(conn, comm, later)
    return out


def record_interrupted(conn: Connection, connector: Connector, lost: outbox.Lost,
                       later: Deferred | None = None) -> None:
    """The communication log of an attempt that ended without an outcome (its node was
    killed or hung past the lease), which `outbox.expire` took back uncounted: a Warn
    Interrupted, and when the row ran out of time an Error Failed. It has no
    Connection object: what the helpdesk said, if anything, is not known."""
    c, out = lost.claimed, lost.outcome
    comm = Comm("Outgoing", "Handoff", f"{connector.type} {connector.account}"[:200])
    msg = comm.obj("Message")
    msg.article_id = c.article_id
    if not lost.again:
        then = "handing it off again now (that attempt looks in the helpdesk first)"
    elif out.status == "failed":
        then = ("it was interrupted twice in a row and its time in the outbox (the sum of "
                "[helpdesk] retry) has run out")
    else:
        assert out.next_attempt is not None
        then = ("it was interrupted twice in a row, so it waits for [helpdesk] retry: "
                f"next attempt {out.next_attempt:%Y-%m-%d %H:%M:%S}")
    msg.log("Warn", "Interrupted", f"hand-off #{c.id} ({c.kind}): {INTERRUPTED}; the "
            f"attempt by {c.node} ended without an outcome (its lease ran out at "
            f"{lost.lease_until:%Y-%m-%d %H:%M:%S} UTC) and may or may not have reached "
            f"the helpdesk; {then}"[:4000])
    if out.status == "failed":
        msg.log("Error", "Failed", f"time in the outbox ran out: {INTERRUPTED}; "
                f"`deskgate handoff retry {c.id}` tries again")
        msg.close("Failed")
    else:
        msg.close("Warning")
    comm.close()
    add_comm(conn, comm, later)


_DELETED = ("not recorded: the hand-off was deleted (`deskgate handoff delete`) while "
            "this attempt ran")
_SUPERSEDED = ("not recorded: this attempt's lease ran out and another claim took the "
               "hand-off over or delivered it")
