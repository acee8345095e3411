"""The lookups that the indexes of migration 0016 serve use them, on SQLite and
PostgreSQL: the helpdesk ticket indexes are partial (a new standalone ticket adds
no entry to them), comm_entry has no communication_id index (a communication's
entries are read through its objects). A lookup written so that the database
cannot use an index would scan the whole table on a big store."""

from __future__ import annotations

import email
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, insert
from sqlalchemy.exc import IntegrityError

from gateway.commlog_views import get_communication, purge_ids
from gateway.helpdesk.outbox_claim import absorb
from gateway.outbound.rewrite import find_ticket
from gateway.store import repo
from gateway.store.tables import CommEntry, CommObject, Communication
from gateway.web.logdetail import read_page

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _ticket(conn: Connection, **kw: Any) -> int:
    return repo.insert_ticket(conn, number=kw.pop("number", None), title="t", queue="Raw",
                              state="new", state_type="new", priority="3 normal",
                              created=NOW, changed=NOW, **kw)


def _comm(conn: Connection) -> int:
    cid = conn.execute(insert(Communication).returning(Communication.id), {
        "direction": "Incoming", "status": "Successful", "account_type": "LMTP",
        "start": NOW}).scalar_one()
    oid = conn.execute(insert(CommObject).returning(CommObject.id), {
        "communication_id": cid, "type": "Message", "status": "Successful",
        "start": NOW}).scalar_one()
    conn.execute(insert(CommEntry), {"object_id": oid, "communication_id": cid,
                                     "priority": "Info", "key": "k", "value": "v",
                                     "time": NOW})
    return int(cid)


@pytest.fixture
def plans(engine: Engine) -> Iterator[Callable[[Callable[[Connection], Any], str], list[str]]]:
    """Runs a lookup and returns the query plans of the statements it ran that read
    `table`."""
    def run(fn: Callable[[Connection], Any], table: str) -> list[str]:
        seen: list[tuple[str, Any]] = []

        def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any,
                    _many: bool) -> None:
            if table in statement:
                seen.append((statement, params))
        with engine.begin() as conn:
            event.listen(conn, "before_cursor_execute", capture)
            fn(conn)
            event.remove(conn, "before_cursor_execute", capture)
            out = []
            for statement, params in seen:
                if engine.dialect.name == "sqlite":
                    rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                params).all()
                    out.append("\n".join(str(r[-1]) for r in rows))
                else:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                    rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
                    out.append("\n".join(str(r[0]) for r in rows))
            assert out, f"no statement on {table}"
            return out
    yield run


def _scans(plan: str, table: str) -> bool:
    """SQLite: SCAN <table> (no index); PostgreSQL: Seq Scan on <table>."""
    lines = plan.splitlines()
    return any(line.strip().startswith(f"SCAN {table}") or f"Seq Scan on {table}" in line
               for line in lines)


def test_a_communications_entries_are_read_and_purged_through_an_index(engine: Engine,
                                                                       plans: Any) -> None:
    with engine.begin() as conn:
        cid = _comm(conn)
    for fn in (lambda c: get_communication(c, cid),
               lambda c: read_page(c, cid, priority=None, limit=10, offset=0),
               lambda c: purge_ids(c, [cid])):
        for plan in plans(fn, "comm_entry"):
            assert not _scans(plan, "comm_entry"), plan


def test_tickets_are_found_by_their_helpdesk_ticket_through_an_index(engine: Engine,
                                                                     plans: Any) -> None:
    with engine.begin() as conn:
        tid = _ticket(conn, helpdesk_ticket_id="7", helpdesk_ticket_number="7")
        _ticket(conn, number="2026120610001")
    msg = email.message_from_string("X-RT-Ticket: example.org #7\n\nhi\n")
    for fn in (lambda c: repo.ticket_by_number(c, "7"),
               lambda c: absorb(c, tid, "7"),
               lambda c: find_ticket(c, msg, "Ticket#", "rt-rest2")):
        for plan in plans(fn, "helpdesk_ticket"):
            assert not _scans(plan, "ticket"), plan
    with engine.connect() as conn:
        assert repo.ticket_by_number(conn, "7").id == tid
        assert find_ticket(conn, msg, "Ticket#", "rt-rest2")[0] == tid


