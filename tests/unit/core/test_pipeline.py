"""The inbound pipeline through Gateway: routing, ticket numbers, dedupe, quarantine,
temporary failures."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from sqlalchemy import func, select

from gateway import errors
from gateway.app import Gateway
from gateway.inbound import pipeline
from gateway.model import Envelope
from gateway.store import repo
from gateway.store.tables import Article, Attachment, Delivery, Quarantine, RawMessage, Ticket


def msg(subject="s", mid="<1@c.test>", to="support@example.org", extra="", body="hello"):
    return (f"From: Alice <alice@customer.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\n{extra}\r\n{body}\r\n").encode()


@pytest.fixture
def gw(config):
    g = Gateway(config)
    g.prepare_store()
    yield g
    g.close()


def deliver(gw, raw, rcpts=("support@example.org",), **kw):
    env = Envelope(mail_from="alice@customer.test", recipients=tuple(rcpts), raw=raw, **kw)
    return asyncio.run(gw.pipeline.deliver(env))


def count(gw, table):
    with gw.engine.connect() as c:
        return c.execute(select(func.count()).select_from(table)).scalar()


class TestRouting:
    def test_queue_of_first_system_address(self, gw):
        """The queue is that of the first accepted recipient that is a system address."""
        out = deliver(gw, msg(), rcpts=("nobody@else.test", "sales@example.org"))
        assert out.action == "new"
        with gw.engine.connect() as c:
            assert c.execute(select(Ticket.queue)).scalar() == "Sales"

    def test_to_header_when_envelope_has_none(self, gw):
        """Without an envelope system address the To/Cc headers decide."""
        deliver(gw, msg(to="Support <support@example.org>"), rcpts=("",))
        with gw.engine.connect() as c:
            assert c.execute(select(Ticket.queue)).scalar() == "Support"

    def test_default_queue(self, gw):
        """Nothing matching → postmaster.default_queue."""
        deliver(gw, msg(to="x@y.test"), rcpts=("",))
        with gw.engine.connect() as c:
            assert c.execute(select(Ticket.queue)).scalar() == "Raw"

    def test_trusted_queue_header(self, gw):
        """A trusted source's X-OTOBO-Queue header routes; an untrusted one is stripped."""
        deliver(gw, msg(mid="<t@c>", extra="X-OTOBO-Queue: Sales\r\n"), trusted=True)
        deliver(gw, msg(mid="<u@c>", extra="X-OTOBO-Queue: Sales\r\n"), trusted=False)
        with gw.engine.connect() as c:
            assert [r.queue for r in c.execute(select(Ticket.queue).order_by(Ticket.id))] \
                == ["Sales", "Support"]

    def test_unknown_queue_header_falls_back(self, gw):
        """A queue that does not exist falls back to the default and is logged."""
        deliver(gw, msg(to="x@y.test", extra="X-Deskgate-Queue: Nope\r\n"), rcpts=("",),
                trusted=True)
        with gw.engine.connect() as c:
            assert c.execute(select(Ticket.queue)).scalar() == "Raw"


class TestTickets:
    def test_numbers_are_date_systemid_counter(self, gw):
        """Ticket numbers are YYYYMMDD + system_id + a counter, increasing."""
        a = deliver(gw, msg(mid="<a@c>")).ticket_number
        b = deliver(gw, msg(mid="<b@c>")).ticket_number
        assert re.fullmatch(r"\d{8}10\d{5}", a)
        assert int(b) == int(a) + 1

    def test_numbers_unique_across_threads(self, gw):
        """Concurrent ticket creation never repeats a number."""
        numbers: list[str] = []

        def worker(k):
            with gw.engine.begin() as c:
                for _ in range(20):
                    numbers.append(repo.next_ticket_number(c, "10"))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(numbers) == len(set(numbers)) == 80

    def test_article_attachments_raw_and_fields(self, gw):
        """Ticket, article, attachment and raw bytes are stored together."""
        raw = (b"From: a@c.test\r\nTo: support@example.org\r\nSubject: files\r\n"
               b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               b"Content-Type: text/plain\r\n\r\nsee file\r\n--B\r\n"
               b"Content-Type: text/csv; name=data.csv\r\n\r\na,b\r\n--B--\r\n")
        deliver(gw, raw)
        with gw.engine.connect() as c:
            art = c.execute(select(Article)).one()
            assert art.body.strip() == "see file" and art.direction == "incoming"
            att = c.execute(select(Attachment)).one()
            assert (att.filename, att.size) == ("data.csv", 3)
            assert c.execute(select(RawMessage.data)).scalar() == raw
            t = c.execute(select(Ticket)).one()
            assert (t.state, t.priority, t.customer_user) == ("new", "3 normal", "a@c.test")


