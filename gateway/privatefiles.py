"""Files that hold secrets: the one rule for reading them and the one way to create them.

A secret file (a password, token or HMAC key file, a TLS, DKIM, S/MIME or PGP
private key or passphrase) must not be readable by group or others: `check`,
`serve` and every command refuse one that is. Files deskgate creates that hold
mail or credentials (the SQLite database, outbox Maildir files, imported keys)
are created owner-only whatever the umask, so they are private also outside
systemd (whose unit sets UMask=0027).
"""

from __future__ import annotations

import contextlib
import os
import stat
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


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner (created 0600, never wider), replacing
    it at once; when the write or the rename fails, its error is raised and the
    temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o600)    # a leftover .tmp would keep its wider mode
            fh.write(data)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def put_back(path: Path, data: bytes, mode: int) -> None:
    """Write `data` back to `path` with exactly `mode` (what an undo restores: a key
    file as it was before a failed import), replacing it at once through a temporary
    file created owner-only."""
    tmp = path.with_name(path.name + ".restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        os.fchmod(fh.fileno(), mode)
    tmp.replace(path)


def create_private(path: Path, mode: int = 0o600) -> None:
    """Create `path` empty with `mode` when it does not exist yet (an existing file
    keeps the mode its admin gave it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    os.fchmod(fd, mode)     # exactly `mode`, whatever the umask
    os.close(fd)
