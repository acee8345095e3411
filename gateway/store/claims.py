"""Claims under a lease, as the outbound queue and the hand-off outbox take their rows:
the name of one claim, and its check just before the transfer it covers.

A claim is named by its node and a number of its own, so that a late attempt of an
earlier claim (even of the same node) never passes for the current one: renewing,
checking and recording compare the row's claimed_by with that name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from sqlalchemy import Connection

from gateway.store.writer import BatchWriter

log = structlog.get_logger(__name__)

# Seconds the check of a claim before its transfer may take.
CHECK_TIMEOUT = 30.0


def claim_name(node: str, number: int) -> str:
    """The name of a node's claim `number` (fits claimed_by, 200 characters)."""
    return f"{node[:180]}#{number}"


def still_held(loop: asyncio.AbstractEventLoop, writer: BatchWriter,
               renew: Callable[[Connection], int], *, timeout: float = CHECK_TIMEOUT,
               **ids: object) -> bool:
    """On a worker thread, just before a transfer: renew the claim through the writer
    (`renew` returns how many leases it extended). False when another claim took the
    row meanwhile: do not send. When the database does not answer in time the transfer
    goes ahead (True): the lease was held at the last renewal, and no other node can
    claim without the database either. `ids` name the row in the log."""
    try:
        held = asyncio.run_coroutine_threadsafe(writer.run(renew), loop).result(timeout)
    except Exception as exc:
        log.warning("claim not checked before the transfer", error=str(exc)[:300], **ids)
        return True
    return bool(held)