class TestNeverLoseNeverDuplicate:
    def test_redelivery_is_idempotent(self, gw):
        """The same message to the same recipient twice → 250 twice, one article."""
        first = deliver(gw, msg())
        second = deliver(gw, msg())
        assert first.replies[0].ok
        # the duplicate's 250 names the ticket and article the first copy became
        assert second.replies[0] == pipeline.stored_as(errors.DUPLICATE,
                                                       first.ticket_number, first.article_id)
        assert count(gw, Article) == 1

    def test_redelivery_inside_one_batch(self, gw):
        """Duplicates arriving in the same group commit still make one article."""
        async def both():
            env = Envelope("a@c.test", ("support@example.org",), msg(mid="<same@c>"))
            return await asyncio.gather(*(gw.pipeline.deliver(env) for _ in range(5)))
        outs = asyncio.run(both())
        assert all(o.replies[0].ok for o in outs)
        assert count(gw, Article) == 1
        assert sorted(o.action for o in outs).count("new") == 1

    def test_same_message_id_different_content_is_new(self, gw):
        """Dedupe needs the same bytes too, not only the same Message-ID."""
        deliver(gw, msg(body="one"))
        deliver(gw, msg(body="two"))
        assert count(gw, Article) == 2

    def test_crash_in_a_stage_goes_to_quarantine(self, gw, monkeypatch):
        """A stage that raises → raw message in quarantine, answered 250 after commit."""
        def boom(ctx, rt):
            raise RuntimeError("stage exploded")
        gw.pipeline.stages = gw.pipeline.stages.with_stage("prepare", "trust", boom)
        out = deliver(gw, msg())
        assert out.replies[0] == errors.QUARANTINED
        with gw.engine.connect() as c:
            q = c.execute(select(Quarantine)).one()
            assert q.raw == msg() and "stage exploded" in q.reason
        assert count(gw, Ticket) == 0
        # a redelivery of the quarantined message is not quarantined twice
        deliver(gw, msg())
        assert count(gw, Quarantine) == 1

    def test_crash_in_commit_stage_goes_to_quarantine(self, gw, monkeypatch):
        """A commit stage that raises (not a DB error) also quarantines."""
        def boom(ctx, rt, conn):
            raise ValueError("bad routing")
        gw.pipeline.stages = gw.pipeline.stages.with_stage("commit", "route", boom)
        out = deliver(gw, msg())
        assert out.action == "quarantine" and out.replies[0].ok
        assert count(gw, Quarantine) == 1 and count(gw, Article) == 0

    def test_database_down_is_temporary(self, config, tmp_path):
        """An unreachable database answers 451 4.3.0 and stores nothing."""
        from gateway.store.db import make_engine
        g = Gateway(config, engine=make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none"))
        try:
            out = deliver(g, msg())
        finally:
            g.close()
        assert out.replies == (errors.TEMPFAIL,)

    def test_ignore_header_drops_and_records(self, gw):
        """X-Deskgate-Ignore from a trusted source drops the mail (250, logged, no ticket)."""
        out = deliver(gw, msg(extra="X-Deskgate-Ignore: yes\r\n"), trusted=True)
        assert out.action == "ignore" and out.replies[0].ok
        assert count(gw, Ticket) == 0 and count(gw, Delivery) == 1


class TestBigMessages:
    def test_big_message_reaches_the_writer_hashed(self, config):
        """A message prepared on the worker pool (big) comes to the commit stages with its
        content hash taken, and its raw row and delivery rows carry that hash."""
        from gateway.inbound.pipeline import INLINE_PREPARE_MAX
        from gateway.inbound.stages import build_stages

        seen: list[bool] = []

        def probe(ctx, rt, conn):
            seen.append("sha256" in vars(ctx.envelope))

        gw = Gateway(config, stages=build_stages().with_stage("commit", "probe", probe,
                                                              before="dedupe"))
        gw.prepare_store()
        try:
            raw = msg(mid="<big@c.test>", body="x" * (INLINE_PREPARE_MAX + 10))
            out = deliver(gw, raw)
            assert out.replies[0].ok and seen == [True]
            import hashlib

            digest = hashlib.sha256(raw).hexdigest()
            with gw.engine.connect() as c:
                assert c.execute(select(RawMessage.sha256)).scalar_one() == digest
                assert c.execute(select(Delivery.content_hash)).scalar_one() == digest
        finally:
            gw.close()
