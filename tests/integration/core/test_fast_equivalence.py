"""Every prepared statement of the product (gateway.store.Prepared) writes and returns the
same through its fast path (the DBAPI cursor) as through plain Connection.execute (the
`[store] fast_path = false` fallback), on SQLite and on PostgreSQL.

The statements are found by scanning gateway/ for `Prepared(...)` calls and importing
their modules: a new statement without a case below fails this test."""

from __future__ import annotations

import ast
import importlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, select, text

from gateway.store import FAST_PATH_OPTION, Prepared, prepared_statements
from gateway.store.db import make_engine, migrate
from gateway.store.tables import (
    Article,
    Base,
    CommObject,
    Communication,
    RawMessage,
    Ticket,
)
from tests.conftest import PG_ADMIN_URL
from tests.peers.require import missing_peer

GATEWAY = Path(__file__).resolve().parents[3] / "gateway"

WHEN = datetime(2026, 11, 27, 8, 30, 15, 123456, tzinfo=UTC)
# Not UTC: both paths must store the same thing for an offset other than zero.
BERLIN = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=1)))
UNICODE = "Drucker kaputt \u2013 «dringend» \u00e9\u00e8 \U0001f5a8 \u4e2d\u6587"


def _prepared_calls() -> list[tuple[str, int, ast.Call]]:
    """(module, line, call) of every Prepared(...) call under gateway/."""
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(GATEWAY.parent).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (
                    getattr(node.func, "id", None) == "Prepared"
                    or getattr(node.func, "attr", None) == "Prepared"):
                found.append((module, node.lineno, node))
    return found


def _product_statements() -> dict[str, Prepared]:
    for module in sorted({m for m, _, _ in _prepared_calls()}):
        importlib.import_module(module)
    return prepared_statements()


# ------------------------------------------------------------------ cases
# Each case gives the rows one method call writes, as a function of the ids the
# setup created and a tag that keeps unique columns apart between the calls.

Refs = dict[str, int]
Case = Callable[[Refs, str], list[dict[str, Any]]]


def _ticket(refs: Refs, tag: str) -> list[dict[str, Any]]:
    full = {"number": f"n-{tag}-1", "title": UNICODE, "queue": "Raw", "state": "new",
            "state_type": "new", "priority": "3 normal", "type": "Incident", "service": "IT",
            "sla": "gold", "owner": "agent", "responsible": "lead", "lock": "lock",
            "customer_no": "c-1", "customer_user": "kunde@example.org",
            "pending_until": BERLIN,
            "dynamic_fields": {"Server": "mail1", "n": [1, 2.5, None, True], "ü": "\u2603"},
            "linked_ticket_id": refs["ticket"], "helpdesk_ticket_id": "h1",
            "helpdesk_ticket_number": "H-1", "classification": {"queue": "Raw", "p": 0.75},
            "created": WHEN, "changed": BERLIN}
    minimal = {"number": f"n-{tag}-2", "queue": "Raw", "state": "new", "state_type": "new",
               "priority": "3 normal", "created": WHEN, "changed": WHEN}
    nones = {**minimal, "number": None, "pending_until": None, "linked_ticket_id": None,
             "dynamic_fields": None}
    # as the store stage writes a new ticket: empty JSON objects, one datetime for both
    empties = {**minimal, "number": f"n-{tag}-3", "dynamic_fields": {}, "classification": {}}
    return [full, minimal, nones, empties]


def _article(refs: Refs, tag: str) -> list[dict[str, Any]]:
    full = {"ticket_id": refs["ticket"], "direction": "incoming", "sender_type": "customer",
            "is_visible_for_customer": False, "from_addr": f"Jörg <j@example.org> {tag}",
            "from_email": "j@example.org", "to_addr": "support@example.org",
            "cc_addr": "cc@example.org", "reply_to": "r@example.org", "subject": UNICODE,
            "message_id": f"<{tag}@x>", "in_reply_to": "<a@x>", "references": "<a@x> <b@x>",
            "content_type": "text/html", "body": UNICODE * 3, "body_html": "<p>é</p>",
            "headers": [["Subject", UNICODE], ["X-Empty", ""]], "loop": True,
            "crypto": {"signed": True, "signer": "é@x", "signature_valid": None},
            "transmission_status": "sent", "transmission_error": "",
            "raw_id": refs["raw"], "created": BERLIN}
    minimal = {"ticket_id": refs["ticket"], "direction": "outgoing", "sender_type": "agent",
               "created": WHEN}
    nones = {**minimal, "body_html": None, "raw_id": None}
    # as the store stage writes it: the parsed (name, value) header pairs, no crypto
    pairs = {**minimal, "headers": [("Subject", UNICODE), ("X-Empty", "")], "crypto": {}}
    empties = {**minimal, "headers": [], "crypto": {}}
    return [full, minimal, nones, pairs, empties]


