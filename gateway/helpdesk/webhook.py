"""`[helpdesk] type = "webhook"`: POST a JSON document per processed message.

The body is signed with HMAC-SHA256 over `<timestamp>.<body>` (header
`X-Deskgate-Signature: sha256=<hex>`, timestamp in `X-Deskgate-Timestamp`), so
a receiver can check origin and freshness; `Idempotency-Key` is the same on
every retry of one hand-off. Any 2xx is delivered; the receiver may answer
`{"ticket_id": ..., "ticket_number": ...}` to tell its ticket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.request
from datetime import date, datetime
from typing import Any

from gateway.config import Config
from gateway.helpdesk.base import Delivered, HandoffError, HandoffItem
from gateway.helpdesk.filenames import safe_filename
from gateway.helpdesk.http import opener, redirect_note, request

SCHEMA_VERSION = 1


def document(item: HandoffItem) -> dict[str, Any]:
    """The JSON document of one hand-off (docs/helpdesk.md describes every field)."""
    return {
        "version": SCHEMA_VERSION,
        "event": document_event(item),
        "idempotency_key": item.key,
        "handoff_id": item.id,
        "attempt": item.attempts + 1,
        "created": item.created,
        "ticket": {"id": item.ticket_id, **item.ticket, "queue": item.queue},
        "article": {"id": item.article_id, **item.article},
        "decisions": item.decisions,
        "crypto": item.crypto,
        "attachments": [{"filename": safe_filename(a.filename, n),
                         "content_type": a.content_type,
                         "size": len(a.content), "content_id": a.content_id,
                         "disposition": a.disposition,
                         "content_base64": base64.b64encode(a.content).decode("ascii")}
                        for n, a in enumerate(item.attachments, 1)],
    }


def _default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def tls_context(cfg: Config) -> ssl.SSLContext:
    hd = cfg.helpdesk
    return ssl.create_default_context(cafile=str(cfg.path(hd.tls_ca_file))
                                      if hd.tls_ca_file else None)


class Webhook:
    type = "webhook"

    def __init__(self, config: Config) -> None:
        hd = config.helpdesk
        self.url = hd.url
        self.account = hd.url.split("?", 1)[0]
        self.secret = str(hd.secret or "")
        self.timeout = hd.timeout
        self.context = tls_context(config) if hd.url.startswith("https:") else None
        self._opener = opener(self.context)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        # The URL scheme is checked by the config validator: http:// or https:// only.
        req = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310
                                     headers=headers)
        try:
            answer = request(self._opener, req, self.timeout, limit=65536)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise HandoffError(f"cannot reach {self.account}: {reason}") from None
        if answer.error is None:
            return answer.status, answer.body
        if note := redirect_note(answer.error):
            raise HandoffError(f"{self.account} answered HTTP {answer.status}{note}")
        return answer.status, answer.body[:2000]

    def deliver(self, item: HandoffItem) -> Delivered:
        body = json.dumps(document(item), default=_default, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        status, answer = self._post(body, {
            "Content-Type": "application/json", "User-Agent": "deskgate",
            "Idempotency-Key": item.key, "X-Deskgate-Event": document_event(item),
            "X-Deskgate-Timestamp": ts, "X-Deskgate-Signature": sign(self.secret, ts, body)})
        if 200 <= status < 300:
            ids = _answer_ids(answer)
            return Delivered(ticket_id=ids[0], ticket_number=ids[1], detail=f"HTTP {status}")
        text = answer.decode("utf-8", "replace").strip()[:300]
        temporary = status >= 500 or status in (401, 403, 404, 408, 425, 429)
        raise HandoffError(f"{self.account} answered HTTP {status}" + (f": {text}" if text
                                                                        else ""),
                           temporary=temporary)

    def check(self) -> list[tuple[str, str, str]]:
        body = json.dumps({"version": SCHEMA_VERSION, "event": "ping"}).encode()
        ts = str(int(time.time()))
        try:
            status, answer = self._post(body, {
                "Content-Type": "application/json", "User-Agent": "deskgate",
                "X-Deskgate-Event": "ping", "X-Deskgate-Timestamp": ts,
                "X-Deskgate-Signature": sign(self.secret, ts, body)})
        except HandoffError as exc:
            return [("fail", "connect", str(exc))]
        ok = 200 <= status < 300
        return [("ok", "connect", f"reached {self.account}"),
                ("ok" if ok else "fail", "ping", f"HTTP {status}"
                 + ("" if ok else ": " + answer.decode("utf-8", "replace")[:200]))]

    def close(self) -> None:
        return None


def document_event(item: HandoffItem) -> str:
    return "ticket.created" if item.kind == "create" else "article.created"


def _answer_ids(answer: bytes) -> tuple[str, str]:
    try:
        data = json.loads(answer or b"{}")
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("ticket_id") or ""), str(data.get("ticket_number") or "")
