"""The store on both backends (SQLite file and PostgreSQL): migrations, ticket
numbers under concurrency (threads and processes), config mirroring."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

from gateway.config import load_config
from gateway.store import repo
from gateway.store.db import alembic_config, current_revision, make_engine, migrate
from gateway.store.tables import Base, Queue, SystemAddress, Ticket
from tests.integration.core.stored import db_conf

REPO_ROOT = Path(__file__).resolve().parents[3]


def _indexes(engine, table: str) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes(table)}


def _migrate(engine, db_url: str, rev: str, *, down: bool) -> None:
    """Alembic's upgrade or downgrade to `rev` on the engine's database."""
    from alembic import command

    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)


class TestMigrations:
    def test_fresh_database_migrated_to_head(self, engine, db_url):
        """migrate() brings an empty database to the single head; running it again is a no-op."""
        head = ScriptDirectory.from_config(alembic_config(db_url)).get_heads()
        assert len(head) == 1
        assert current_revision(engine) == head[0]
        migrate(engine)
        assert current_revision(engine) == head[0]
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())

    def test_migrations_match_the_models(self, engine):
        """The schema the migrations build is the one the models describe (no autogenerate
        differences: tables, columns, indexes, constraints)."""
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, Base.metadata)
        assert diffs == []

    def test_0008_drops_the_unused_random_key_indexes(self, engine, db_url):
        """raw_message.sha256 and article.from_email lose their indexes (no query uses
        them; each cost a random leaf page per stored message), rows stay, and the
        downgrade puts the indexes back."""
        def indexes(table: str) -> set[str]:
            return _indexes(engine, table)

        def to(rev: str, down: bool) -> None:
            _migrate(engine, db_url, rev, down=down)

        assert "ix_raw_message_sha256" not in indexes("raw_message")
        assert "ix_article_from_email" not in indexes("article")
        assert "ix_article_message_id" in indexes("article")    # the follow-up lookup's
        to("0007_auto_response_request", True)
        assert "ix_raw_message_sha256" in indexes("raw_message")
        assert "ix_article_from_email" in indexes("article")
        with engine.begin() as conn:
            raw_id = repo.insert_raw(conn, b"Subject: kept\r\n\r\nbody\r\n")
        to("head", False)
        assert "ix_raw_message_sha256" not in indexes("raw_message")
        assert "ix_article_from_email" not in indexes("article")
        with engine.connect() as conn:
            from gateway.store.tables import RawMessage
            data = conn.execute(select(RawMessage.data).where(RawMessage.id == raw_id)).scalar()
        assert data == b"Subject: kept\r\n\r\nbody\r\n"

    def test_0009_indexes_delivery_article_id(self, engine, db_url):
        """delivery.article_id gets an index (the hand-off reads an article's recipients
        by it); the downgrade takes it away again and keeps the rows."""
        assert "ix_delivery_article_id" in _indexes(engine, "delivery")
        _migrate(engine, db_url, "0008_drop_unused_indexes", down=True)
        assert "ix_delivery_article_id" not in _indexes(engine, "delivery")
        with engine.begin() as conn:
            repo.record_deliveries(conn, "<kept@x>", "f" * 64, ["a@x"], 7, "stored")
        _migrate(engine, db_url, "head", down=False)
        assert "ix_delivery_article_id" in _indexes(engine, "delivery")
        with engine.connect() as conn:
            from gateway.store.tables import Delivery
            rows = conn.execute(select(Delivery.article_id, Delivery.recipient)).all()
        assert [tuple(r) for r in rows] == [(7, "a@x")]

    def test_0014_starts_the_cycle_of_existing_handoffs_at_their_creation(
            self, engine, db_url):
        """handoff.cycle_started of a row queued before 0014 is its creation time (its
        time in the outbox is measured as before); the downgrade drops the column."""
        from datetime import UTC, datetime

        from sqlalchemy import column, insert, table

        _migrate(engine, db_url, "0013_auto_response_build_retry", down=True)
        assert "cycle_started" not in {c["name"] for c in inspect(engine).get_columns(
            "handoff")}
        created = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)
        old = table("handoff", *(column(n) for n in (
            "ticket_id", "article_id", "kind", "key", "helpdesk", "status", "attempts",
            "earlier_attempts", "next_attempt", "claimed_by", "last_error", "decisions",
            "created", "updated")))
        with engine.begin() as conn:
            tid = repo.insert_ticket(conn, number=None, title="t", queue="Raw", state="new",
                                     state_type="new", priority="3 normal", dynamic_fields={})
            conn.execute(insert(old).values(
                ticket_id=tid, article_id=1, kind="create", key="dg-old", helpdesk="webhook",
                status="pending", attempts=2, earlier_attempts=0, next_attempt=created,
                claimed_by="", last_error="", decisions="{}", created=created,
                updated=created))
        _migrate(engine, db_url, "head", down=False)
        with engine.connect() as conn:
            from gateway.store.tables import Handoff
            started = conn.execute(select(Handoff.cycle_started)).scalar_one()
        assert started.replace(tzinfo=started.tzinfo or UTC) == created


MIGRATE_CHILD = """
import sys
from gateway.store.db import make_engine, migrate
migrate(make_engine(sys.argv[1]))
"""


@pytest.mark.postgres
def test_nodes_migrating_at_once_all_start(pg_url):
    """Nodes that start together on an empty PostgreSQL database all migrate it without
    an error: one builds the schema, the others wait for it and find it at head."""
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_CHILD, pg_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT) for _ in range(3)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    engine = make_engine(pg_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(pg_url)).get_heads()
        assert current_revision(engine) == head[0]
    finally:
        engine.dispose()


def _statements(engine, fn):
    """(the statements `fn(conn)` sends with their parameters, what it returns)."""
    from sqlalchemy import event

    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            result = fn(conn)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent, result


def _whole_scans(engine, sent) -> list[str]:
    """The steps of the backend's own plans of `sent` that read a table or an index
    whole: SQLite's SCAN (of the table or of an index), PostgreSQL's Seq Scan and
    index scans without an index condition. On PostgreSQL sequential scans are
    discouraged, so a tiny table still shows whether an index can be used."""
    def walk(node):
        yield node
        for child in node.get("Plans", ()):
            yield from walk(child)

    whole: list[str] = []
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        if engine.dialect.name == "sqlite":
            for sql, params in sent:
                cur.execute("EXPLAIN QUERY PLAN " + sql, params)
                whole += [f"{sql[:60]}: {r[-1]}" for r in cur.fetchall()
                          if r[-1].startswith("SCAN ")]
        else:
            cur.execute("SET LOCAL enable_seqscan = off")
            for sql, params in sent:
                cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                plan = cur.fetchone()[0][0]["Plan"]
                whole += [f"{sql[:60]}: {n['Node Type']} on "
                          f"{n.get('Index Name') or n.get('Relation Name')}"
                          for n in walk(plan)
                          if n["Node Type"] == "Seq Scan"
                          or (n["Node Type"] in ("Index Scan", "Index Only Scan",
                                                 "Bitmap Index Scan")
                              and "Index Cond" not in n)]
    return whole


class TestHandoffLoadPlans:
    def test_load_reads_no_table_whole(self, engine):
        """Every statement the hand-off worker runs to load a claimed article finds its
        rows through an index: none reads the delivery table (one row per accepted
        message and recipient) or another table whole. Checked with each backend's
        own plan of the statements `outbox.load` really sends; on PostgreSQL with
        sequential scans discouraged, so a tiny table still shows whether an index
        can be used."""
        from datetime import UTC, datetime

        from gateway.helpdesk import outbox

        with engine.begin() as conn:
            tid = repo.insert_ticket(conn, number="202612050000001", title="t", queue="Raw",
                                     state="new", state_type="new", priority="3 normal")
            aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                      sender_type="customer", subject="s", body="b")
            repo.record_deliveries(conn, "<m@x>", "a" * 64, ["one@x", "two@x"], aid, "stored")
            for n in range(30):      # other articles' deliveries, which must not be read
                repo.record_deliveries(conn, f"<o{n}@x>", f"{n:064d}", ["z@x"], aid + 1 + n,
                                       "stored")
            hid = outbox.enqueue(conn, ticket_id=tid, article_id=aid, kind="create",
                                 helpdesk="webhook", decisions={})
        claimed = [outbox.Claimed(hid, tid, aid, "create", "k", 0, {}, datetime.now(UTC))]
        sent, loaded = _statements(engine, lambda conn: outbox.load(conn, claimed))
        assert sorted(loaded[hid].recipients) == ["one@x", "two@x"]
        assert any("delivery" in sql for sql, _ in sent)
        assert _whole_scans(engine, sent) == []


class TestHandoffDashboardPlans:
    def test_stats_and_waiting_rows_read_no_delivered_row(self, engine):
        """/metrics (every scrape) and the /handoff page count the pending and failed
        rows and list those waiting through ix_handoff_due, without reading the
        delivered rows (after a year nearly the whole outbox), by each backend's plan."""
        from sqlalchemy import update

        from gateway.helpdesk import outbox
        from gateway.store.tables import Handoff

        with engine.begin() as conn:
            tid = repo.insert_ticket(conn, number="202612050000001", title="t", queue="Raw",
                                     state="new", state_type="new", priority="3 normal")
            ids = [outbox.enqueue(conn, ticket_id=tid, article_id=n, kind="followup",
                                  helpdesk="webhook", decisions={}) for n in range(40)]
            conn.execute(update(Handoff).where(Handoff.id.in_(ids[:37]))
                         .values(status="delivered"))
            conn.execute(update(Handoff).where(Handoff.id == ids[37]).values(status="failed"))
        sent, (st, rows) = _statements(engine, lambda conn: (
            outbox.stats(conn), outbox.list_handoffs(conn, limit=500)))
        assert (st.pending, st.failed) == (2, 1)
        assert [r["id"] for r in rows] == [ids[39], ids[38], ids[37]]
        assert _whole_scans(engine, sent) == []


