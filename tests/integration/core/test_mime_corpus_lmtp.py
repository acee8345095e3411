"""The corpus of broken and unusual real-world messages (tests/unit/core/test_mime_corpus.py)
through the real LMTP listener, on SQLite and PostgreSQL: every message is answered 250
per recipient, kept byte for byte as a ticket's article (none goes to the quarantine),
and the article reads as it does on the unit path: body, subject, sender, attachments."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from gateway.store.tables import Article, Attachment, Quarantine, RawMessage
from tests.integration.core.stored import db_conf
from tests.peers.lmtp import LmtpClient
from tests.unit.core.test_mime_corpus import CORPUS

RCPTS = ["support@example.org", "sales@example.org"]


def as_sent(data: bytes) -> bytes:
    """What LmtpClient puts on the wire (before dot-stuffing): CRLF lines, final CRLF."""
    body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return body if body.endswith(b"\r\n") else body + b"\r\n"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_gateway(request, gateway):
    if request.param == "postgresql":
        return gateway(db_conf(request.getfixturevalue("pg_url")))
    return gateway()


def test_corpus_over_lmtp_answered_and_stored_as_articles(backend_gateway):
    rg = backend_gateway
    client = LmtpClient(rg.socket_path)
    assert client.lhlo()[0] == 250
    sent: dict[str, str] = {}
    replies: dict[str, list[int]] = {}
    for name, case in CORPUS.items():
        _, data = client.transaction("customer@customer.test", RCPTS, case.raw)
        replies[name] = [code for code, _ in data]
        sent[hashlib.sha256(as_sent(case.raw)).hexdigest()] = name
    client.close()
    assert {n: r for n, r in replies.items() if r != [250, 250]} == {}

    with rg.gateway.engine.connect() as conn:
        assert conn.execute(select(Quarantine.id)).all() == []
        rows = conn.execute(select(Article.id, Article.subject, Article.from_addr,
                                   Article.body, RawMessage.data)
                            .join(RawMessage, RawMessage.id == Article.raw_id)).all()
        files: dict[int, list[tuple[str, str, bytes]]] = {}
        for a in conn.execute(select(Attachment.article_id, Attachment.filename,
                                     Attachment.content_type, Attachment.content)
                              .order_by(Attachment.id)).all():
            files.setdefault(a.article_id, []).append(
                (a.filename, a.content_type, bytes(a.content)))
    stored = {sent.get(hashlib.sha256(bytes(r.data)).hexdigest(), "?"): r for r in rows}
    assert sorted(stored) == sorted(CORPUS)

    problems: dict[str, object] = {}
    for name, case in CORPUS.items():
        art = stored[name]
        got = (art.subject, art.from_addr)
        if got != (case.subject, case.from_addr):
            problems[name] = got
        if case.body is not None and art.body.strip() != case.body:
            problems[name] = art.body[:200]
        if case.attachments is not None and files.get(art.id, []) != case.attachments:
            problems[name] = files.get(art.id, [])[:3]
    assert problems == {}

    again = LmtpClient(rg.socket_path)
    assert again.lhlo()[0] == 250
    again.close()