def test_standalone_tickets_add_nothing_to_the_helpdesk_indexes(engine: Engine) -> None:
    """The helpdesk indexes are partial: only tickets with a helpdesk ticket are in them."""
    with engine.begin() as conn:
        for i in range(3):
            _ticket(conn, number=f"202612061000{i}")
        _ticket(conn, helpdesk_ticket_id="9", helpdesk_ticket_number="9")
        if engine.dialect.name == "sqlite":
            for col in ("helpdesk_ticket_id", "helpdesk_ticket_number"):
                n = conn.exec_driver_sql(
                    f"SELECT count(*) FROM ticket INDEXED BY ix_ticket_{col} "
                    f"WHERE {col} <> ''").scalar_one()
                assert n == 1
                sql = conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE name = ?", (f"ix_ticket_{col}",)
                ).scalar_one()
                assert "WHERE" in sql.upper()
        else:
            for col in ("helpdesk_ticket_id", "helpdesk_ticket_number"):
                d = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = %(n)s",
                    {"n": f"ix_ticket_{col}"}).scalar_one()
                assert "WHERE" in d.upper()


def _article(conn: Connection, ticket_id: int, direction: str, message_id: str) -> int:
    return repo.insert_article(conn, ticket_id=ticket_id, direction=direction,
                               sender_type="customer" if direction == "incoming" else "agent",
                               message_id=message_id, created=NOW)


def test_an_inbound_message_id_is_indexed_once(engine: Engine) -> None:
    """An inbound message's Message-ID is in one random-keyed index, its delivery's
    unique key (which leads with it); the article's message_id index holds only the
    articles deskgate sent, which have no delivery."""
    with engine.begin() as conn:
        tid = _ticket(conn, number="2026120610007")
        aid = _article(conn, tid, "incoming", "<in@customer.test>")
        repo.record_deliveries(conn, "<in@customer.test>", "h" * 64, ["support@example.org"],
                               aid, "stored")
        _article(conn, tid, "outgoing", "<out@example.org>")
        if engine.dialect.name == "sqlite":
            sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = "
                                       "'ix_article_message_id'").scalar_one()
            n = conn.exec_driver_sql("SELECT count(*) FROM article INDEXED BY "
                                     "ix_article_message_id WHERE direction <> 'incoming'"
                                     ).scalar_one()
            assert n == 1
            auto = conn.exec_driver_sql(
                "SELECT name FROM pragma_index_list('delivery') WHERE \"unique\" = 1"
            ).scalar_one()
            lead = conn.exec_driver_sql(
                f"SELECT name FROM pragma_index_info('{auto}') WHERE seqno = 0").scalar_one()
        else:
            sql = conn.exec_driver_sql("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                       "'ix_article_message_id'").scalar_one()
            lead = conn.exec_driver_sql(
                "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE c.relname = 'uq_delivery'").scalar_one()
        assert "incoming" in sql and "WHERE" in sql.upper()
        assert lead == "message_id"


def test_follow_ups_find_inbound_and_outbound_articles_by_message_id_through_indexes(
        engine: Engine, plans: Any) -> None:
    from gateway.inbound.followup import _article_by_message_id, _articles_by_message_ids

    with engine.begin() as conn:
        tid = _ticket(conn, number="2026120610008")
        other = _ticket(conn, number="2026120610009")
        inbound = _article(conn, tid, "incoming", "<in@customer.test>")
        repo.record_deliveries(conn, "<in@customer.test>", "h" * 64,
                               ["support@example.org", "sales@example.org"], inbound, "stored")
        outbound = _article(conn, other, "outgoing", "<out@example.org>")
        bare = _article(conn, other, "outgoing", "bare@example.org")   # stored without <>
        ignored = "<ignored@customer.test>"        # an ignored message: a delivery, no article
        repo.record_deliveries(conn, ignored, "i" * 64, ["support@example.org"], None,
                               "ignored")
    with engine.connect() as conn:
        found = _articles_by_message_ids(conn, ["<in@customer.test>", "<out@example.org>",
                                                "<bare@example.org>", ignored, "<no@x>"])
        assert {k: (r.id, r.ticket_id, r.direction) for k, r in found.items()} == {
            "<in@customer.test>": (inbound, tid, "incoming"),
            "<out@example.org>": (outbound, other, "outgoing"),
            "<bare@example.org>": (bare, other, "outgoing")}
        assert _article_by_message_id(conn, "<out@example.org>", direction="outgoing").id \
            == outbound
        assert _article_by_message_id(conn, "<in@customer.test>", direction="outgoing") is None
        assert _article_by_message_id(conn, "<in@customer.test>").id == inbound
        reply = email.message_from_string(
            "In-Reply-To: <in@customer.test>\nReferences: <no@x>\n\nhi\n")
        assert find_ticket(conn, reply, "Ticket#")[0] == tid
        reply2 = email.message_from_string("References: <in@customer.test> <out@example.org>"
                                           "\n\nhi\n")
        assert find_ticket(conn, reply2, "Ticket#")[0] == other     # the newest article
    for fn in (lambda c: _articles_by_message_ids(c, ["<in@customer.test>", "<o@x>"]),
               lambda c: _article_by_message_id(c, "<out@example.org>", direction="outgoing"),
               lambda c: find_ticket(c, reply, "Ticket#")):
        for table in ("article", "delivery"):
            for plan in plans(fn, "message_id"):
                assert not _scans(plan, table), plan


def _to(engine: Engine, rev: str, *, down: bool) -> None:
    from alembic import command

    from gateway.store.db import alembic_config

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)


