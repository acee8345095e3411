"""`[store] fast_path = false`: the gateway stores exactly what it stores with the fast
path, over LMTP, on SQLite and PostgreSQL — new tickets, attachments, follow-ups,
duplicates, ignored and quarantined mail, batches of concurrent messages, the
communication log."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from gateway.config import load_config
from gateway.store import FAST_PATH_OPTION
from gateway.store.tables import (
    Article,
    Attachment,
    CommEntry,
    CommObject,
    Communication,
    Delivery,
    Quarantine,
    Ticket,
)
from tests.conftest import RunningGateway, fresh_pg_database
from tests.integration.core.stored import db_conf
from tests.peers.lmtp import LmtpClient

TRUSTED = {"40-trusted.toml": "[lmtp]\ntrusted = true\n"}
FROM = "kunde@customer.test"


def _msg(subject: str, mid: str, extra: str = "", body: str = "Hallo \u00e9\u2603") -> bytes:
    return (f"From: K\u00fcnde <{FROM}>\r\nTo: support@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\nMIME-Version: 1.0\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def _with_attachment(subject: str, mid: str) -> bytes:
    return (f"From: {FROM}\r\nTo: support@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            '--b\r\nContent-Type: application/pdf; name="r.pdf"\r\n'
            "Content-Disposition: attachment; filename=\"r.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n").encode()


def _send(rg: RunningGateway, raw: bytes, rcpts: tuple[str, ...] = ("support@example.org",)
          ) -> list[int]:
    c = LmtpClient(rg.socket_path)
    try:
        c.lhlo()
        _, data = c.transaction(FROM, list(rcpts), raw)
    finally:
        c.close()
    return [code for code, _ in data]


def _scenario(rg: RunningGateway) -> None:
    """The same mail, in the same order, for either setting."""
    assert _send(rg, _with_attachment("Rechnung \u00fcberf\u00e4llig", "a1@c"),
                 ("support@example.org", "sales@example.org")) == [250, 250]
    with rg.gateway.engine.connect() as conn:
        number = conn.execute(select(Ticket.number)).scalar_one()
    assert _send(rg, _msg(f"RE: [Ticket#{number}] noch offen", "a2@c")) == [250]
    assert _send(rg, _with_attachment("Rechnung \u00fcberf\u00e4llig", "a1@c"),
                 ("support@example.org", "sales@example.org")) == [250, 250]    # duplicate
    assert _send(rg, _msg("ignore me", "a3@c", "X-Deskgate-Ignore: yes\r\n")) == [250]
    assert _send(rg, _msg("routed", "a4@c", "X-Deskgate-Queue: Sales\r\n"
                          "X-Deskgate-DynamicField-Server: mail\u00fc1\r\n"
                          "X-Deskgate-State-PendingTime: +2d\r\n")) == [250]
    assert _send(rg, _msg("boom", "a5@c")) == [250]                           # quarantined
    codes: list[list[int]] = []
    threads = [threading.Thread(target=lambda i=i: codes.append(
        _send(rg, _msg(f"parallel {i}", f"p{i}@c")))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [[250]] * 8


def _mask(value: str) -> str:
    """Ids, ticket numbers and sizes differ with the order concurrent messages commit in."""
    return re.sub(r"\d+", "#", value)


def _dump(engine: Engine) -> dict[str, list[Any]]:
    def js(v: Any) -> str:
        return json.dumps(v, sort_keys=True)

    with engine.connect() as conn:
        return {
            "ticket": sorted((t.title, t.queue, t.state, t.priority, js(t.dynamic_fields),
                              t.customer_user, t.pending_until is not None, t.number is None)
                             for t in conn.execute(select(Ticket))),
            "article": sorted((a.subject, a.title, a.from_addr, a.message_id, a.body,
                               js(a.headers), js(a.crypto), a.loop, a.sender_type,
                               a.raw_id is not None)
                              for a in conn.execute(
                                  select(Article, Ticket.title).join(
                                      Ticket, Ticket.id == Article.ticket_id))),
            "attachment": sorted((a.filename, a.content_type, a.size, bytes(a.content))
                                 for a in conn.execute(select(Attachment))),
            "delivery": sorted((d.message_id, d.recipient, d.outcome, d.article_id is None)
                               for d in conn.execute(select(Delivery))),
            "quarantine": sorted((q.reason.split(":")[0], js(q.recipients))
                                 for q in conn.execute(select(Quarantine))),
            "log": sorted((r.account_type, r.status, r.object_status, r.priority, r.key,
                           _mask(r.value))
                          for r in conn.execute(
                              select(Communication.account_type, Communication.status,
                                     CommObject.status.label("object_status"),
                                     CommEntry.priority, CommEntry.key, CommEntry.value)
                              .join(CommObject, CommObject.communication_id == Communication.id)
                              .join(CommEntry, CommEntry.object_id == CommObject.id)
                              .where(CommObject.type == "Message"))),
        }


def _boom_on_subject(fn: Callable[..., Any]) -> Callable[..., Any]:
    def store(ctx: Any, rt: Any, conn: Any) -> Any:
        if ctx.parsed is not None and ctx.parsed.subject == "boom":
            raise ValueError("store exploded")
        return fn(ctx, rt, conn)
    return store


@pytest.fixture
def second_pg_url() -> Iterator[str]:
    """One more fresh PostgreSQL database (pg_url gives one per test)."""
    with fresh_pg_database() as url:
        yield url


class TestFastPathOff:
    def test_sqlite(self, make_confdir, run_gateway, tmp_path, monkeypatch):
        """On SQLite the LMTP scenario stores the same with `[store] fast_path = false`
        as with the default, and the off run never runs a statement on the cursor."""
        _compare({}, {}, make_confdir, run_gateway, tmp_path, monkeypatch)

    @pytest.mark.postgres
    def test_postgresql(self, pg_url, second_pg_url, make_confdir, run_gateway, tmp_path,
                        monkeypatch):
        """The same on PostgreSQL."""
        _compare(db_conf(pg_url), db_conf(second_pg_url), make_confdir, run_gateway,
                 tmp_path, monkeypatch)


def _compare(on_files: dict[str, str], off_files: dict[str, str],
             make_confdir: Callable[..., Path], run_gateway: Callable[..., RunningGateway],
             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESKGATE_STORE_FAST_PATH", raising=False)
    dumps: dict[str, dict[str, list[Any]]] = {}
    # Tables SQLAlchemy saw an INSERT into (its events see Connection.execute; the fast
    # path runs on the DBAPI cursor, past them).
    seen: dict[str, set[str]] = {}
    for setting, extra in (("true", on_files), ("false", off_files)):
        files = {**TRUSTED, **extra, "50-store.toml": f"[store]\nfast_path = {setting}\n"}
        cfg = load_config(make_confdir(files, root=tmp_path / f"root-{setting}"))
        assert cfg.store.fast_path is (setting == "true")
        rg = run_gateway(cfg)
        tables = seen[setting] = set()

        def note(conn: Any, cursor: Any, statement: str, *args: Any, tables: set[str] = tables
                 ) -> None:
            m = re.match(r"\s*INSERT INTO (\w+)", statement)
            if m:
                tables.add(m.group(1))

        event.listen(rg.gateway.engine, "before_cursor_execute", note)
        assert rg.gateway.engine.get_execution_options()[FAST_PATH_OPTION] is (
            setting == "true")
        stages = rg.gateway.pipeline.stages
        rg.gateway.pipeline.stages = stages.with_stage(
            "commit", "store", _boom_on_subject(stages.fn("commit", "store")))
        _scenario(rg)
        dumps[setting] = _dump(rg.gateway.engine)
    hot = {"raw_message", "ticket", "article", "attachment", "delivery", "communication",
           "comm_object", "comm_entry", "ticket_counter"}
    assert hot <= seen["false"]          # all through Connection.execute
    assert not hot & seen["true"]        # none: all on the cursor
    on, off = dumps["true"], dumps["false"]
    assert len(on["ticket"]) == 10 and len(on["attachment"]) == 1
    assert [q[0] for q in on["quarantine"]] == ["ValueError"]
    assert {d[2] for d in on["delivery"]} == {"stored", "ignored", "quarantined"}
    for table in on:
        assert off[table] == on[table], table
