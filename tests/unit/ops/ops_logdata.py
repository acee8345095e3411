"""Helpers of the ops unit tests: communication objects with chosen times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.commlog import CommObj, Entry

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def obj(type_: str, status: str, *entries: tuple[str, str, str], start: datetime = NOW,
        seconds: float = 1.0, article_id: int | None = None) -> CommObj:
    o = CommObj(type_, start=start)  # type: ignore[arg-type]
    for prio, key, value in entries:
        o.entries.append(Entry(prio, key, value, time=start))  # type: ignore[arg-type]
    o.article_id = article_id
    if status != "Processing":
        o.status, o.end = status, start + timedelta(seconds=seconds)  # type: ignore[assignment]
    return o


def ago(**kw: Any) -> datetime:
    return NOW - timedelta(**kw)