def test_0016_keeps_a_stores_rows_and_its_threading(engine: Engine) -> None:
    """A store made before 0016 (deliveries, received and sent articles, tickets with
    and without a helpdesk ticket) upgrades with every row, threads as before, and
    downgrades again with every row."""
    _to(engine, "0015_poller_next_attempt", down=True)
    with engine.begin() as conn:
        tid = _ticket(conn, number="2026120610010", helpdesk_ticket_id="",
                      helpdesk_ticket_number="")
        hd = _ticket(conn, number="2026120610011", helpdesk_ticket_id="42",
                     helpdesk_ticket_number="42")
        inbound = _article(conn, tid, "incoming", "<in@customer.test>")
        repo.record_deliveries(conn, "<in@customer.test>", "h" * 64,
                               ["support@example.org", "sales@example.org"], inbound, "stored")
        outbound = _article(conn, hd, "outgoing", "<out@example.org>")
    _to(engine, "head", down=False)
    from gateway.inbound.followup import _articles_by_message_ids

    with engine.connect() as conn:
        found = _articles_by_message_ids(conn, ["<in@customer.test>", "<out@example.org>"])
        assert {k: r.id for k, r in found.items()} == {"<in@customer.test>": inbound,
                                                        "<out@example.org>": outbound}
        assert repo.ticket_by_number(conn, "42").id == hd
        assert set(repo.find_deliveries(conn, "<in@customer.test>", "h" * 64,
                                        ["support@example.org", "sales@example.org"])) \
            == {"support@example.org", "sales@example.org"}
    with engine.begin() as conn, pytest.raises(IntegrityError), conn.begin_nested():
        repo.record_deliveries(conn, "<in@customer.test>", "h" * 64,
                               ["support@example.org"], inbound, "stored")
    _to(engine, "0015_poller_next_attempt", down=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM delivery").scalar_one() == 2
        assert conn.exec_driver_sql("SELECT count(*) FROM article").scalar_one() == 2