class TestCommlogPurgePlans:
    def test_purge_candidates_read_only_old_communications(self, engine):
        """The daily purge finds Successful communications past successful_after and any
        past all_after through ix_communication_start, oldest first, without reading
        the whole log, by each backend's plan."""
        from datetime import UTC, datetime, timedelta

        from sqlalchemy import insert

        from gateway.commlog_views import purge_candidates
        from gateway.store.tables import Communication

        now = datetime.now(UTC)
        with engine.begin() as conn:
            def comm(days: float, status: str) -> int:
                return int(conn.execute(insert(Communication).values(
                    direction="Incoming", status=status, account_type="LMTP",
                    start=now - timedelta(days=days)).returning(Communication.id)).scalar_one())

            ancient = comm(40, "Failed")
            old_ok, _kept_failed = comm(10, "Successful"), comm(10, "Failed")
            for _ in range(20):
                comm(1, "Successful")
        sent, ids = _statements(engine, lambda conn: purge_candidates(
            conn, successful_after=7 * 86400, all_after=31 * 86400, now=now))
        assert ids == [ancient, old_ok]
        assert _whole_scans(engine, sent) == []


def _numbers_in_thread(engine, n: int) -> list[str]:
    out = []
    for _ in range(n):
        with engine.begin() as conn:
            out.append(repo.next_ticket_number(conn, "10"))
    return out


