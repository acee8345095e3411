"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999): a port taken from the kernel's
# ephemeral pool (bind to port 0) can be handed to any outgoing connection on the
# machine before our server binds it; these ports are only taken by binding them.
LOW, HIGH = 20000, 32000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on or is bound to right now."""
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:           # a crowded range: fall back to the kernel's
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
