"""RFC 2033 LMTP server on aiosmtpd.

aiosmtpd's LMTP class answers DATA once for the whole transaction, advertises
neither PIPELINING nor ENHANCEDSTATUSCODES, rejects the null sender of bounces
and reads DATA line by line with a 1,000-byte line limit. This subclass owns
LHLO, MAIL, RCPT and DATA: one reply per accepted recipient after DATA, in RCPT
order, DATA read in chunks up to the terminating CRLF.CRLF with dot-unstuffing
and the size limit, and plain `<local@domain>` paths parsed without the full
RFC 5322 machinery. Each connection is written to the communication log when it
closes (see lmtp_record.py).
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
from typing import Any, AnyStr, Literal, Protocol, cast

import structlog
from aiosmtpd.lmtp import LMTP

from gateway import errors
from gateway.commlog import Comm
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_record import ConnectionRecord
from gateway.limits import IdleTimer, SessionLimit, idle_timeout, refusal
from gateway.model import Outcome
from gateway.portowner import in_use_by

# aiosmtpd logs every command line at INFO on "mail.log"; that is our job, and costly.
logging.getLogger("mail.log").setLevel(logging.WARNING)

log = structlog.get_logger(__name__)

_TERMINATOR = b"\r\n.\r\n"
_CHUNK = 1 << 16


class LmtpBackend(Protocol):
    """What the listener asks of the rest of the gateway."""

    def rcpt_status(self, address: str) -> SmtpReply: ...

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes,
                      peer: str) -> Outcome: ...

    def log_connection(self, comm: Comm) -> None:
        """Write a closed connection's communication without blocking; never raises."""


