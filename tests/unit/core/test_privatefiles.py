"""write_private: a secret file is written owner-only and atomically; a failed write or
rename raises its own error and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from gateway import privatefiles
from gateway.privatefiles import write_private


def entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


class _FullDisk:
    """A file object whose write fails as on a full disk (the descriptor is closed)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class TestWritePrivate:
    def test_written_owner_only(self, tmp_path):
        """The file holds the data, mode 0600, and no temporary file stays."""
        target = tmp_path / "a.key"
        write_private(target, b"secret")
        assert target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600
        assert entries(tmp_path) == ["a.key"]

    def test_rename_onto_a_directory_leaves_no_tmp(self, tmp_path):
        """The target is a directory: the rename's error is raised, the directory is as
        it was and the temporary file is removed."""
        target = tmp_path / "a.key"
        target.mkdir()
        with pytest.raises(IsADirectoryError):
            write_private(target, b"secret")
        assert entries(tmp_path) == ["a.key"]
        assert target.is_dir() and list(target.iterdir()) == []

    def test_failing_replace_leaves_no_tmp(self, tmp_path, monkeypatch):
        """os.replace failing (say, EXDEV): that error is raised, the old file keeps its
        contents and the temporary file is removed."""
        target = tmp_path / "a.key"
        target.write_bytes(b"old")

        def replace(src: object, dst: object) -> None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError) as exc:
            write_private(target, b"new")
        assert exc.value.errno == errno.EXDEV
        monkeypatch.undo()
        assert target.read_bytes() == b"old"
        assert entries(tmp_path) == ["a.key"]

    def test_failing_write_leaves_no_tmp(self, tmp_path, monkeypatch):
        """The write fails (full disk): that error is raised, the old file is unchanged
        and no partial temporary file stays."""
        target = tmp_path / "a.key"
        target.write_bytes(b"old")
        real = os.fdopen
        monkeypatch.setattr(privatefiles.os, "fdopen",
                            lambda fd, mode: _FullDisk(real(fd, mode)))
        with pytest.raises(OSError) as exc:
            write_private(target, b"new")
        assert exc.value.errno == errno.ENOSPC
        monkeypatch.undo()
        assert target.read_bytes() == b"old"
        assert entries(tmp_path) == ["a.key"]

    def test_leftover_wider_tmp_does_not_widen_the_file(self, tmp_path):
        """A temporary file left readable by others (an older crash, a copy): the
        written secret file is still 0600."""
        target = tmp_path / "a.key"
        tmp = tmp_path / "a.key.tmp"
        tmp.write_bytes(b"stale")
        tmp.chmod(0o644)
        write_private(target, b"secret")
        assert target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600
        assert entries(tmp_path) == ["a.key"]