CHILD = """
import json, sys
from gateway.store import repo
from gateway.store.db import make_engine
engine = make_engine(sys.argv[1])
out = []
for _ in range(int(sys.argv[2])):
    with engine.begin() as conn:
        number = repo.next_ticket_number(conn, "10")
        repo.insert_ticket(conn, number=number, title="t", queue="Raw", state="new",
                           state_type="new", priority="3 normal")
        out.append(number)
print(json.dumps(out))
"""


class TestTicketNumbers:
    def test_unique_across_threads(self, engine):
        """Eight threads drawing ticket numbers at once get 200 distinct, gap-free numbers."""
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _numbers_in_thread(engine, 25), range(8)))
        numbers = [n for r in results for n in r]
        assert len(set(numbers)) == 200
        counters = sorted(int(n[len("YYYYMMDD10"):]) for n in numbers)
        assert counters == list(range(1, 201))

    def test_unique_across_processes(self, engine, db_url):
        """Four processes creating tickets at the same time never share a number."""
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, db_url, "20"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO_ROOT) for _ in range(4)]
        numbers: list[str] = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            numbers += json.loads(out.strip().splitlines()[-1])
        assert len(numbers) == len(set(numbers)) == 80
        with engine.connect() as conn:
            stored = list(conn.execute(select(Ticket.number)).scalars())
        assert sorted(stored) == sorted(numbers)


