"""Queue decision and header rewrite of outgoing messages."""

from __future__ import annotations

import email.utils
from email import message_from_bytes
from email.policy import compat32

import pytest

from gateway.config import SubmissionUser
from gateway.errors import PermanentError
from gateway.inbound.parse import decode_header_value
from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.rewrite import (
    from_address,
    parse_submission,
    recipients_from_headers,
    resolve,
    rewrite,
    serialize,
)
from gateway.store import repo


def ctx_for(raw: bytes, **kw) -> OutboundContext:
    kw.setdefault("trusted", True)
    kw.setdefault("mail_from", "app@internal.test")
    return OutboundContext(recipients=["c@customer.test"], raw=raw, **kw)


def run(ctx, rt, conn):
    parse_submission(ctx, rt)
    resolve(ctx, rt, conn)
    rewrite(ctx, rt)
    return ctx


BASE = b"From: app@internal.test\r\nTo: c@customer.test\r\nSubject: Hello\r\n\r\nbody\r\n"


class TestQueueDecision:
    def test_x_header_from_trusted_client(self, ob_engine, rt):
        """X-Deskgate-Queue from an authenticated/allowed client picks the queue."""
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(b"X-Deskgate-Queue: Sales\r\n" + BASE), rt, conn)
        assert ctx.queue == "Sales" and ctx.from_email == "sales@example.org"

    def test_x_header_ignored_from_untrusted_source(self, ob_engine, rt):
        """An untrusted source's X-Deskgate-Queue is ignored (and stripped)."""
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(b"X-Deskgate-Queue: Sales\r\n" + BASE, trusted=False), rt, conn)
        assert ctx.queue == "Raw"
        assert "X-Deskgate-Queue" not in ctx.msg

    def test_reply_to_ticket_by_subject_and_in_reply_to(self, ob_engine, rt):
        """A reply carrying the ticket number or an article's Message-ID joins that ticket."""
        with ob_engine.begin() as conn:
            number = repo.next_ticket_number(conn, "10")
            tid = repo.insert_ticket(conn, number=number, title="t", queue="Support",
                                     state="open", state_type="open", priority="3 normal")
            aid = repo.insert_article(conn, ticket_id=tid, direction="incoming",
                                      sender_type="customer", message_id="<orig@customer.test>")
            # received, as every inbound article: its delivery finds it by Message-ID
            repo.record_deliveries(conn, "<orig@customer.test>", "0" * 64,
                                   ["support@example.org"], aid, "stored")
            a = run(ctx_for(BASE.replace(b"Subject: Hello",
                                         f"Subject: Re: [Ticket#{number}] Hello".encode())),
                    rt, conn)
            b = run(ctx_for(b"In-Reply-To: <orig@customer.test>\r\n" + BASE), rt, conn)
        for ctx in (a, b):
            assert (ctx.ticket_id, ctx.queue, ctx.new_ticket) == (tid, "Support", False)
        assert str(a.msg["Subject"]).count(number) == 1

    def test_system_address_in_from(self, ob_engine, rt):
        """A From that is a system address picks that address's queue."""
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(BASE.replace(b"From: app@internal.test",
                                           b"From: support@example.org")), rt, conn)
        assert ctx.queue == "Support"

    def test_user_default_queue_then_postmaster_default(self, ob_engine, rt):
        """The submitting user's default_queue comes before the postmaster default."""
        user = SubmissionUser("app", "x", default_queue="Sales")
        with ob_engine.begin() as conn:
            a = run(ctx_for(BASE, user=user), rt, conn)
            b = run(ctx_for(BASE), rt, conn)
        assert a.queue == "Sales" and b.queue == "Raw"
        assert a.new_ticket and a.ticket_number

    def test_requested_queue_must_exist(self, ob_engine, rt):
        """`deskgate send --queue` with an unknown queue is a permanent error."""
        with ob_engine.begin() as conn, pytest.raises(PermanentError):
            run(ctx_for(BASE, requested_queue="Nope"), rt, conn)


