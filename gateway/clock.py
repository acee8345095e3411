"""The time the inbound stages work with, as a seam: `Runtime.clock`.

Production uses SystemClock (timezone-aware UTC); unit tests of a stage give the
Runtime a gateway.testing.FakeClock, so relative pending times and daily limits
can be checked without sleeping or patching datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
