"""The SQLite WAL checkpoint thread of the group-commit writer (gateway.store.writer)."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import structlog

log = structlog.get_logger(__name__)


class Checkpointer:
    """Copies a SQLite database's WAL back into the database file on a thread of its
    own, so that the writer's COMMIT is only the WAL append and its fsync.

    Left to SQLite, the connection whose COMMIT takes the WAL past 1000 pages runs
    the checkpoint inside that COMMIT: it reads every page back from the WAL,
    writes it into the database file and syncs both, while the messages of the
    batch wait for their 250 (about a fifth of the commit process's time per
    message). Here, every CHECKPOINT_EVERY commits, a PASSIVE checkpoint copies
    what is in the WAL without blocking anybody (SQLite runs it outside Python's
    interpreter lock, so on the other core), repeated (up to CATCH_UP_PASSES times)
    while the WAL grew by CATCH_UP_PAGES or more during the previous pass; a last
    PASSIVE pass holding the writers' lock file copies the few pages committed
    meanwhile, so the WAL is complete and the next transaction starts it again
    from the beginning instead of growing it. The writer's own checkpoint stays as a fallback, at
    FALLBACK_PAGES. Durability is unchanged: SQLite syncs the WAL before
    copying from it and the database file after.
    """

    CHECKPOINT_EVERY = 25
    FALLBACK_PAGES = 10000
    CATCH_UP_PASSES, CATCH_UP_PAGES = 3, 64
    RETRY_AFTER = 60.0          # seconds between starts of a thread that keeps dying

    def __init__(self, database: str, lock_path: str) -> None:
        self.database, self.lock_path = database, lock_path
        self.runs = 0
        self._commits = 0
        self._due = threading.Event()
        self._stop = threading.Event()      # the running thread's; a new one gets its own
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    def committed(self) -> None:
        """After each commit of the writer (its thread): wake the checkpoint when due."""
        self._commits += 1
        if self._commits < self.CHECKPOINT_EVERY:
            return
        self._commits = 0
        thread = self._thread
        if thread is None or not thread.is_alive():
            # First due (a `deskgate deliver` never gets here), a forked process whose
            # parent's thread does not run here, or a thread that died: a new one,
            # but not more than once per RETRY_AFTER for one that keeps dying (its
            # lock file cannot be opened, ...: each death logs its traceback).
            if thread is not None and not self._stop.is_set():
                if time.monotonic() - self._started_at < self.RETRY_AFTER:
                    return
                log.warning("WAL checkpoint thread had stopped; starting it again")
            self._started_at = time.monotonic()
            self._due, self._stop = threading.Event(), threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._due, self._stop),
                                            name="db-checkpoint", daemon=True)
            self._thread.start()
        self._due.set()

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._due.set()
        self._thread = None
        if thread.is_alive():
            thread.join(30)
        if thread.is_alive():
            # in a checkpoint that waits on the disk: it stops after it (its own
            # stop event); a commit after this starts a new thread
            log.warning("WAL checkpoint thread still busy at close")

    def _run(self, due: threading.Event, stop: threading.Event) -> None:
        import sqlite3

        try:
            conn = sqlite3.connect(self.database, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint thread not started", error=str(exc)[:300])
            return
        fd = -1
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                due.wait()
                due.clear()
                if stop.is_set():
                    return
                try:
                    log_pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
                    # What the writer committed meanwhile is copied without the lock too
                    # while it is more than a few pages, so that the pass under the lock
                    # (the writer waits for it) copies only the last commits' pages:
                    # ~2 instead of ~3.5 ms of waiting per checkpoint.
                    for _ in range(self.CATCH_UP_PASSES):
                        before = log_pages
                        log_pages = conn.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
                        if log_pages - before < self.CATCH_UP_PAGES:
                            break
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self.runs += 1
                except (sqlite3.Error, OSError) as exc:
                    # The writer's fallback checkpoint still bounds the WAL.
                    log.warning("WAL checkpoint failed", error=str(exc)[:300])
        except Exception:
            # the next due checkpoint starts a new thread (committed)
            log.exception("WAL checkpoint thread stopped")
        finally:
            if fd >= 0:
                os.close(fd)
            conn.close()
