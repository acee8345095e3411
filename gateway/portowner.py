"""Which process listens on a TCP port: named in "address in use" errors.

Reads /proc/net/tcp{,6} for the listening socket's inode and looks for it among
the open files of the processes this user may inspect (Linux; None elsewhere or
when the owner is not visible).
"""

from __future__ import annotations

from pathlib import Path

_LISTEN = "0A"


def listener_pid(port: int) -> int | None:
    """The pid of a process listening on TCP `port` (any address), or None."""
    targets: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == _LISTEN and int(f[1].rsplit(":", 1)[1], 16) == port:
                targets.add(f"socket:[{f[9]}]")
    if not targets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if str(fd.readlink()) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return None


def in_use_by(port: int) -> str:
    """'pid 1234' or 'another process' for an error message."""
    pid = listener_pid(port)
    return f"pid {pid}" if pid is not None else "another process"
