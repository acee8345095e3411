"""Stage unit tests on gateway.testing's fakes: an in-memory store built from the table
metadata (no migrations), a clock that stands still, key stores without keys, a config
without conf.d — no Gateway, no files."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from gateway.config import PostmasterConfig, QueueConfig
from gateway.crypto import inbound as crypto_inbound
from gateway.inbound import bounce, followup, loop, pipeline, ticket
from gateway.inbound.filters import compile_filters
from gateway.inbound.filters import stage as filters_stage
from gateway.model import Verdict
from gateway.outbound import autoresponse
from gateway.store.tables import Article, AutoResponseRequest, Delivery, Ticket
from gateway.testing import FakeClock, FakeStore, config, context, no_keys, runtime

MAIL = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
        b"Subject: Drucker kaputt\r\nMessage-ID: <m1@customer.test>\r\n\r\nHilfe\r\n")


@pytest.fixture
def store():
    s = FakeStore()
    yield s
    s.close()


def commit(store: FakeStore, ctx, rt, *stages) -> None:
    """Run commit stages in one transaction of the fake store, as the writer does."""
    with store.transaction() as (conn, later):
        ctx.deferred = later
        for fn in stages:
            v = fn(ctx, rt, conn)
            if v is not None and v.kind != "continue":
                ctx.verdict = v
                break


class TestFakes:
    def test_store_has_the_tables_but_no_migration(self, store):
        """The fake store is the metadata's schema; Alembic never ran on it."""
        with store.engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
        assert {"ticket", "article", "delivery", "ticket_counter"} <= names
        assert "alembic_version" not in names

    def test_transaction_flushes_deferred_rows_or_drops_them(self, store):
        """Rows deferred in a transaction are written at its end, and not at all when
        it raises."""
        from gateway.store import repo

        with store.transaction() as (conn, later):
            repo.record_deliveries(conn, "<a@x>", "h", ["a@x"], None, "stored", later)
            assert store.count(Delivery) == 0
        assert store.count(Delivery) == 1
        with pytest.raises(RuntimeError), store.transaction() as (conn, later):
            repo.record_deliveries(conn, "<b@x>", "h", ["b@x"], None, "stored", later)
            raise RuntimeError("job failed")
        assert store.count(Delivery) == 1

    def test_clock_moves_only_when_told(self):
        """FakeClock keeps its time until advanced."""
        clock = FakeClock(datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
        assert clock.now() == clock.now() == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
        assert clock.advance(days=1) == datetime(2026, 1, 3, 3, 4, tzinfo=UTC)

    def test_no_keys_touches_nothing(self):
        """The key stores without keys find nothing and have no GnuPG home."""
        keys = no_keys()
        assert keys.smime.find("support@example.org", private=True) == []
        assert not keys.pgp.available()
        assert not keys.smime.dir.exists()


class TestPrepareStages:
    def test_loop_headers(self):
        """Auto-Submitted marks the message as a loop; a plain one is none."""
        rt = runtime()
        ctx = context(b"Auto-Submitted: auto-replied\r\n" + MAIL)
        loop.detect_loop(ctx, rt)
        assert ctx.loop and ctx.hits[-1].hit
        plain = context(MAIL)
        loop.detect_loop(plain, rt)
        assert not plain.loop

    def test_bounce_marks_loop_and_reported_message(self):
        """A DSN is a bounce and a loop, and names the Message-ID it reports on."""
        dsn = (b"From: MAILER-DAEMON@mx.test\r\nTo: support@example.org\r\nSubject: fail\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
               b'report-type=delivery-status; boundary="b"\r\n\r\n'
               b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
               b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
               b"Original-Envelope-Id: x\r\n\r\nFinal-Recipient: rfc822; gone@x.test\r\n"
               b"Action: failed\r\nStatus: 5.1.1\r\n\r\n"
               b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
               b"Message-ID: <out1@helpdesk.test>\r\n\r\n--b--\r\n")
        ctx = context(dsn)
        bounce.detect_bounce(ctx, runtime())
        assert ctx.is_bounce and ctx.loop
        assert ctx.bounced_message_id == "<out1@helpdesk.test>"

    def test_filter_sets_queue(self):
        """A compiled filter on the Subject sets the queue X-header value."""
        from gateway.config import FilterConfig

        cfg = config(filters=(FilterConfig(name="printers", match=(
            {"header": "Subject", "value": "drucker"},), set={"X-Deskgate-Queue": "Support"}),))
        rt = runtime(cfg, filters=compile_filters(cfg))
        ctx = context(MAIL)
        filters_stage(ctx, rt)
        assert ctx.param("Queue") == "Support"
        assert [(h.name, h.hit) for h in ctx.hits if h.kind == "filter"] == [("printers", True)]

    def test_decrypt_without_keys_keeps_the_message(self):
        """Encrypted S/MIME without a key: marked encrypted, not decrypted, a Warn logged."""
        raw = (b"From: carla@customer.test\r\nTo: support@example.org\r\nSubject: secret\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
               b"smime-type=enveloped-data; name=smime.p7m\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQA=\r\n")
        ctx = context(raw)
        crypto_inbound.decrypt_stage(ctx, runtime())
        assert ctx.crypto.encrypted and not ctx.crypto.decrypted
        assert ctx.crypto.error
        assert any(e.priority == "Warn" and e.key == "Crypto" for e in ctx.log.entries)


class TestCommitStages:
    def test_route_by_recipient_then_default(self, store):
        """The system address among the recipients (envelope, then To/Cc) picks the queue;
        else the default."""
        rt = runtime()
        ctx = context(MAIL)
        with store.transaction() as (conn, _):
            pipeline.route_stage(ctx, rt, conn)
        assert ctx.queue == "Support"
        other = context(MAIL.replace(b"To: support@example.org", b"To: someone@example.org"),
                        recipients=("unknown@example.org",))
        with store.transaction() as (conn, _):
            pipeline.route_stage(other, rt, conn)
        assert other.queue == "Raw"

    def test_store_takes_time_from_the_clock(self, store):
        """The new ticket's number, timestamps and relative pending time come from
        Runtime.clock."""
        clock = FakeClock(datetime(2026, 12, 24, 18, 0, tzinfo=UTC))
        rt = runtime(clock=clock)
        ctx = context(MAIL)
        ctx.queue = "Support"
        ctx.params["State"] = "pending reminder"
        ctx.params["State-PendingTime"] = "+2d"
        commit(store, ctx, rt, ticket.store)
        [t] = store.rows(Ticket)
        assert t.number == "202612241000001" == ctx.ticket_number
        assert t.created.replace(tzinfo=UTC) == clock.now()
        assert t.pending_until.replace(tzinfo=UTC) == clock.now() + timedelta(days=2)
        [a] = store.rows(Article)
        assert a.subject == "Drucker kaputt" and a.ticket_id == t.id

    def test_unreadable_pending_time_of_a_new_ticket_is_an_error_entry(self, store):
        """X-Deskgate-State-PendingTime that is no time (for a pending state): the ticket
        is stored without one and the communication log says why (as for the
        follow-up's)."""
        ctx = context(MAIL)
        ctx.queue = "Support"
        ctx.params["State"] = "pending reminder"
        ctx.params["State-PendingTime"] = "next tuesday"
        commit(store, ctx, runtime(), ticket.store)
        [t] = store.rows(Ticket)
        assert t.pending_until is None
        assert [(e.priority, e.value) for e in ctx.log.entries
                if e.key == "State-PendingTime"] == [("Error", "'next tuesday' is not a time")]

    def test_followup_by_subject_number_from_a_participant(self, store):
        """A subject naming an existing ticket, from its customer, continues it; from a
        stranger it does not."""
        tid, _ = store.add_ticket("202612011000007", queue="Support")
        rt = runtime()
        reply = MAIL.replace(b"Subject: Drucker kaputt", b"Subject: RE: [Ticket#202612011000007]")
        ctx = context(reply)
        commit(store, ctx, rt, followup.followup_stage)
        assert ctx.action == "followup" and ctx.ticket_id == tid
        stranger = context(reply.replace(b"carla@customer.test", b"eve@elsewhere.test"),
                           mail_from="eve@elsewhere.test")
        commit(store, stranger, rt, followup.followup_stage)
        assert stranger.action == "new"

    def test_followup_by_in_reply_to(self, store):
        """In-Reply-To naming a stored article attaches the message to its ticket."""
        tid, _ = store.add_ticket("202612011000008", message_id="<orig@helpdesk.test>")
        ctx = context(MAIL.replace(b"Message-ID:", b"In-Reply-To: <orig@helpdesk.test>\r\n"
                                                   b"Message-ID:"))
        commit(store, ctx, runtime(), followup.followup_stage)
        assert ctx.action == "followup" and ctx.ticket_id == tid

    def test_record_then_dedupe_finds_the_duplicate(self, store):
        """record writes the delivery rows (deferred to the end of the transaction); the
        same message again is a duplicate verdict naming the first one's ticket and article."""
        rt = runtime()
        first = context(MAIL)
        first.queue = "Support"
        commit(store, first, rt, ticket.store, pipeline.record)
        assert [d.outcome for d in store.rows(Delivery)] == ["stored"]
        again = context(MAIL)
        commit(store, again, rt, pipeline.dedupe, ticket.store)
        assert again.verdict == Verdict(
            "duplicate", f"ticket {first.ticket_number}, article {first.article_id}, stored")
        assert (again.ticket_id, again.ticket_number, again.article_id) == (
            first.ticket_id, first.ticket_number, first.article_id)
        assert store.count(Article) == 1

    def test_auto_response_daily_limit_follows_the_clock(self, store):
        """With a limit of one a day, the second message of the day gets no auto-response;
        a day later one is requested again."""
        cfg = config(queues=(QueueConfig(name="Raw"),
                             QueueConfig(name="Support", address="support@example.org",
                                         auto_response_new="Ticket {ticket_number}")),
                     postmaster=dataclasses.replace(PostmasterConfig(),
                                                    max_emails_per_address_per_day=1))
        clock = FakeClock()
        rt = runtime(cfg, clock=clock)

        def deliver(mid: bytes):
            ctx = context(MAIL.replace(b"<m1@customer.test>", mid))
            ctx.queue = "Support"
            commit(store, ctx, rt, ticket.store, autoresponse.auto_response_stage)
            return ctx

        deliver(b"<a@c>")
        second = deliver(b"<b@c>")
        assert store.count(AutoResponseRequest) == 1
        assert any("no auto-response" in e.value for e in second.log.entries)
        clock.advance(days=1, seconds=1)
        deliver(b"<c@c>")
        assert store.count(AutoResponseRequest) == 2
