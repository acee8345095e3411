"""Attempts that ended without an outcome: a claim whose lease ran out (its node was
killed, crashed or hung) is recorded as a failed attempt, so that a message that
kills the process on every attempt runs out of the retry schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, select, update

from gateway.helpdesk.outbox_claim import Claimed, Outcome
from gateway.outbound.queue import _aware, retry_delay, utcnow
from gateway.store.tables import Handoff

# The last_error of an attempt that ended without an outcome of its own.
LOST = "hand-off attempt did not finish (the process ended or hung)"


@dataclass(frozen=True)
class Lost:
    """A claim whose lease ran out with no outcome, recorded as a failed attempt."""

    claimed: Claimed             # as it was claimed (node, attempts before it)
    lease_until: datetime
    outcome: Outcome             # pending (next_attempt on the schedule) | failed


def expire(conn: Connection, node: str, *, schedule: tuple[float, ...],
           held: set[int] | frozenset[int] = frozenset(), limit: int = 100,
           now: datetime | None = None) -> list[Lost]:
    """Record each claim whose lease ran out without an outcome (its node was killed,
    crashed or hung) as a temporary failure: the attempt, counted at its claim, now
    also moves the row along the schedule, to its next step counted from the end of
    the lease, or to failed after the last one. Without this a message that kills the
    process on every attempt would be claimed again at each lease's end, for ever.
    The rows in `held` that `node` claimed are left alone: its attempts still run."""
    now = now or utcnow()
    q = (select(Handoff).where(Handoff.status == "pending", Handoff.next_attempt <= now,
                               Handoff.claimed_by != "", Handoff.lease_until < now)
         .order_by(Handoff.id).limit(limit))
    if held:
        q = q.where(~and_(Handoff.claimed_by == node[:200], Handoff.id.in_(held)))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    out: list[Lost] = []
    for r in conn.execute(q).all():
        lease = _aware(r.lease_until) or now
        attempts = max(r.attempts, 1)
        delay = retry_delay(schedule, attempts)
        error = (f"{LOST}: claimed by {r.claimed_by}, no outcome by the end of its lease "
                 f"at {lease:%Y-%m-%d %H:%M:%S} UTC")
        values: dict[str, Any] = {"attempts": attempts, "lease_until": None,
                                  "claimed_by": "", "last_error": error, "updated": now}
        nxt = None
        if delay is None:
            values["status"] = "failed"
        else:
            nxt = values["next_attempt"] = lease + timedelta(seconds=delay)
        # Compare-and-set: another node may have recorded it meanwhile.
        if not conn.execute(update(Handoff).where(
                Handoff.id == r.id, Handoff.key == r.key, Handoff.status == "pending",
                Handoff.claimed_by == r.claimed_by, Handoff.lease_until == r.lease_until)
                .values(**values)).rowcount:
            continue
        claimed = Claimed(r.id, r.ticket_id, r.article_id, r.kind, r.key, attempts - 1,
                          dict(r.decisions or {}), _aware(r.created) or now, r.claimed_by,
                          r.earlier_attempts)
        out.append(Lost(claimed, lease, Outcome("failed", attempts) if nxt is None
                        else Outcome("pending", attempts, nxt)))
    return out
