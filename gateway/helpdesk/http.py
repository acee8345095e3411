"""The HTTP client of the REST and webhook connectors: urllib without redirects, and
one deadline for the whole of each request.

urllib follows a 301/302/303 to a POST by sending a GET without the body (a 2xx to
that GET would look like a delivery of a document nobody stored), and it sends
the request's headers (an RT token, a webhook signature) to wherever Location
points. A redirect is an error instead that names the new location, so an
administrator can set `[helpdesk] url` to it.

urllib's timeout applies to each socket operation: a helpdesk that sends its
answer a byte every few seconds held a connector thread, and the lease of its
row, for ever; and each address of the helpdesk's name was given the whole
timeout to connect, so a name whose addresses drop SYNs cost one timeout per
address. `request` gives the whole request — resolving the name, connecting to
its addresses in turn, TLS, sending, the answer to its last byte —
`[helpdesk] timeout` in all: when it runs out the connection is shut down and the
request fails with TimeoutError.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: Message, newurl: str) -> None:
        return None          # urllib then raises the 3xx as an HTTPError


class _Deadline:
    """Shuts down the connections of one request when its time is up. Each connection
    is registered by a duplicate of its socket, which reaches the connection after TLS
    has taken over the original (the handshake included)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _shut(dup)

    def left(self) -> float:
        return self._end - time.monotonic()

    def passed(self) -> bool:
        return self.expired or self.left() <= 0

    def open_connection(self, address: tuple[str, int], timeout: float,
                        source_address: tuple[str, int] | None = None) -> socket.socket:
        """socket.create_connection with what is left of the deadline, not `timeout`,
        for the name's resolution and for all its addresses together."""
        host, port = address
        err: OSError | None = None
        for family, kind, proto, _, sockaddr in self._resolve(host, port):
            left = self.left()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(left)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                err = exc
                continue
            sock.settimeout(timeout)
            return sock
        if err is not None and self.left() > 0:
            raise err
        raise TimeoutError(f"connecting to {host} port {port} timed out")

    def _resolve(self, host: str, port: int) -> list[Any]:
        """getaddrinfo, given no more than what is left: a resolver that does not
        answer is left to finish in its own thread."""
        with contextlib.suppress(socket.gaierror):       # an address: nothing to wait for
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_NUMERICHOST)
        found: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as exc:
                found.append(exc)
            done.set()

        threading.Thread(target=run, name="helpdesk-resolve", daemon=True).start()
        if not done.wait(max(self.left(), 0)):
            raise TimeoutError(f"resolving {host} timed out")
        if isinstance(found[0], OSError):
            raise found[0]
        return list(found[0])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                _shut(s)

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _current.deadline = None
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):       # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()       # the _Deadline of the request this thread is making


class _Watched(http.client.HTTPConnection):
    def connect(self) -> None:
        deadline: _Deadline | None = getattr(_current, "deadline", None)
        if deadline is not None:      # name and addresses within the deadline too
            self._create_connection = deadline.open_connection
        super().connect()    # TCP only: HTTPSConnection wraps the socket after this
        if deadline is not None and self.sock is not None:
            deadline.watch(self.sock)


class _WatchedTls(http.client.HTTPSConnection, _Watched):
    pass


class _HttpHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_Watched, req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self.tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedTls, req, context=self.tls)


def opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """An opener that verifies TLS with `context` (the system store when None) and
    follows no redirect; use it through `request`."""
    return urllib.request.build_opener(_HttpHandler(), _HttpsHandler(context), _NoRedirect())


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Message | None
    error: urllib.error.HTTPError | None = None     # a status ≥ 400 (or 3xx) as raised


def request(op: urllib.request.OpenerDirector, req: urllib.request.Request,
            timeout: float, *, limit: int = -1) -> Answer:
    """Send `req` and read the answer (at most `limit` bytes of its body when ≥ 0),
    all within `timeout` seconds. Any HTTP status is an Answer; a failure of the
    transport raises OSError (urllib's URLError), TimeoutError when time ran out."""
    deadline = _Deadline(timeout)
    try:
        with deadline:
            answer = _exchange(op, req, timeout, limit)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if deadline.passed():
            raise TimeoutError(_late(timeout)) from None
        if isinstance(exc, OSError):
            raise
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    if deadline.expired:          # an answer cut short is no answer
        raise TimeoutError(_late(timeout))
    return answer


def _exchange(op: urllib.request.OpenerDirector, req: urllib.request.Request,
              timeout: float, limit: int) -> Answer:
    try:
        resp: Any = op.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.fp is None:
            return Answer(exc.code, b"", exc.headers, exc)
        with exc:
            return Answer(exc.code, exc.read(limit) if limit >= 0 else exc.read(),
                          exc.headers, exc)
    with resp:
        return Answer(resp.status, resp.read(limit) if limit >= 0 else resp.read(),
                      resp.headers)


def _late(timeout: float) -> str:
    return f"timed out: no complete answer within {timeout:g} s ([helpdesk] timeout)"


def redirect_note(exc: urllib.error.HTTPError) -> str:
    """' (redirected to URL; set [helpdesk] url to it)' for a 3xx, else ''."""
    if not 300 <= exc.code < 400:
        return ""
    where = exc.headers.get("Location", "") if exc.headers is not None else ""
    return (f" (a redirect to {where or 'an unnamed location'}, not followed; "
            "check [helpdesk] url)")
