"""One poller per account at a time, across processes and nodes.

PostgreSQL: a session-level advisory lock held on a dedicated connection for
the whole run; a node that dies loses its connection and with it the lock, so
there is no lease to expire. SQLite (one machine): an flock on a file in
state_dir/run, which also keeps `deskgate fetch` and `deskgate serve` apart.
Blocking: acquire and release run in a worker thread.

The same kind of lock, with kind="oauth2", makes one OAuth2 token refresh of an
account at a time (runs and IDLE watchers, every process and node): a refresh
token a provider rotates can be redeemed only once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from gateway.inbound.poller.session import MailboxError

WAIT_STEP = 0.05      # seconds between attempts of acquire_wait()
REFRESH_WAIT = 90.0   # seconds to wait for another refresh (token endpoint timeout 30 s)


def lock_key(account: str, kind: str = "poller") -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock."""
    digest = hashlib.blake2b(f"deskgate-{kind}:{account}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AccountLock:
    """kind "poller": the account's runs; "oauth2": its token refreshes."""

    def __init__(self, engine: Engine, run_dir: Path, account: str,
                 kind: str = "poller") -> None:
        self.engine = engine
        self.account = account
        self.kind = kind
        self.path = run_dir / f"{kind}-{hashlib.sha256(account.encode()).hexdigest()[:16]}.lock"
        self._conn: Any = None
        self._fd: int | None = None

    def acquire_wait(self, timeout: float) -> bool:
        """acquire(), waiting up to `timeout` seconds for the holder to let go."""
        deadline = time.monotonic() + timeout
        while not self.acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_STEP)
        return True

    def acquire(self) -> bool:
        """True when this process now holds the account; False when someone else does."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                   {"k": lock_key(self.account, self.kind)}).scalar()
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
                conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                             {"k": lock_key(self.account, self.kind)})
                conn.commit()
            conn.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def refresh_lock(engine: Engine, run_dir: Path, account: str) -> Iterator[None]:
    """Held while one OAuth2 refresh of the account runs (TokenSource's guard);
    blocking, so it is taken on a session or IDLE thread."""
    lock = AccountLock(engine, run_dir, account, kind="oauth2")
    if not lock.acquire_wait(REFRESH_WAIT):
        raise MailboxError("auth", "OAuth2: another process or node has been refreshing "
                           f"the token for {REFRESH_WAIT:.0f}s")
    try:
        yield
    finally:
        lock.release()
