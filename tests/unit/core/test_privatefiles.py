"""write_private: a secret file is written owner-only and atomically; a failed write or
rename raises its own error and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
import time
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
        """A temporary file left readable by others by an older crash: the written
        secret file is still 0600 and the leftover (an older secret) is removed."""
        target = tmp_path / "a.key"
        tmp = tmp_path / "a.key.tmp"
        tmp.write_bytes(b"stale")
        tmp.chmod(0o644)
        old = time.time() - privatefiles.STALE_AFTER - 60
        os.utime(tmp, (old, old))
        write_private(target, b"secret")
        assert target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600
        assert entries(tmp_path) == ["a.key"]

    def test_temporary_file_being_written_is_left_alone(self, tmp_path):
        """A fresh a.key.tmp (another write under way): it is neither written into nor
        removed; the file is written through another temporary name."""
        target = tmp_path / "a.key"
        tmp = tmp_path / "a.key.tmp"
        tmp.write_bytes(b"theirs")
        write_private(target, b"secret")
        assert target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600
        assert tmp.read_bytes() == b"theirs"
        assert entries(tmp_path) == ["a.key", "a.key.tmp"]


def _plant(tmp_path: Path, name: str, victim: Path) -> Path:
    """A symlink at the temporary name `name`, pointing at `victim` outside."""
    link = tmp_path / name
    link.symlink_to(victim)
    return link


class TestPlantedSymlink:
    """Someone who may write in the directory plants a symlink where the temporary
    file goes: deskgate neither writes through it nor renames it into place."""

    @pytest.fixture()
    def outside(self, tmp_path: Path) -> Path:
        d = tmp_path / "outside"
        d.mkdir()
        return d

    @pytest.mark.parametrize("writer, suffix", [
        (lambda p, d: write_private(p, d), ".tmp"),
        (lambda p, d: privatefiles.put_back(p, d, 0o600), ".restore"),
    ], ids=["write_private", "put_back"])
    def test_symlink_to_existing_file_is_not_followed(self, tmp_path, outside,
                                                      writer, suffix):
        """The victim keeps its contents and mode; the target is a regular file with
        the new data, 0600; the planted link is left as it was."""
        keys = tmp_path / "keys"
        keys.mkdir()
        victim = outside / "victim"
        victim.write_bytes(b"victim")
        victim.chmod(0o644)
        link = _plant(keys, "a.key" + suffix, victim)
        target = keys / "a.key"
        writer(target, b"secret")
        assert victim.read_bytes() == b"victim"
        assert victim.stat().st_mode & 0o777 == 0o644
        assert not target.is_symlink()
        assert target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600
        assert link.is_symlink() and os.readlink(link) == str(victim)
        assert entries(keys) == ["a.key", "a.key" + suffix]

    @pytest.mark.parametrize("writer, suffix", [
        (lambda p, d: write_private(p, d), ".tmp"),
        (lambda p, d: privatefiles.put_back(p, d, 0o600), ".restore"),
    ], ids=["write_private", "put_back"])
    def test_dangling_symlink_creates_nothing_outside(self, tmp_path, outside,
                                                      writer, suffix):
        """A link to a file that does not exist yet: that file is not created."""
        keys = tmp_path / "keys"
        keys.mkdir()
        victim = outside / "created-by-deskgate"
        _plant(keys, "a.key" + suffix, victim)
        target = keys / "a.key"
        writer(target, b"secret")
        assert not victim.exists() and entries(outside) == []
        assert not target.is_symlink() and target.read_bytes() == b"secret"
        assert target.stat().st_mode & 0o777 == 0o600

    def test_every_name_taken_raises_and_writes_nothing(self, tmp_path, outside,
                                                       monkeypatch):
        """When each name tried is taken, FileExistsError is raised, the old file is
        unchanged and nothing is written anywhere."""
        keys = tmp_path / "keys"
        keys.mkdir()
        target = keys / "a.key"
        target.write_bytes(b"old")
        victim = outside / "victim"
        monkeypatch.setattr(privatefiles.secrets, "token_hex", lambda n: "fixed")
        _plant(keys, "a.key.tmp", victim)
        _plant(keys, "a.key.fixed.tmp", victim)
        with pytest.raises(FileExistsError):
            write_private(target, b"new")
        assert target.read_bytes() == b"old"
        assert not victim.exists()
        assert entries(keys) == ["a.key", "a.key.fixed.tmp", "a.key.tmp"]
