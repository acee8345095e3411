"""A webhook receiver for hand-off tests: a small aiohttp app on loopback in a thread.

It checks the HMAC-SHA256 signature like a real receiver would, records every
request, answers with a ticket id/number of its own, and can be told to fail
(HTTP 500) a number of times or to hang, or be stopped and started again on the
same port to play a helpdesk that is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int

    @property
    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class WebhookReceiver:
    secret: str
    port: int
    fail_next: int = 0               # answer 500 to this many requests
    hang_seconds: float = 0.0        # sleep before answering (a slow helpdesk)
    tell_number: bool = True         # answer with a ticket number (a pipe-like helpdesk does not)
    arrived: int = 0                 # requests that reached the handler (before any hang)
    received: list[Received] = field(default_factory=list)
    tickets: dict[str, str] = field(default_factory=dict)    # idempotency key -> ticket id
    _runner: web.AppRunner | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        ts = headers.get("X-Deskgate-Timestamp", "")
        want = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
        fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
        return fresh and hmac.compare_digest(want, headers.get("X-Deskgate-Signature", ""))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrived += 1
        headers = dict(request.headers)
        ok = self.verify(headers, body)
        if self.hang_seconds:
            await asyncio.sleep(self.hang_seconds)
        if not ok:
            status = 401
        elif self.fail_next > 0:
            self.fail_next -= 1
            status = 500
        else:
            status = 200
        self.received.append(Received(headers, body, ok, status))
        if status != 200:
            return web.Response(status=status, text="receiver says no")
        doc = json.loads(body)
        if doc.get("event") == "ping":
            return web.json_response({"pong": True})
        key = doc["idempotency_key"]
        ticket = doc["ticket"].get("helpdesk_ticket_id") or self.tickets.get(key) \
            or str(1000 + len(self.tickets))
        self.tickets[key] = ticket
        if not self.tell_number:
            return web.json_response({})
        return web.json_response({"ticket_id": ticket, "ticket_number": self.number(ticket)})

    @staticmethod
    def number(ticket_id: str) -> str:
        """The receiver's ticket number of a ticket id (15 digits, like OTOBO's)."""
        return f"20261203{int(ticket_id):07d}"

    def start(self) -> WebhookReceiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "webhook receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = self._runner = None

    def delivered(self) -> list[dict[str, Any]]:
        """Documents answered 2xx (the ping excluded), in arrival order."""
        return [r.doc for r in self.received if r.status == 200 and r.doc.get("event") != "ping"]

    def wait_delivered(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.delivered()
