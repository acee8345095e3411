"""Who never gets an auto-response: null envelope senders and our own addresses
(suppression rules on gateway.testing's fakes; the LMTP-level rules are in
tests/integration/outbound/test_outbound_autoresponse.py)."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import QueueConfig
from gateway.inbound import ticket
from gateway.model import MessageContext
from gateway.outbound import autoresponse
from gateway.store.tables import AutoResponseRequest
from gateway.testing import FakeStore, config, context, runtime

MAIL = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
        b"Subject: Drucker kaputt\r\nMessage-ID: <m1@customer.test>\r\n\r\nHilfe\r\n")


@pytest.fixture
def store():
    s = FakeStore()
    yield s
    s.close()


@pytest.fixture
def rt():
    return runtime(config(queues=(
        QueueConfig(name="Raw"),
        QueueConfig(name="Support", address="support@example.org",
                    auto_response_new="Ticket {ticket_number}"))))


def requested(store: FakeStore, rt, ctx: MessageContext) -> bool:
    """Store ctx as a new Support ticket and run the auto-response stage."""
    ctx.queue = "Support"
    with store.transaction() as (conn, later):
        ctx.deferred = later
        before = store.count(AutoResponseRequest)
        ticket.store(ctx, rt, conn)
        autoresponse.auto_response_stage(ctx, rt, conn)
    return store.count(AutoResponseRequest) > before


def notices(ctx: MessageContext) -> str:
    return " ".join(e.value for e in ctx.log.entries)


class TestNullSender:
    @pytest.mark.parametrize("mail_from", ["", "MAILER-DAEMON", "mailer-daemon"])
    def test_null_envelope_sender_gets_none(self, store, rt, mail_from):
        """MAIL FROM:<> (or Postfix pipe's MAILER-DAEMON for it) is automated mail that
        is not a DSN: RFC 3834 2 forbids an auto-response."""
        ctx = context(MAIL, mail_from=mail_from)
        assert not requested(store, rt, ctx)
        assert "null envelope sender" in notices(ctx)

    def test_fetched_mail_with_null_return_path_gets_none(self, store, rt):
        """A fetched message whose Return-Path is <> gets none; one without a
        Return-Path (its envelope sender unknown) still gets one."""
        nul = context(b"Return-Path: <>\r\n" + MAIL, mail_from="")
        nul.envelope = dataclasses.replace(nul.envelope, source="IMAPS")
        assert not requested(store, rt, nul)
        unknown = context(MAIL.replace(b"<m1@", b"<m2@"), mail_from="")
        unknown.envelope = dataclasses.replace(unknown.envelope, source="IMAPS")
        assert requested(store, rt, unknown)

    def test_deliver_without_f_is_an_unknown_sender_not_a_null_one(self, store, rt):
        """`deskgate deliver` run without -f (an MDA that passes no sender, as OTOBO's
        PostMaster pipe) leaves the sender unknown: an auto-response goes out unless the
        message's Return-Path is <>."""
        unknown = context(MAIL, mail_from="")
        unknown.envelope = dataclasses.replace(unknown.envelope, source="STDIN")
        assert requested(store, rt, unknown)
        nul = context(b"Return-Path: <>\r\n" + MAIL.replace(b"<m1@", b"<m3@"),
                      mail_from="")
        nul.envelope = dataclasses.replace(nul.envelope, source="STDIN")
        assert not requested(store, rt, nul)

    def test_ordinary_sender_gets_one(self, store, rt):
        """The guard leaves a normal message alone."""
        assert requested(store, rt, context(MAIL))


class TestOwnAddress:
    def test_from_our_system_address_with_reply_to_elsewhere(self, store, rt):
        """Mail From one of our system addresses never gets one, even when its
        Reply-To names someone else."""
        raw = MAIL.replace(b"From: Carla <carla@customer.test>",
                           b"From: Support <Support@Example.org>\r\n"
                           b"Reply-To: carla@customer.test")
        ctx = context(raw)
        assert not requested(store, rt, ctx)
        assert "system address" in notices(ctx)

    def test_envelope_sender_is_our_system_address(self, store, rt):
        """Mail whose envelope sender is one of our system addresses (our own relay's
        mail coming back) never gets one."""
        ctx = context(MAIL, mail_from="support@example.org")
        assert not requested(store, rt, ctx)
        assert "system address" in notices(ctx)
