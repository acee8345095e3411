"""Connection limits shared by the LMTP and submission listeners.

Each listener service counts its open sessions (`SessionLimit`): past
`max_sessions`, past `max_sessions_per_ip` for one client, or when the process
is close to its file descriptor limit, a new connection gets `421 4.7.0` and is
closed, and the communication log gets a Warning (at most one per
WARN_INTERVAL per listener, counting the refusals in between). Submission keeps
a reserve of descriptors for LMTP, so clients of the smarthost door can never
starve the MTA's deliveries. `IdleTimer` makes the session timeout count from
the last command that moves a transaction on: NOOP, RSET and friends do not
extend it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway import metrics
from gateway.commlog import Comm

log = structlog.get_logger(__name__)

# Seconds between two communication-log Warnings of one listener about refusals.
WARN_INTERVAL = 10.0
# Descriptors kept free for the process itself (database, dashboard, pipes, logs).
FD_MARGIN = 64
# A listener without a reserve still refuses when this few descriptors are left
# (room to write the communication log and answer /healthz).
FD_HEADROOM = 8
# Commands that do not move a session on: they do not extend its idle timeout.
IDLE_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def open_fds() -> int:
    """Descriptors open in this process (Linux /proc; 0 when unknown)."""
    try:
        return len(os.listdir("/proc/self/fd"))  # noqa: PTH208 - one call, no Path per fd
    except OSError:
        return 0


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return fd_limit()


def client_of(peer: Any) -> str:
    """The client address of a peer (host of a TCP peer, "unix" otherwise)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix"


@dataclass
class SessionLimit:
    """Open sessions of one listener service and the rules that refuse new ones.

    `fd_reserve` descriptors must stay free after admitting a session (0 = no
    descriptor check): submission reserves room for LMTP's max_sessions.
    """

    name: str                         # "lmtp", "submission"
    transport: str                    # communication-log transport: "LMTP", "SMTP"
    direction: str                    # "Incoming" / "Outgoing"
    max_sessions: int
    write_log: Callable[[Comm], None]
    max_per_ip: int = 0               # 0 = no per-client limit
    fd_reserve: int = 0
    active: int = 0
    refused_total: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    _pending: int = 0                 # refusals not yet in the communication log
    _last_warn: float = -1e9
    _last_reason: str = ""

    def refuses(self) -> str | None:
        """Why a new session would be refused now (per-client limits aside), or None."""
        if self.max_sessions and self.active >= self.max_sessions:
            return f"{self.active} sessions open (max_sessions = {self.max_sessions})"
        reserve = self.fd_reserve or FD_HEADROOM
        if (n := open_fds()) + reserve >= (lim := fd_limit()):
            return (f"{n} of {lim} file descriptors in use"
                    + (f"; {self.fd_reserve} kept for LMTP and the gateway itself"
                       if self.fd_reserve else ""))
        return None

    def admit(self, peer: Any, *, replied: bool = True) -> str | None:
        """Count a new session; None when admitted, else why it is refused. `replied`:
        a refused connection is answered 421 4.7.0 (False: closed without a reply, as
        an implicit-TLS listener closes it before the handshake)."""
        client = client_of(peer)
        reason = self.refuses()
        if reason is None and self.max_per_ip and client != "unix" \
                and self.per_ip.get(client, 0) >= self.max_per_ip:
            reason = (f"{self.per_ip[client]} sessions open from {client} "
                      f"(max_sessions_per_ip = {self.max_per_ip})")
        if reason is not None:
            self._refused(peer, reason, replied)
            return reason
        self.active += 1
        if client != "unix":
            self.per_ip[client] = self.per_ip.get(client, 0) + 1
        return None

    def release(self, peer: Any) -> None:
        """An admitted session ended."""
        self.active = max(0, self.active - 1)
        client = client_of(peer)
        if client in self.per_ip:
            self.per_ip[client] -= 1
            if self.per_ip[client] <= 0:
                del self.per_ip[client]

    def _refused(self, peer: Any, reason: str, replied: bool = True) -> None:
        self.refused_total += 1
        metrics.SESSIONS_REFUSED.labels(self.name).inc()
        self._pending += 1
        self._last_reason = reason
        now = time.monotonic()
        if now - self._last_warn < WARN_INTERVAL:
            return
        self._last_warn = now
        count, self._pending = self._pending, 0
        log.warning("connection refused", listener=self.name, client=client_of(peer),
                    reason=reason, refused=count)
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 \
            else str(peer or "unix")
        comm = Comm(self.direction, self.transport, peer_s)  # type: ignore[arg-type]
        obj = comm.obj("Connection")
        how = "refused with 421 4.7.0" if replied else "closed without a reply"
        text = f"{self.name}: connection from {peer_s} {how}: {reason}"
        if count > 1:
            text += f" ({count} refusals since the last warning)"
        obj.log("Warn", "Limit", text)
        obj.close("Warning")
        comm.close("Warning")
        try:
            self.write_log(comm)
        except Exception as exc:     # the writer is gone (shutting down)
            log.warning("refusal not logged", error=repr(exc)[:200])


def refusal(hostname: str) -> bytes:
    """The reply a refused connection gets before it is closed."""
    return f"421 4.7.0 {hostname} too many connections, try again later\r\n".encode()


def idle_timeout(hostname: str) -> bytes:
    """The reply a session gets when its idle timeout ends it."""
    return f"421 4.4.2 {hostname} idle timeout, closing\r\n".encode()


def too_many_errors(hostname: str) -> str:
    """The reply that ends a session after too many bad commands (Postfix's): a client
    takes the 421 as "try again later", not as a refusal of its mail."""
    return f"421 4.7.0 {hostname} Error: too many errors"


class IdleTimer:
    """Mixin for aiosmtpd sessions: NOOP/RSET/VRFY/EXPN/HELP do not reset the timeout.

    aiosmtpd re-arms its timer on every valid command; the command method then
    runs. For an idle command we put the deadline of the last real command back.
    """

    _idle_deadline: float = 0.0
    _prev_deadline: float = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        loop: Any = self.loop  # type: ignore[attr-defined]
        if duration is None:
            self._prev_deadline = self._idle_deadline
            self._idle_deadline = loop.time() + self._timeout_duration  # type: ignore[attr-defined]
        super()._reset_timeout(duration)  # type: ignore[misc]

    def _idle_command(self) -> None:
        """Called at the start of an idle command: keep the previous deadline."""
        loop: Any = self.loop  # type: ignore[attr-defined]
        if self._prev_deadline:
            self._idle_deadline = self._prev_deadline
            super()._reset_timeout(max(0.001, self._idle_deadline - loop.time()))  # type: ignore[misc]

    async def smtp_NOOP(self, arg: str) -> None:
        self._idle_command()
        await super().smtp_NOOP(arg)  # type: ignore[misc]

    async def smtp_RSET(self, arg: str) -> None:
        self._idle_command()
        await super().smtp_RSET(arg)  # type: ignore[misc]

    async def smtp_VRFY(self, arg: str) -> None:
        self._idle_command()
        await super().smtp_VRFY(arg)  # type: ignore[misc]

    async def smtp_EXPN(self, arg: str) -> None:
        self._idle_command()
        await super().smtp_EXPN(arg)  # type: ignore[misc]

    async def smtp_HELP(self, arg: str) -> None:
        self._idle_command()
        await super().smtp_HELP(arg)  # type: ignore[misc]
