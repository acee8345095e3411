"""Thread pools whose size a reload may change (the relay's and the hand-off's)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import structlog

log = structlog.get_logger(__name__)


def resized(pool: ThreadPoolExecutor, size: int, wanted: int, prefix: str,
            what: str) -> tuple[ThreadPoolExecutor, int]:
    """(pool, size) for `wanted` workers (at least one): the same pool when its size
    is right, else a new one; work already handed to the old pool finishes there (it
    is shut down without waiting or cancelling)."""
    wanted = max(1, wanted)
    if wanted == size:
        return pool, size
    log.info(f"{what} concurrency reloaded", concurrency=wanted, before=size)
    pool.shutdown(wait=False)
    return ThreadPoolExecutor(max_workers=wanted, thread_name_prefix=prefix), wanted
