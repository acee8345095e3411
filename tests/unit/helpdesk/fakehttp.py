"""A scripted HTTP server on loopback for connector unit tests: each (method, path)
answers what the test says, every request is recorded. With `trickle` set every answer
is sent one byte at a time (a helpdesk that keeps a connection busy without answering)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (status, headers, body): a dict or list body is sent as JSON.
Answer = tuple[int, dict[str, str], Any]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeHttp:
    routes: dict[tuple[str, str], Callable[[Request], Answer]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    trickle: float = 0.0          # seconds between the bytes of an answer (0: all at once)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, answer: Answer | Callable[[Request], Answer]) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda _r: answer)


@contextmanager
def fake_http(tls: ssl.SSLContext | None = None) -> Iterator[FakeHttp]:
    """The server; https with the certificate of `tls` when given."""
    fake = FakeHttp(scheme="https" if tls else "http")

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            req = Request(self.command, self.path.split("?", 1)[0], dict(self.headers),
                          self.rfile.read(n) if n else b"")
            fake.requests.append(req)
            route = fake.routes.get((req.method, req.path))
            status, headers, body = route(req) if route else (404, {}, {"message": "no"})
            data = (json.dumps(body).encode() if isinstance(body, dict | list)
                    else body if isinstance(body, bytes) else str(body).encode())
            if fake.trickle:
                self._trickle(status, headers, data)
                return
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _trickle(self, status: int, headers: dict[str, str], data: bytes) -> None:
            head = "".join(f"{k}: {v}\r\n" for k, v in
                           {**headers, "Content-Length": str(len(data))}.items())
            answer = f"HTTP/1.1 {status} Answer\r\n{head}\r\n".encode() + data
            self.close_connection = True
            try:
                for i in range(len(answer)):
                    self.wfile.write(answer[i:i + 1])
                    time.sleep(fake.trickle)
            except OSError:
                pass            # the client gave up

        do_GET = do_POST = do_PATCH = _any

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