class TestRewrite:
    def test_from_quoting_and_envelope_sender(self, ob_engine, rt, make_confdir):
        """From becomes the quoted display name with the queue address; envelope the same."""
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(b"X-Deskgate-Queue: Support\r\n" + BASE), rt, conn)
        assert ctx.msg["From"] == "Example Support <support@example.org>"
        assert ctx.sender == "support@example.org"

    def test_display_name_with_specials_is_quoted(self, tmp_path, make_confdir):
        """A queue's display name with RFC 5322 specials is quoted in the From that
        rewrite writes; a non-ASCII one is RFC 2047-encoded (the header stays ASCII)."""
        from gateway.config import load_config
        from gateway.runtime import build_runtime
        from gateway.store.db import make_engine, migrate

        cfg = load_config(make_confdir({"50-names.toml": """
[[queue]]
name = "Special"
address = "special@example.org"
[[queue]]
name = "Umlaut"
address = "umlaut@example.org"
[[address]]
email = "special@example.org"
display_name = "Support, Inc."
queue = "Special"
[[address]]
email = "umlaut@example.org"
display_name = "Süpport (Zürich)"
queue = "Umlaut"
"""}))
        engine = make_engine(f"sqlite:///{tmp_path / 'names.db'}")
        migrate(engine)
        rt = build_runtime(cfg)
        try:
            with engine.begin() as conn:
                repo.sync_config(conn, cfg)
                special = run(ctx_for(b"X-Deskgate-Queue: Special\r\n" + BASE), rt, conn)
                umlaut = run(ctx_for(b"X-Deskgate-Queue: Umlaut\r\n" + BASE), rt, conn)
        finally:
            engine.dispose()
        assert special.msg["From"] == '"Support, Inc." <special@example.org>'
        assert email.utils.parseaddr(special.msg["From"]) == ("Support, Inc.",
                                                                "special@example.org")
        assert umlaut.msg["From"].isascii() and "=?utf-8?" in umlaut.msg["From"]
        # one encoded word: the parentheses inside it are not a comment
        assert umlaut.msg["From"] == "=?utf-8?b?U8O8cHBvcnQgKFrDvHJpY2gp?= <umlaut@example.org>"
        assert decode_header_value(umlaut.msg["From"]) == "Süpport (Zürich) <umlaut@example.org>"

    def test_internal_headers_and_bcc_stripped_ids_added(self, ob_engine, rt):
        """X-Deskgate-/X-OTOBO-/X-OTRS- headers and Bcc go; Message-ID and Date are added."""
        raw = (b"X-OTOBO-Queue: Sales\r\nX-OTRS-State: open\r\nBcc: secret@internal.test\r\n"
               + BASE)
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(raw), rt, conn)
        names = [k.lower() for k in ctx.msg]
        assert not [n for n in names if n.startswith(("x-otobo", "x-otrs", "x-deskgate"))]
        assert "bcc" not in names
        assert ctx.msg["Message-ID"].endswith("@example.org>") and ctx.msg["Date"]
        assert names.index("from") == 0   # the rewritten From keeps its position

    def test_8bit_subject_keeps_its_bytes_behind_the_ticket_number(self, ob_engine, rt):
        """A raw UTF-8 Subject gets the [Ticket#N] tag and keeps its own bytes (it came
        out as U+FFFD replacement characters)."""
        raw = BASE.replace(b"Subject: Hello", "Subject: Grüße".encode())
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(raw), rt, conn)
        data = serialize(ctx.msg)
        assert f"Subject: [Ticket#{ctx.ticket_number}] Grüße\r\n".encode() in data

    def test_null_sender_gets_no_return_path(self, ob_engine, rt):
        """A message submitted with the null sender has nobody to send DSNs to (it got
        its From address); any other sender is the return path."""
        with ob_engine.begin() as conn:
            null = run(ctx_for(BASE, mail_from=""), rt, conn)
            app = run(ctx_for(BASE), rt, conn)
        assert null.return_path == "" and app.return_path == "app@internal.test"

    def test_existing_message_id_kept(self, ob_engine, rt):
        """A Message-ID given by the client is kept."""
        with ob_engine.begin() as conn:
            ctx = run(ctx_for(b"Message-ID: <mine@app.test>\r\n" + BASE), rt, conn)
        assert ctx.message_id == "<mine@app.test>"

    def test_recipients_from_headers(self):
        """`deskgate send` without -r takes To, Cc and Bcc, each once."""
        msg = message_from_bytes(b"To: A <a@x.test>, b@x.test\r\nCc: a@x.test\r\n"
                                 b"Bcc: c@x.test\r\n\r\n", policy=compat32)
        assert recipients_from_headers(msg) == ["a@x.test", "b@x.test", "c@x.test"]

    def test_stored_as_outgoing_agent_article_on_new_ticket(self, ob_engine, rt):
        """The whole pipeline stores an outgoing agent article on a new ticket."""
        from sqlalchemy import select

        from gateway.store.tables import Article, OutboundRecipient, Ticket

        with ob_engine.begin() as conn:
            ctx = ctx_for(BASE)
            parse_submission(ctx, rt)
            oid = process_in_transaction(ctx, rt, conn)
            art = conn.execute(select(Article)).one()
            t = conn.execute(select(Ticket)).one()
            rc = conn.execute(select(OutboundRecipient)).one()
        assert (art.direction, art.sender_type, art.transmission_status) == \
            ("outgoing", "agent", "queued")
        assert t.number == ctx.ticket_number and t.customer_user == "c@customer.test"
        assert rc.outbound_id == oid and rc.status == "pending"


