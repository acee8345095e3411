"""Attempts that ended without an outcome: a claim whose lease ran out (its node was
killed, crashed or hung) is taken back as an interrupted attempt. As in the outbound
queue (and as with Postfix's crashed delivery agent) it is no failed attempt: it is
not counted, and the row is handed off again at once; when that attempt is
interrupted too, the row is deferred by its time in the outbox, and fails once that
time exceeds the sum of [helpdesk] retry, so that a message that kills the process
on every attempt is not tried for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from gateway.helpdesk.outbox_claim import INTERRUPTED, Claimed, Outcome
from gateway.outbound.queue import _aware, interrupted_delay, utcnow
from gateway.store.tables import Handoff

# The last_error of earlier releases, which counted such an attempt as failed (rows
# may still hold it).
LOST = "hand-off attempt did not finish (the process ended or hung)"


@dataclass(frozen=True)
class Lost:
    """A claim whose lease ran out with no outcome, taken back uncounted."""

    claimed: Claimed             # as it was claimed (its claim, attempts before it)
    lease_until: datetime
    # pending (next_attempt: now, handed off again at once; with `again`, on the
    # schedule by its time in the outbox) | failed (`again`, that time ran out)
    outcome: Outcome
    again: bool = False          # the attempt it interrupted had taken over one itself


def expire(conn: Connection, *, schedule: tuple[float, ...],
           held: Mapping[int, str] | None = None, limit: int = 100,
           now: datetime | None = None) -> list[Lost]:
    """Take back each claim whose lease ran out without an outcome (its node was
    killed, crashed or hung). The attempt, counted at its claim, is uncounted and
    last_error says INTERRUPTED with the claim and the end of its lease; the row is
    due at once. When the row's last attempt before was interrupted too, it waits
    instead for the retry delay its time in the outbox has reached, or fails after
    the schedule's whole time. Rows in `held` (row id → claim) whose claim is still
    that one are left alone: this process's attempts still run."""
    now = now or utcnow()
    q = (select(Handoff).where(Handoff.status == "pending", Handoff.next_attempt <= now,
                               Handoff.claimed_by != "", Handoff.lease_until < now)
         .order_by(Handoff.id).limit(limit))
    if held:
        q = q.where(~or_(*(and_(Handoff.id == hid, Handoff.claimed_by == name[:200])
                           for hid, name in held.items())))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    out: list[Lost] = []
    for r in conn.execute(q).all():
        lease = _aware(r.lease_until) or now
        again = r.last_error.startswith(INTERRUPTED)
        attempts = max(r.attempts - 1, 0)
        error = (f"{INTERRUPTED}: the attempt by {r.claimed_by} ended without an outcome "
                 f"(its lease ran out at {lease:%Y-%m-%d %H:%M:%S} UTC)")
        values: dict[str, Any] = {"attempts": attempts, "lease_until": None,
                                  "claimed_by": "", "last_error": error, "updated": now}
        outcome = Outcome("pending", attempts, now)
        if again:
            # Its time in the outbox counts from the start of the current cycle: an
            # admin's `deskgate handoff retry` gives the whole schedule again.
            started = _aware(r.cycle_started) or now
            delay = interrupted_delay(schedule, (now - started).total_seconds())
            if delay is None:
                values["status"] = "failed"
                outcome = Outcome("failed", attempts)
            else:
                values["next_attempt"] = now + timedelta(seconds=delay)
                outcome = Outcome("pending", attempts, values["next_attempt"])
        # Compare-and-set: another node may have taken it back or recorded it meanwhile.
        if not conn.execute(update(Handoff).where(
                Handoff.id == r.id, Handoff.key == r.key, Handoff.status == "pending",
                Handoff.claimed_by == r.claimed_by, Handoff.lease_until == r.lease_until)
                .values(**values)).rowcount:
            continue
        claimed = Claimed(r.id, r.ticket_id, r.article_id, r.kind, r.key, attempts,
                          dict(r.decisions or {}), _aware(r.created) or now, r.claimed_by,
                          r.earlier_attempts)
        out.append(Lost(claimed, lease, outcome, again))
    return out
