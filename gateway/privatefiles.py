"""Files that hold secrets: the one rule for reading them and the one way to create them.

A secret file (a password, token or HMAC key file, a TLS, DKIM, S/MIME or PGP
private key or passphrase) must not be readable by group or others: `check`,
`serve` and every command refuse one that is. Files deskgate creates that hold
mail or credentials (the SQLite database, outbox Maildir files, imported keys)
are created owner-only whatever the umask, so they are private also outside
systemd (whose unit sets UMask=0007).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from pathlib import Path


def not_private(path: Path) -> str | None:
    """Why `path` may not hold a secret (unreadable, or group/other may read it);
    None when it may."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror}"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{path}: holds a secret but is readable by group/others "
                f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it")
    return None


_TRIES = 10
STALE_AFTER = 600.0     # seconds
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _remove_stale(tmp: Path) -> None:
    """Remove `tmp` when it is a temporary file an interrupted write left behind: a
    regular file of ours not changed for STALE_AFTER seconds (it may hold an older
    secret). A symlink, someone else's file or one being written now stays."""
    try:
        st = tmp.lstat()
    except OSError:
        return
    if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            and time.time() - st.st_mtime > STALE_AFTER):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _open_new(path: Path, suffix: str) -> tuple[Path, int]:
    """Create a new temporary file next to `path`, owner-only (0600 whatever the
    umask), and open it for writing: `<name><suffix>` or, when that name is taken (a
    stale file, a concurrent writer, a planted symlink), `<name>.<random><suffix>`.
    An existing name is never opened, truncated or followed as a symlink; when every
    name tried is taken, FileExistsError is raised."""
    _remove_stale(path.with_name(path.name + suffix))
    names = [path.name + suffix] + [
        f"{path.name}.{secrets.token_hex(6)}{suffix}" for _ in range(_TRIES)]
    for name in names:
        tmp = path.with_name(name)
        try:
            fd = os.open(tmp, _NEW, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(tmp))


def _replace_with(path: Path, data: bytes, mode: int, suffix: str) -> None:
    tmp, fd = _open_new(path, suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner (created 0600, never wider), replacing
    it at once; when the write or the rename fails, its error is raised and the
    temporary file is removed. The temporary file is always a new one (see
    _open_new): a symlink or file someone left at its name is not written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_with(path, data, 0o600, ".tmp")


def put_back(path: Path, data: bytes, mode: int) -> None:
    """Write `data` back to `path` with exactly `mode` (what an undo restores: a key
    file as it was before a failed import), replacing it at once through a new
    temporary file created owner-only."""
    _replace_with(path, data, mode, ".restore")


def create_private(path: Path, mode: int = 0o600) -> None:
    """Create `path` empty with `mode` when it does not exist yet (an existing file
    keeps the mode its admin gave it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    os.fchmod(fd, mode)     # exactly `mode`, whatever the umask
    os.close(fd)