class TestTicketNumbers:
    def test_blocks_from_two_allocators_never_collide(self, ob_engine):
        """Two processes' number blocks and the inbound +1 counter never hand out a number twice."""
        from gateway.outbound.rewrite import TicketNumbers, reserve_numbers

        def reserve(day, count):
            with ob_engine.begin() as conn:
                return reserve_numbers(conn, day, count)

        a = TicketNumbers(reserve, lambda: "10", block=3)
        b = TicketNumbers(reserve, lambda: "10", block=3)
        got = []
        for _ in range(5):
            got += [a.take(), b.take()]
            with ob_engine.begin() as conn:
                got.append(repo.next_ticket_number(conn, "10"))
        assert len(set(got)) == len(got) == 15
        assert all(n[8:10] == "10" and len(n) == 15 for n in got)


class TestEncodedDisplayNames:
    """Addresses of a submitted message are read from its headers as they came: an
    RFC 2047 display name is a name, never an address."""

    def test_recipients_from_headers_ignore_an_address_in_an_encoded_name(self):
        """`deskgate send` without -r sends to the address of To, not to the address
        an encoded display name decodes to, nor to a name with a comma split in two."""
        msg = message_from_bytes(
            b"From: app@internal.test\r\n"
            b"To: =?utf-8?q?victim=40x.test?= <a@b.test>\r\n"
            b"Cc: =?utf-8?q?Doe=2C_John?= <jd@x.test>\r\n\r\nbody\r\n", policy=compat32)
        assert recipients_from_headers(msg) == ["a@b.test", "jd@x.test"]

    def test_from_address_ignores_an_address_in_an_encoded_name(self):
        """The From address is the mailbox's, not a system address spelled in its
        encoded display name (which would pick that address's queue, identity and
        DKIM key)."""
        msg = message_from_bytes(
            b"From: =?utf-8?q?support=40example.org?= <app@internal.test>\r\n"
            b"To: c@customer.test\r\n\r\nbody\r\n", policy=compat32)
        assert from_address(msg) == "app@internal.test"

    def test_headers_with_raw_utf8_are_read_too(self):
        """compat32 hands a header with raw 8-bit bytes over as an email.header.Header,
        not a str: From and To are read from it all the same."""
        msg = message_from_bytes(
            "From: Jörg <j@x.test>\r\nTo: Zoë <z@y.test>\r\n\r\nbody\r\n".encode(),
            policy=compat32)
        assert from_address(msg) == "j@x.test"
        assert recipients_from_headers(msg) == ["z@y.test"]
