"""Rules for the key stores' files, shared by the S/MIME store and the PGP keyring:
secret files must be private to their owner, passphrase files are read one way,
and listings are cached against the modification times of what they read.
"""

from __future__ import annotations

from pathlib import Path

from gateway.privatefiles import not_private


class KeyStoreError(Exception):
    """A key store problem with a message meant for the operator."""


def check_private(path: Path) -> None:
    """Refuse a private key or passphrase file that group or others may read (the rule
    every secret file follows: gateway.privatefiles)."""
    problem = not_private(path)
    if problem is not None:
        raise KeyStoreError(problem)


def read_passphrase(path: Path) -> bytes:
    """A passphrase file's first line (without its line break); checked for permissions."""
    check_private(path)
    data = path.read_bytes()
    return data.splitlines()[0] if data.strip() else b""


def mtimes(*paths: Path) -> tuple[float, ...]:
    """Modification times (ns) of the paths, -1 for one that cannot be read: a cache
    stamp that changes when any of them does."""
    out = []
    for p in paths:
        try:
            out.append(p.stat().st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)