class TestConfigMirror:
    def test_removed_address_and_queue_kept_invalid(self, make_confdir, db_url):
        """An address (and a queue) dropped from conf.d stays in the database as invalid;
        putting it back makes it valid again."""
        extra = {"40-extra.toml": """
            [[queue]]
            name = "Billing"
            address = "billing@example.org"

            [[address]]
            email = "billing@example.org"
            queue = "Billing"
            comment = "invoices"
            """}
        conf = make_confdir({**db_conf(db_url), **extra})
        engine = make_engine(db_url)
        try:
            migrate(engine)
            with engine.begin() as conn:
                repo.sync_config(conn, load_config(conf))
            (conf / "40-extra.toml").unlink()
            with engine.begin() as conn:
                repo.sync_config(conn, load_config(conf))
            with engine.connect() as conn:
                addr = conn.execute(select(SystemAddress).where(
                    SystemAddress.email == "billing@example.org")).one()
                queue = conn.execute(select(Queue).where(Queue.name == "Billing")).one()
                statuses = {r.email: r.valid for r in conn.execute(
                    select(SystemAddress.email, SystemAddress.valid))}
            assert (addr.valid, addr.in_config, addr.comment) == ("invalid", False, "invoices")
            assert queue.valid is False
            assert statuses["support@example.org"] == "valid"
            assert statuses["paused@example.org"] == "invalid-temporarily"
            (conf / "40-extra.toml").write_text(textwrap.dedent(extra["40-extra.toml"]))
            with engine.begin() as conn:
                repo.sync_config(conn, load_config(conf))
            with engine.connect() as conn:
                addr = conn.execute(select(SystemAddress).where(
                    SystemAddress.email == "billing@example.org")).one()
                queue = conn.execute(select(Queue).where(Queue.name == "Billing")).one()
            assert (addr.valid, addr.in_config, queue.valid) == ("valid", True, True)
        finally:
            engine.dispose()

    @pytest.mark.postgres
    def test_two_nodes_mirroring_the_same_new_config_at_once(self, make_confdir, pg_url):
        """Two nodes start (or `deliver`) with the same new queues and addresses at the
        same moment: the second waits for the first and finds the rows there, instead of
        failing on their unique names."""
        import threading

        cfg = load_config(make_confdir(db_conf(pg_url)))
        engine = make_engine(pg_url)
        try:
            migrate(engine)
            errors: list[BaseException] = []
            started = threading.Event()

            def second() -> None:
                started.set()
                try:
                    with engine.begin() as conn:
                        repo.sync_config(conn, cfg)
                except BaseException as exc:   # reported below
                    errors.append(exc)

            with engine.begin() as conn:
                repo.sync_config(conn, cfg)
                t = threading.Thread(target=second)
                t.start()
                started.wait(5)
                time.sleep(0.5)          # the second one is in its transaction now
            t.join(30)
            assert errors == []
            with engine.connect() as conn:
                names = sorted(conn.execute(select(Queue.name)).scalars())
            assert names == sorted(q.name for q in cfg.queue)
        finally:
            engine.dispose()
