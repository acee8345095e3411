"""A scripted HTTP server on loopback for connector unit tests: each (method, path)
answers what the test says, every request is recorded."""

from __future__ import annotations

import json
import threading
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, answer: Answer | Callable[[Request], Answer]) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda _r: answer)


@contextmanager
def fake_http() -> Iterator[FakeHttp]:
    fake = FakeHttp()

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
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _any

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