def _attachment(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"article_id": refs["article"], "filename": f"Rechnung\u2013{tag}.pdf",
             "content_type": "application/pdf", "content_id": "<cid@x>",
             "disposition": "inline", "size": 3, "content": b"\x00\xff%"},
            {"article_id": refs["article"], "content": b""}]


def _raw(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"sha256": "a" * 64, "size": 5, "data": b"\x00\r\n.\xff", "created": BERLIN},
            {"sha256": tag, "size": 0, "data": b"", "created": WHEN}]


def _delivery(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"message_id": f"<{tag}@x>", "content_hash": "h" * 64, "recipient": "ü@example.org",
             "article_id": refs["article"], "outcome": "stored", "created": BERLIN},
            {"message_id": "", "content_hash": tag, "recipient": "x@y", "article_id": None,
             "outcome": "ignored", "created": WHEN}]


def _handoff(refs: Refs, tag: str) -> list[dict[str, Any]]:
    full = {"ticket_id": refs["ticket"], "article_id": refs["article"], "kind": "create",
            "key": f"k-{tag}", "helpdesk": "otobo", "status": "pending", "attempts": 2,
            "next_attempt": BERLIN, "lease_until": WHEN, "claimed_by": "node-1",
            "last_error": UNICODE, "decisions": {"Queue": "Raw", "DynamicField-ü": "ja"},
            "created": WHEN, "cycle_started": BERLIN, "updated": BERLIN, "delivered": None}
    minimal = {"ticket_id": refs["ticket"], "article_id": refs["article"], "kind": "followup",
               "key": f"m-{tag}", "helpdesk": "rt", "next_attempt": WHEN, "created": WHEN,
               "cycle_started": WHEN, "updated": WHEN}
    return [full, minimal]


def _communication(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"transport": "Email", "direction": "Incoming", "status": "Successful",
             "account_type": "LMTP", "account": f"peer {tag} ü", "start": BERLIN, "end": WHEN},
            {"direction": "Outgoing", "status": "Processing", "account_type": "SMTP",
             "start": WHEN, "end": None}]


def _comm_object(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"communication_id": refs["comm"], "type": "Message", "status": "Failed",
             "start": BERLIN, "end": WHEN, "article_id": refs["article"], "outbound_id": 7},
            {"communication_id": refs["comm"], "type": "Connection", "status": "Processing",
             "start": WHEN, "end": None, "article_id": None, "outbound_id": None}]


def _comm_entry(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"object_id": refs["obj"], "communication_id": refs["comm"], "priority": "Error",
             "key": f"Store {tag}", "value": UNICODE, "time": BERLIN},
            {"object_id": refs["obj"], "communication_id": refs["comm"], "priority": "Info",
             "key": "K", "value": "", "time": WHEN}]


def _counter(refs: Refs, tag: str) -> list[dict[str, Any]]:
    return [{"day": "20261127"}, {"day": "20261127"}, {"day": "20261128"}]


def _counter_set(refs: Refs, tag: str) -> list[dict[str, Any]]:
    # a day the upserts wrote, and one no row has (nothing to update)
    return [{"d": "20261127", "v": 41}, {"d": "20261199", "v": 3}]


CASES: dict[str, Case] = {
    "ticket.insert": _ticket,
    "article.insert": _article,
    "attachment.insert": _attachment,
    "raw_message.insert": _raw,
    "delivery.insert": _delivery,
    "handoff.insert": _handoff,
    "communication.insert": _communication,
    "comm_object.insert": _comm_object,
    "comm_entry.insert": _comm_entry,
    "ticket_counter.next.sqlite": _counter,
    "ticket_counter.next.postgresql": _counter,
    "ticket_counter.set": _counter_set,
}


# ------------------------------------------------------------------ running them

def _setup(conn: Connection) -> Refs:
    """Rows the cases refer to, written with plain SQLAlchemy (the same in both databases)."""
    ticket = conn.execute(insert(Ticket).returning(Ticket.id), {
        "number": "base", "queue": "Raw", "state": "new", "state_type": "new",
        "priority": "3 normal", "created": WHEN, "changed": WHEN}).scalar_one()
    raw = conn.execute(insert(RawMessage).returning(RawMessage.id), {
        "sha256": "b" * 64, "size": 1, "data": b"x", "created": WHEN}).scalar_one()
    article = conn.execute(insert(Article).returning(Article.id), {
        "ticket_id": ticket, "direction": "incoming", "sender_type": "customer",
        "raw_id": raw, "created": WHEN}).scalar_one()
    comm = conn.execute(insert(Communication).returning(Communication.id), {
        "direction": "Incoming", "status": "Successful", "account_type": "LMTP",
        "start": WHEN}).scalar_one()
    obj = conn.execute(insert(CommObject).returning(CommObject.id), {
        "communication_id": comm, "type": "Message", "status": "Successful",
        "start": WHEN}).scalar_one()
    return {"ticket": ticket, "raw": raw, "article": article, "comm": comm, "obj": obj}


