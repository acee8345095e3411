"""The Received header on queued mail (RFC 5321 4.4), worded as Postfix writes it: the
client, deskgate's host name, the protocol of RFC 3848, the queue id, the recipient when
there is one; below the DKIM signature, which still verifies; once per queue row."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import dkim as dkimpy
import pytest
from sqlalchemy import select

from gateway.outbound.context import OutboundContext
from gateway.outbound.dkim import DkimKey, dns_record, generate_key
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.queue import enqueue
from gateway.outbound.received import Received
from gateway.outbound.rewrite import parse_submission, resolve
from gateway.store.tables import OutboundMessage

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DATE = "Sun, 06 Dec 2026 12:00:00 +0000"
RAW = (b"From: app@internal.test\r\nTo: a@customer.test\r\nSubject: Hello\r\n\r\nbody\r\n")


def client(helo="client.example", address="192.0.2.7", *, extended=True, tls=False,
           authenticated=False) -> Received:
    return Received.submission("helpdesk.example.org", helo=helo, client=address,
                               extended=extended, tls=tls, authenticated=authenticated,
                               when=WHEN)


class TestWording:
    def test_submission_form_with_one_recipient(self):
        """From the HELO name and address, by the host name, with the protocol, id and
        the one recipient; the date last."""
        assert client(tls=True, authenticated=True).header(42, ["cust@customer.test"]) == (
            b"Received: from client.example ([192.0.2.7])\r\n"
            b"\tby helpdesk.example.org (deskgate) with ESMTPSA id 42\r\n"
            + f"\tfor <cust@customer.test>; {DATE}\r\n".encode())

    def test_no_recipient_named_for_two(self):
        """With more than one recipient none is named (as Postfix)."""
        h = client().header(7, ["a@customer.test", "b@customer.test"])
        assert h.endswith(f"with ESMTP id 7; {DATE}\r\n".encode())
        assert b"for <" not in h

    @pytest.mark.parametrize(("extended", "tls", "auth", "proto"), [
        (True, False, False, "ESMTP"), (True, True, False, "ESMTPS"),
        (True, False, True, "ESMTPA"), (True, True, True, "ESMTPSA"),
        (False, False, False, "SMTP")])
    def test_protocol_of_rfc_3848(self, extended, tls, auth, proto):
        """EHLO gives ESMTP, with S after TLS and A after AUTH; HELO gives SMTP."""
        h = client(extended=extended, tls=tls, authenticated=auth).header(1, ["a@b.test"])
        assert f" with {proto} id 1\r\n".encode() in h

    def test_the_sasl_user_is_not_named(self):
        """As Postfix's default (smtpd_sasl_authenticated_header = no): no user name."""
        h = client(authenticated=True).header(1, ["a@b.test"])
        assert b"Authenticated" not in h and b"sender" not in h.lower()

    @pytest.mark.parametrize(("address", "literal"), [
        ("2001:db8::7", b"[IPv6:2001:db8::7]"), ("::ffff:192.0.2.7", b"[192.0.2.7]")])
    def test_address_literals(self, address, literal):
        """An IPv6 client as RFC 5321's IPv6 literal; an IPv4-mapped one as IPv4."""
        assert client(address=address).header(1, []).startswith(
            b"Received: from client.example (" + literal + b")\r\n")

    def test_helo_name_cannot_break_the_header(self):
        """A HELO name with spaces, parentheses or control characters stays one token."""
        h = client(helo="evil) (by x\r\nX-Injected: 1").header(1, [])
        assert h.startswith(b"Received: from evil???by?x??X-Injected:?1 ([192.0.2.7])\r\n")
        assert h.count(b"\r\n") == 2

    def test_recipient_that_cannot_stand_in_the_header_is_left_out(self):
        """A recipient with non-ASCII or control characters is not named."""
        assert b"for <" not in client().header(1, ["jos\u00e9@customer.test"])
        assert b"for <" not in client().header(1, ["a\x1b@customer.test"])

    def test_local_forms(self):
        """`deskgate send`: Postfix pickup's form with the user id; generated mail without."""
        assert Received.local("helpdesk.example.org", uid=1000, when=WHEN).header(3, ["x@y"]) \
            == f"Received: by helpdesk.example.org (deskgate, from userid 1000)\r\n" \
               f"\tid 3; {DATE}\r\n".encode()
        assert Received.local("h.example", when=WHEN).header(3, []) == \
            f"Received: by h.example (deskgate)\r\n\tid 3; {DATE}\r\n".encode()


