"""The fixed vocabulary of the communication log (priorities, statuses, directions,
sortable columns), apart from the store so the CLI can build its options
without importing the database layer."""

from __future__ import annotations

from typing import Literal

Priority = Literal["Error", "Warn", "Notice", "Info", "Debug"]
Status = Literal["Processing", "Successful", "Warning", "Failed"]
PRIORITIES: tuple[Priority, ...] = ("Error", "Warn", "Notice", "Info", "Debug")
STATUSES = ("Processing", "Successful", "Warning", "Failed")
DIRECTIONS = ("Incoming", "Outgoing")
SORT_COLUMNS = ("id", "direction", "status", "account_type", "account", "start", "end",
                "duration")
# Entry keys an administrator searches for: a message's original SMTP client, and the
# queue ID the MTA gave it (from the MTA's XFORWARD, LMTP only).
CLIENT = "Client"
QUEUE_ID = "QueueID"


def priorities_at_least(priority: str) -> tuple[str, ...]:
    """'Warn' → ('Error', 'Warn'): a priority and everything more severe (OTOBO semantics)."""
    for i, p in enumerate(PRIORITIES):
        if p.lower() == priority.lower():
            return PRIORITIES[:i + 1]
    raise ValueError(f"{priority!r} is not one of {', '.join(PRIORITIES)}")
