"""A small OAuth2 authorisation server for XOAUTH2 tests: a token endpoint
(refresh_token and client_credentials grants, optional refresh-token rotation)
and an RFC 7662 introspection endpoint that Dovecot's oauth2 passdb asks."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class OAuth2Server:
    username: str = "helpdesk"
    client_id: str = "deskgate"
    client_secret: str = "client-secret"
    lifetime: int = 3600
    rotate: bool = False
    refresh_tokens: set[str] = field(default_factory=set)
    access: dict[str, float] = field(default_factory=dict)    # token → expiry (epoch)
    token_requests: int = 0
    introspections: int = 0
    refused: bool = False             # introspection answers inactive for every token
    tls: ssl.SSLContext | None = None  # serve https with this server context
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def new_refresh_token(self) -> str:
        tok = "rt-" + secrets.token_hex(8)
        with self.lock:
            self.refresh_tokens.add(tok)
        return tok

    def reset(self) -> None:
        with self.lock:
            self.refresh_tokens.clear()
            self.access.clear()
            self.token_requests = self.introspections = 0
            self.lifetime, self.rotate, self.refused = 3600, False, False

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, code: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                if self.path == "/token":
                    self._reply(*owner._token(form))
                elif self.path == "/introspect":
                    self._reply(200, owner._introspect(form.get("token", "")))
                else:
                    self._reply(404, {"error": "not_found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self.lock:
            self.token_requests += 1
            if form.get("client_id") != self.client_id or \
                    form.get("client_secret") != self.client_secret:
                return 401, {"error": "invalid_client"}
            grant = form.get("grant_type")
            body: dict[str, object] = {}
            if grant == "refresh_token":
                rt = form.get("refresh_token", "")
                if rt not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "refresh token expired or revoked"}
                if self.rotate:
                    self.refresh_tokens.discard(rt)
                    new = "rt-" + secrets.token_hex(8)
                    self.refresh_tokens.add(new)
                    body["refresh_token"] = new
            elif grant != "client_credentials":
                return 400, {"error": "unsupported_grant_type"}
            at = "at-" + secrets.token_hex(12)
            self.access[at] = time.time() + self.lifetime
            body.update(access_token=at, token_type="Bearer", expires_in=self.lifetime)
            return 200, body

    def _introspect(self, token: str) -> dict[str, object]:
        with self.lock:
            self.introspections += 1
            exp = self.access.get(token)
            if self.refused or exp is None or exp < time.time():
                return {"active": False}
            return {"active": True, "username": self.username, "exp": int(exp)}