def queued_data(engine, oid: int) -> bytes:
    with engine.connect() as conn:
        return bytes(conn.execute(select(OutboundMessage.data)
                                  .where(OutboundMessage.id == oid)).scalar_one())


class TestQueued:
    def test_header_of_the_queue_row_below_the_signature_that_still_verifies(
            self, ob_engine, rt):
        """The queued message carries one Received with its queue id, below the
        DKIM-Signature, and the signature verifies with dkimpy."""
        key = DkimKey("example.org", "s1", generate_key())
        rt = dataclasses.replace(rt, dkim={"example.org": [key]})
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["a@customer.test"],
                              raw=RAW, trusted=True, received=client(tls=True))
        with ob_engine.begin() as conn:
            parse_submission(ctx, rt)
            oid = process_in_transaction(ctx, rt, conn)
        data = queued_data(ob_engine, oid)
        assert data.startswith(b"DKIM-Signature:")
        assert data.count(b"Received:") == 1
        assert data.index(b"DKIM-Signature:") < data.index(b"\r\nReceived: from client.example")
        assert (f"with ESMTPS id {oid}\r\n\tfor <a@customer.test>; {DATE}\r\n".encode()
                in data)
        record = dns_record(key.key).encode()
        assert dkimpy.DKIM(data).verify(
            dnsfunc=lambda name, timeout=5: record
            if name == b"s1._domainkey.example.org." else None)

    def test_a_transaction_run_again_adds_it_once(self, ob_engine, rt):
        """The group-commit writer may run a queue transaction again after a failed
        batch: the queued message still has one Received, with the new queue id."""
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["a@customer.test"],
                              raw=RAW, trusted=True, received=client())
        from gateway.outbound.pipeline import run_stages

        parse_submission(ctx, rt)
        with ob_engine.connect() as conn:
            resolve(ctx, rt, conn)
        run_stages(ctx, rt)
        conn = ob_engine.connect()
        trans = conn.begin()
        first = enqueue(ctx, rt, conn)
        trans.rollback()
        conn.close()
        ctx.ticket_id, ctx.article_id = None, None
        with ob_engine.begin() as conn:
            oid = enqueue(ctx, rt, conn)
        data = queued_data(ob_engine, oid)
        assert first and data.count(b"Received:") == 1
        assert f" id {oid}\r\n".encode() in data

    def test_no_header_without_a_trace(self, ob_engine, rt):
        """A context that brings none (as before) queues the message as it is."""
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["a@customer.test"],
                              raw=RAW, trusted=True)
        with ob_engine.begin() as conn:
            parse_submission(ctx, rt)
            oid = process_in_transaction(ctx, rt, conn)
        assert b"Received:" not in queued_data(ob_engine, oid)


class TestGeneratedMail:
    def test_a_dsn_gets_the_local_form_with_its_own_queue_id(self, ob_engine, rt):
        """A DSN deskgate queues carries 'Received: by host (deskgate) id N; date' (as
        Postfix's bounces), N its own queue id, above the returned message's trace."""
        from gateway.outbound import queue as oq
        from gateway.outbound.sender import record
        from gateway.outbound.transport import Attempt, Transport

        ctx = OutboundContext(mail_from="app@internal.test", recipients=["a@customer.test"],
                              raw=RAW, trusted=True, received=client())
        with ob_engine.begin() as conn:
            parse_submission(ctx, rt)
            process_in_transaction(ctx, rt, conn)
        with ob_engine.begin() as conn:
            (m,) = oq.claim(conn, "n", limit=1, lease=60)
            ((rid, addr),) = m.recipients
            record(conn, rt, m, Attempt(), [oq.RcptResult(rid, addr, 550, "5.1.1 no user")],
                   Transport())
        with ob_engine.connect() as conn:
            dsn_id, data = conn.execute(select(OutboundMessage.id, OutboundMessage.data)
                                        .where(OutboundMessage.kind == "dsn")).one()
        host = rt.config.gateway.hostname
        assert data.startswith(f"Received: by {host} (deskgate)\r\n\tid {dsn_id}; ".encode())
        head = data.split(b"\r\n\r\n", 1)[0]
        assert head.count(b"Received:") == 1
