"""The pid file's flock: `deskgate serve` holds it exclusively while it runs, and
`deskgate reload` tries a shared lock on it to tell a running gateway from a stale pid
file. That brief probe must not make a serve starting at the same moment fail."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.errors import InUse
from gateway.supervise import pidfile_locked, pidfile_path
from gateway.supervise_fork import _release_pidfile, lock_pidfile


@pytest.fixture
def pidfile(config: Config) -> Path:
    path = pidfile_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def hold(path: Path, mode: int, seconds: float) -> threading.Thread:
    """Hold `mode` on the pid file (an open file of its own) for `seconds`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)

    def release() -> None:
        time.sleep(seconds)
        os.close(fd)

    t = threading.Thread(target=release)
    t.start()
    return t


class TestServeLock:
    def test_a_reload_probe_does_not_make_serve_fail(self, config: Config,
                                                     pidfile: Path) -> None:
        """A shared lock held briefly (reload's probe) while serve starts: serve waits
        for it and takes the pid file."""
        t = hold(pidfile, fcntl.LOCK_SH, 0.2)
        try:
            lock_pidfile(config)
            assert pidfile.read_text() == f"{os.getpid()}\n"
            assert pidfile_locked(pidfile)
        finally:
            _release_pidfile()
            t.join()

    def test_a_running_serve_still_keeps_a_second_one_out(self, config: Config,
                                                          pidfile: Path) -> None:
        """An exclusive lock that stays (a running serve) is InUse, after a short wait."""
        t = hold(pidfile, fcntl.LOCK_EX, 3)
        try:
            started = time.monotonic()
            with pytest.raises(InUse, match="locked by a running deskgate serve"):
                lock_pidfile(config)
            assert time.monotonic() - started < 2.5
        finally:
            t.join()


class TestPidfileLocked:
    def test_unlocked_pid_file_is_stale_and_left_unlocked(self, pidfile: Path) -> None:
        """No holder: not locked, and the probe keeps no lock (a serve gets it at once)."""
        pidfile.write_text("4242\n")
        assert not pidfile_locked(pidfile)
        fd = os.open(pidfile, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

    def test_held_pid_file_is_locked(self, config: Config, pidfile: Path) -> None:
        """The pid file of a serve (lock_pidfile) is locked."""
        lock_pidfile(config)
        try:
            assert pidfile_locked(pidfile)
        finally:
            _release_pidfile()

    def test_missing_pid_file_raises(self, pidfile: Path) -> None:
        """No pid file: FileNotFoundError, for reload's 'no pid file'."""
        with pytest.raises(FileNotFoundError):
            pidfile_locked(pidfile)
