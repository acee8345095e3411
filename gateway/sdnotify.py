"""systemd's sd_notify protocol (Type=notify) without libsystemd.

A datagram "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=..." to the unix
socket named in $NOTIFY_SOCKET ('@' = abstract namespace). Outside systemd the
variable is unset and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send the states; False when not under systemd or the send failed."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "@/":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC systemd ≥ 253 asks for (older ones ignore it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
