"""RFC 2033 LMTP listeners: binding, the shared accept loop, serving.

The session itself is in three modules: lmtp_syntax.py (limits, reply texts,
path parsing), lmtp_connection.py (transport, buffering, DATA framing, flow
control) and lmtp_session.py (the commands and the delivery). Each connection
is written to the communication log when it closes (see lmtp_record.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import errors
from gateway.inbound.lmtp_session import LmtpBackend, LmtpSession, parse_path
from gateway.limits import SessionLimit
from gateway.portowner import in_use_by

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["AcceptLoop", "LmtpBackend", "LmtpSession", "bind_listeners", "parse_path",
           "start_listeners"]


def _unlink_stale(path: Path, spec: str) -> None:
    """Remove a socket file nobody listens on; refuse when a process still accepts.

    Probing by connecting first (as Postfix and Dovecot do) keeps a second
    gateway from deleting the live socket of the first one.
    """
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except FileNotFoundError:     # a dangling symlink (or gone meanwhile)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except ConnectionRefusedError:
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise errors.InUse(f"LMTP {spec}: {path} exists and is not a socket") from None
        path.unlink()             # stale: left by a gateway that died
        return
    except OSError as exc:
        raise errors.InUse(f"LMTP {spec}: cannot probe {path}: {exc.strerror}") from None
    else:
        raise errors.InUse(f"LMTP {spec} is in use by pid {_peer_pid(probe)}") from None
    finally:
        probe.close()


def _peer_pid(sock: socket.socket) -> str:
    """The pid that listens on a connected unix socket (SO_PEERCRED), or 'unknown'."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return "unknown"
    return str(struct.unpack("3i", creds)[0])


def bind_listeners(listen: Sequence[str], *, root: Path, socket_mode: int = 0o660,
                   socket_group: str = "") -> list[socket.socket]:
    """Bind every `listen` address (unix:PATH relative to root, or HOST:PORT).

    Binding is separate from serving so that pre-forked workers can share the
    listening sockets, as Postfix's and Dovecot's processes do.
    """
    socks: list[socket.socket] = []
    for spec in listen:
        if spec.startswith("unix:"):
            path = Path(spec[5:])
            path = path if path.is_absolute() else root / path
            path.parent.mkdir(parents=True, exist_ok=True)
            _unlink_stale(path, spec)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(path))
            except OSError as exc:
                sock.close()
                raise errors.InUse(f"LMTP {spec}: cannot bind {path}: {exc.strerror}") from None
            path.chmod(socket_mode)
            if socket_group:
                try:
                    os.chown(path, -1, grp.getgrnam(socket_group).gr_gid)
                except (KeyError, PermissionError) as exc:
                    logging.getLogger(__name__).warning(
                        "cannot give the LMTP socket to group %s: %s", socket_group, exc)
        else:
            host, _, port = spec.rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, int(port)))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise errors.InUse(f"LMTP {spec} is in use by {in_use_by(int(port))}"
                                       ) from None
                raise errors.InUse(f"LMTP {spec}: cannot bind: {exc.strerror}") from None
        sock.listen(512)
        sock.setblocking(False)
        socks.append(sock)
    return socks


class AcceptLoop:
    """Accept one connection at a time from a socket shared by several processes.

    asyncio's and uvloop's servers accept every pending connection at once, so
    with pre-forked workers the first process to wake takes a whole burst (and,
    with the MTA's connection reuse, keeps it). Accepting one at a time lets the
    kernel hand each connection to whichever process is waiting, so a busy
    process takes fewer. Quacks like asyncio.Server for close/wait_closed/is_serving.
    """

    # Seconds a process waits before its next accept, per session it already has:
    # the less loaded processes win the next connections of a burst.
    DELAY_PER_SESSION = 0.002

    def __init__(self, sock: socket.socket, factory: Callable[[], LmtpSession]) -> None:
        self.sock = sock
        self.sockets = [sock]
        self._factory = factory
        self.active = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _session(self) -> LmtpSession:
        session = self._factory()
        self.active += 1
        session.on_lost = self._lost
        return session

    def _lost(self) -> None:
        self.active -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.active:
                await asyncio.sleep(self.DELAY_PER_SESSION * self.active)
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:        # EMFILE and friends: back off, keep serving
                logging.getLogger(__name__).warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                await loop.connect_accepted_socket(self._session, conn)
            except OSError:
                conn.close()

    def is_serving(self) -> bool:
        return not self._task.done()

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def start_listeners(backend: LmtpBackend, socks: Sequence[socket.socket], *,
                          max_message_size: int, max_recipients: int, hostname: str,
                          timeout: float = 300,  # noqa: ASYNC109 - idle timeout per session
                          shared: bool = False, limit: SessionLimit | None = None,
                          config: Callable[[], Config] | None = None) -> list[Any]:
    """Serve LMTP on already bound sockets; `shared` when other processes accept too.
    `config`: the running configuration, whose [lmtp] limits, timeout and hostname a
    new connection takes instead of the values passed (so a reload applies them)."""
    loop = asyncio.get_running_loop()

    def factory() -> LmtpSession:
        if config is None:
            return LmtpSession(backend, max_message_size=max_message_size,
                               max_recipients=max_recipients, hostname=hostname,
                               timeout=timeout, loop=loop, limit=limit)
        cfg = config()
        return LmtpSession(backend, max_message_size=cfg.lmtp.max_message_size,
                           max_recipients=cfg.lmtp.max_recipients,
                           hostname=cfg.gateway.hostname, timeout=cfg.lmtp.timeout,
                           loop=loop, limit=limit)

    servers: list[Any] = []
    for sock in socks:
        if shared:
            servers.append(AcceptLoop(sock, factory))
        elif sock.family == socket.AF_UNIX:
            servers.append(await loop.create_unix_server(factory, sock=sock))
        else:
            servers.append(await loop.create_server(factory, sock=sock))
    return servers


def validate_lmtp(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    """`lmtp.socket_group` names a group of this system: otherwise the socket keeps
    the process's group and the MTA (postfix, Debian-exim) cannot open it."""
    group = cfg.lmtp.socket_group
    if not group:
        return
    try:
        grp.getgrnam(group)
    except KeyError:
        add(str(cfg.conf_dir), "lmtp.socket_group",
            f"no group {group!r} on this system (`getent group {group}` finds none)")
