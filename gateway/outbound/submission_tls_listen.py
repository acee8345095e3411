"""The connections of [submission] tls_listen (implicit TLS, RFC 8314): the TLS
handshake first, then the submission session on the TLS transport, as Postfix's
smtpd_tls_wrappermode. The listener is gateway.outbound.submission's
SubmissionService."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol, cast

from gateway.limits import SessionLimit


class TlsListener(Protocol):
    """What a tls_listen connection needs of its listener (SubmissionService)."""

    @property
    def limit(self) -> SessionLimit: ...

    @property
    def handshakes(self) -> set[asyncio.Task[None]]: ...

    @property
    def handshake_timeout(self) -> float: ...

    def handshake_failed(self, peer: Any, error: BaseException) -> None: ...


class TlsSession(Protocol):
    """The session a tls_listen connection hands over to (SubmissionSession, an
    asyncio protocol)."""

    def admitted(self, peer: Any) -> None: ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...


class TlsFirst(asyncio.Protocol):
    """A connection of [submission] tls_listen: the TLS handshake, then a
    SubmissionSession on the TLS transport. A handshake that fails (a client speaking
    plain text, a scanner, a timeout) is logged and counted as a refused connection;
    the listener goes on. The connection counts towards max_sessions (and
    max_sessions_per_ip) from its accept, handshake included: over the limit it is
    closed at once (a 421 in plain text would be no TLS record), counted and logged as
    a refused session."""

    def __init__(self, service: TlsListener, tls: ssl.SSLContext,
                 session: TlsSession) -> None:
        self.service = service
        self.tls = tls
        self.session = session
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The task runs before the loop first reads the socket, so start_tls gets the
        # client's first byte (the ClientHello); data_received never sees one.
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if self.service.limit.admit(peer, replied=False) is not None:
            transport.close()
            return
        self.session.admitted(peer)
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self.service.handshakes.add(task)
        task.add_done_callback(self.service.handshakes.discard)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        try:
            tls_transport = await loop.start_tls(
                cast(asyncio.WriteTransport, transport),
                cast(asyncio.BaseProtocol, self.session), self.tls,
                server_side=True, ssl_handshake_timeout=self.service.handshake_timeout)
        except (OSError, EOFError, asyncio.CancelledError) as exc:
            transport.close()
            self.service.limit.release(peer)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.service.handshake_failed(peer, exc)
            return
        except BaseException:
            transport.close()
            self.service.limit.release(peer)
            raise
        if tls_transport is None:       # the connection ended meanwhile
            transport.close()
            self.service.limit.release(peer)
            return
        self.session.connection_made(tls_transport)