def _run(engine: Engine, statements: dict[str, Prepared]) -> tuple[list[Any], dict[str, Any]]:
    """Every statement through execute, insert_rows and executemany (an upsert only through
    execute, as it is used); what each call returned, and then every table's rows."""
    returned: list[Any] = []
    with engine.begin() as conn:
        refs = _setup(conn)
    for name in sorted(statements):
        p = statements[name]
        if p.dialect is not None and p.dialect != engine.dialect.name:
            continue
        rows = CASES[name]
        with engine.begin() as conn:
            returned.append((name, "execute", [p.execute(conn, r) for r in rows(refs, "e")]))
        if p.dialect is None:
            with engine.begin() as conn:
                returned.append((name, "insert_rows", p.insert_rows(conn, rows(refs, "r"))))
            with engine.begin() as conn:
                returned.append((name, "executemany", p.executemany(conn, rows(refs, "m"))))
    tables: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            order = list(table.primary_key.columns)
            tables[table.name] = [tuple(r) for r in
                                  conn.execute(select(table).order_by(*order)).all()]
    return returned, tables


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine_pair(request: pytest.FixtureRequest, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Engine, Engine]]:
    """Two migrated databases of one kind: one engine with the fast path, one without
    (whatever DESKGATE_STORE_FAST_PATH the suite runs with)."""
    monkeypatch.delenv("DESKGATE_STORE_FAST_PATH", raising=False)
    urls: list[str] = []
    admin = None
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / 'fast.db'}", f"sqlite:///{tmp_path / 'plain.db'}"]
    else:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        names = [f"deskgate_eq_{uuid.uuid4().hex[:12]}" for _ in range(2)]
        try:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            missing_peer(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
        urls = [PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{n}" for n in names]
    fast, plain = make_engine(urls[0], fast_path=True), make_engine(urls[1], fast_path=False)
    try:
        migrate(fast)
        migrate(plain)
        yield fast, plain
    finally:
        fast.dispose()
        plain.dispose()
        if admin is not None:
            with admin.connect() as conn:
                for url in urls:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" '
                                      "WITH (FORCE)"))
            admin.dispose()


class TestEquivalence:
    def test_every_call_is_named(self):
        """Every Prepared(...) in gateway/ passes a name, so the registry knows it."""
        calls = _prepared_calls()
        assert calls, "no Prepared(...) found: the scan is broken"
        unnamed = [f"{m}:{line}" for m, line, call in calls
                   if len(call.args) < 2 and not any(k.arg == "name" for k in call.keywords)]
        assert unnamed == []

    def test_every_statement_has_a_case(self):
        """The cases cover exactly the product's named statements."""
        names = set(_product_statements())
        assert names - set(CASES) == set(), "statements without a case in this test"
        assert set(CASES) - names == set(), "cases for statements that no longer exist"

    def test_fast_and_plain_write_and_return_the_same(self, engine_pair, monkeypatch):
        """Same returned values, same rows in every table, both ways; the plain engine
        never plans a statement (it touches none of SQLAlchemy's private attributes)."""
        fast, plain = engine_pair
        statements = _product_statements()
        with fast.connect() as conn:
            assert conn.get_execution_options()[FAST_PATH_OPTION] is True
        fast_returned, fast_tables = _run(fast, statements)
        assert any(p._plans for p in statements.values())   # the fast path was taken

        def no_plan(self: Prepared, dialect: Any) -> Any:
            raise AssertionError(f"{self!r} planned with the fast path off")

        monkeypatch.setattr(Prepared, "_plan", no_plan)
        plain_returned, plain_tables = _run(plain, statements)
        assert plain_returned == fast_returned
        for name, rows in fast_tables.items():
            assert plain_tables[name] == rows, name
        written = {n for n, rows in fast_tables.items() if rows}
        assert {"ticket", "article", "attachment", "raw_message", "delivery", "handoff",
                "communication", "comm_object", "comm_entry", "ticket_counter"} <= written
        # the ids came back for RETURNING statements; None without
        by_call = {(n, how): out for n, how, out in fast_returned}
        assert all(isinstance(i, int) for i in by_call[("ticket.insert", "insert_rows")])
        assert by_call[("delivery.insert", "insert_rows")] == [None, None]
        counter = f"ticket_counter.next.{fast.dialect.name}"
        assert by_call[(counter, "execute")] == [1, 2, 1]

    def test_env_switch_wins_over_the_configuration(self, tmp_path, monkeypatch):
        """DESKGATE_STORE_FAST_PATH=0 turns the fast path off whatever the engine is told."""
        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "0")
        eng = make_engine(f"sqlite:///{tmp_path / 'env.db'}", fast_path=True)
        try:
            with eng.connect() as conn:
                assert conn.get_execution_options()[FAST_PATH_OPTION] is False
        finally:
            eng.dispose()
        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "maybe")
        with pytest.raises(ValueError, match="DESKGATE_STORE_FAST_PATH"):
            make_engine(f"sqlite:///{tmp_path / 'env.db'}")