def parse_path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """'FROM:<a@b> SIZE=10' → ('a@b', ['SIZE=10']); None when malformed."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    arg = arg[len(keyword):].lstrip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            return None
        addr, rest = arg[1:end], arg[end + 1:]
        if rest and not rest.startswith(" "):
            return None
    else:
        addr, _, rest = arg.partition(" ")
    if addr.startswith("@") and ":" in addr:         # source route: @a,@b:user@host
        addr = addr.split(":", 1)[1]
    if any(c in addr for c in " <>\t\r\n"):
        return None
    return addr, rest.split()


class LmtpSession(IdleTimer, LMTP):
    """One LMTP connection."""

    def __init__(self, backend: LmtpBackend, *, max_message_size: int, max_recipients: int,
                 hostname: str, timeout: float = 300, loop: Any = None,
                 limit: SessionLimit | None = None) -> None:
        # Replaced in connection_made once the peer is known; written once, when lost.
        self._record = ConnectionRecord("unix")
        self._logged = False
        self._limit = limit
        self._refused = False
        self._peer_raw: Any = None
        super().__init__(None, data_size_limit=max_message_size, hostname=hostname,
                         ident="deskgate LMTP", timeout=timeout, enable_SMTPUTF8=True,
                         loop=loop)
        self.backend = backend
        self.max_recipients = max_recipients
        self.on_lost: Callable[[], None] | None = None
        self._from: str | None = None
        self._rcpts: list[str] = []
        self._peer = "unix"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if self._limit is not None and self._limit.admit(peer) is not None:
            # Over max_sessions: 421 and close, before any session state exists.
            self._refused = True
            cast(asyncio.Transport, transport).write(refusal(self.hostname))
            transport.close()
            return
        self._peer_raw = peer
        super().connection_made(transport)
        assert self.session is not None
        self._peer = _peer_name(self.session.peer)
        self._record = ConnectionRecord(self._peer)

    def connection_lost(self, error: Exception | None) -> None:
        if self.on_lost is not None:       # an AcceptLoop counts refused sessions too
            self.on_lost()
            self.on_lost = None
        if self._refused:
            return
        if self._limit is not None:
            self._limit.release(self._peer_raw)
        super().connection_lost(error)
        if not self._logged:
            self._logged = True
            try:
                self.backend.log_connection(self._record.finish(error))
            except Exception:
                log.exception("LMTP connection not logged", peer=self._peer)

    def _timeout_cb(self) -> None:
        self._record.timed_out = True
        if self.transport is not None and not self.transport.is_closing():
            cast(asyncio.Transport, self.transport).write(idle_timeout(self.hostname))
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # aiosmtpd calls these on RSET, LHLO and after DATA.
    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._from = None
        self._rcpts = []

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self._record.ended()

    async def push(self, status: AnyStr) -> None:
        # Our own refusals go through _refuse; this catches aiosmtpd's (unknown command,
        # line too long, ...).
        if isinstance(status, str) and status[:1] in ("4", "5"):
            self._record.refused("Reply", "", status)
        await super().push(status)

    async def _refuse(self, key: str, reply: SmtpReply | str, subject: str = "") -> None:
        """Answer a command with a 4xx/5xx reply and log it on the connection."""
        text = str(reply)
        self._record.refused(key, subject, text)
        await super().push(text)

    async def _reply(self, reply: SmtpReply | str) -> None:
        await super().push(str(reply))

    async def smtp_LHLO(self, arg: str) -> None:
        if not arg:
            await self._refuse("LHLO", "501 5.5.4 Syntax: LHLO hostname")
            return
        assert self.session is not None
        self._set_rset_state()
        self.session.host_name = arg
        self.session.extended_smtp = True
        self._record.lhlo(arg)
        lines = [f"250-{self.hostname}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                 "250-8BITMIME", "250-SMTPUTF8", f"250 SIZE {self.data_size_limit}"]
        self.command_size_limits["MAIL"] = 512 + 26 + 10
        await self._reply("\r\n".join(lines))

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self._refuse("MAIL", "503 5.5.1 Send LHLO first")
            return
        if self._from is not None:
            await self._refuse("MAIL", errors.SmtpReply(503, "5.5.1", "nested MAIL command"))
            return
        parsed = parse_path(arg or "", "FROM:")
        if parsed is None:
            await self._refuse("MAIL", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]",
                               f"MAIL {arg or ''}")
            return
        addr, params = parsed
        for p in params:
            key, _, value = p.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit():
                    await self._refuse("MAIL", errors.SYNTAX, f"<{addr}> {p}")
                    return
                if int(value) > (self.data_size_limit or 0) > 0:
                    await self._refuse("MAIL", errors.TOO_BIG, f"<{addr}> {p}")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    await self._refuse("MAIL", "501 5.5.4 BODY must be 7BIT or 8BITMIME",
                                       f"<{addr}> {p}")
                    return
            elif key not in ("SMTPUTF8", "RET", "ENVID", "AUTH"):
                await self._refuse("MAIL", f"555 5.5.4 MAIL parameter {key} not supported",
                                   f"<{addr}> {p}")
                return
        self._from = addr
        self._record.mail(addr)
        await self._reply(errors.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self._from is None:
            await self._refuse("RCPT", "503 5.5.1 Need MAIL command", f"RCPT {arg or ''}")
            return
        parsed = parse_path(arg or "", "TO:")
        if parsed is None or not parsed[0] or "@" not in parsed[0]:
            await self._refuse("RCPT", errors.BAD_ADDRESS if parsed else errors.SYNTAX,
                               f"RCPT {arg or ''}")
            return
        addr = parsed[0]
        if len(self._rcpts) >= self.max_recipients:
            await self._refuse("RCPT", errors.TOO_MANY_RCPTS, f"<{addr}>")
            return
        reply = self.backend.rcpt_status(addr)
        if not reply.ok:
            await self._refuse("RCPT", reply, f"<{addr}>")
            return
        self._rcpts.append(addr)
        self._record.rcpt()
        await self._reply(reply)

    async def smtp_DATA(self, arg: str) -> None:
        if arg:
            await self._refuse("DATA", "501 5.5.4 Syntax: DATA")
            return
        if self._from is None:
            await self._refuse("DATA", "503 5.5.1 Need MAIL command")
            return
        if not self._rcpts:
            await self._refuse("DATA", "503 5.5.1 Need RCPT command", f"from <{self._from}>")
            return
        record = self._record
        record.data()
        await self._reply("354 End data with <CR><LF>.<CR><LF>")
        raw = await self._read_data()
        if raw is None:            # connection closed in the middle
            return
        rcpts, mail_from = list(self._rcpts), self._from
        self._set_post_data_state()
        if raw is False:
            record.refused("DATA", f"message from <{mail_from}>", str(errors.TOO_BIG))
            record.too_big()
            await self._reply("\r\n".join(str(errors.TOO_BIG) for _ in rcpts))
            record.ended()
            return
        record.delivering()
        outcome: Outcome | None = None
        try:
            outcome = await self.backend.deliver(mail_from, rcpts, raw, self._peer)
            replies: Sequence[SmtpReply] = outcome.replies
        except Exception:
            logging.getLogger(__name__).exception("delivery failed")
            replies = [errors.TEMPFAIL] * len(rcpts)
        await self._reply("\r\n".join(str(r) for r in replies))
        record.message(outcome)
        record.ended()

    async def _read_data(self) -> bytes | Literal[False] | None:
        """Read up to CRLF.CRLF; bytes, False when over the size limit, None on EOF."""
        reader = self._reader
        limit = self.data_size_limit or 0
        buf = bytearray(b"\r\n")    # the CRLF that ended the DATA command line
        scan = 0
        too_big = False
        while True:
            idx = buf.find(_TERMINATOR, scan)
            if idx >= 0:
                break
            if limit and len(buf) > limit + 2 + 4:
                too_big = True
                del buf[:-4]
            scan = max(0, len(buf) - 4)
            chunk = await reader.read(_CHUNK)
            if not chunk:
                return None
            buf += chunk
        rest = buf[idx + 5:]
        if rest:
            # Pipelined commands after the final dot go back to the command reader.
            reader._buffer[:0] = rest  # type: ignore[attr-defined]
        if too_big:
            return False
        body = bytes(buf[:idx + 2])
        if b"\r\n.." in body:
            body = body.replace(b"\r\n..", b"\r\n.")
        body = body[2:]
        if limit and len(body) > limit:
            return False
        return body


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "unix")


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
                          shared: bool = False, limit: SessionLimit | None = None
                          ) -> list[Any]:
    """Serve LMTP on already bound sockets; `shared` when other processes accept too."""
    loop = asyncio.get_running_loop()

    def factory() -> LmtpSession:
        return LmtpSession(backend, max_message_size=max_message_size,
                           max_recipients=max_recipients, hostname=hostname, timeout=timeout,
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
