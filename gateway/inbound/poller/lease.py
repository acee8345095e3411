"""One poller per account at a time, across processes and nodes.

PostgreSQL: a session-level advisory lock held on a dedicated connection for
the whole run; a node that dies loses its connection and with it the lock, so
there is no lease to expire. SQLite (one machine): an flock on a file in
state_dir/run, which also keeps `deskgate fetch` and `deskgate serve` apart.
Blocking: acquire and release run in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text


def lock_key(account: str) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock."""
    digest = hashlib.blake2b(f"deskgate-poller:{account}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AccountLock:
    def __init__(self, engine: Engine, run_dir: Path, account: str) -> None:
        self.engine = engine
        self.account = account
        self.path = run_dir / f"poller-{hashlib.sha256(account.encode()).hexdigest()[:16]}.lock"
        self._conn: Any = None
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the account; False when someone else does."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                   {"k": lock_key(self.account)}).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.account)})
                conn.commit()
            conn.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
