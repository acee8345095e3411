"""Who never gets an auto-response: null envelope senders and our own addresses
(suppression rules on gateway.testing's fakes; the LMTP-level rules are in
tests/integration/outbound/test_outbound_autoresponse.py)."""

from __future__ import annotations

import dataclasses
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

import pytest

from gateway.config import PostmasterConfig, QueueConfig, load_config
from gateway.errors import ConfigErrors
from gateway.inbound import ticket
from gateway.inbound.loop import detect_loop
from gateway.model import MessageContext
from gateway.outbound import autoresponse
from gateway.store.tables import AutoResponseRequest, Ticket
from gateway.testing import FakeClock, FakeStore, config, context, runtime

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


def request_headers(store: FakeStore) -> Message:
    """The headers of the auto-response requested last."""
    data = store.rows(AutoResponseRequest)[-1].data
    return message_from_bytes(bytes(data), policy=compat32)


class TestAutoSubmitted:
    @pytest.mark.parametrize("value", ["yes", "autoreplied", "notified; owner-email=a@b.test",
                                       "(vacation) auto-replied"])
    def test_any_value_but_no_gets_none(self, store, rt, value):
        """RFC 3834 2: no auto-response to a message whose Auto-Submitted is anything
        but `no`, not only the `auto-*` values."""
        ctx = context(b"Auto-Submitted: " + value.encode() + b"\r\n" + MAIL)
        detect_loop(ctx, rt)
        assert not requested(store, rt, ctx)
        assert "looping mail" in notices(ctx)

    @pytest.mark.parametrize("value", ["no", "No", "no (written by a person)",
                                       "no; owner-email=a@b.test", ""])
    def test_no_is_a_person(self, store, rt, value):
        """`no` (any case, with a comment or parameters) is mail a person wrote."""
        ctx = context(b"Auto-Submitted: " + value.encode() + b"\r\n" + MAIL)
        detect_loop(ctx, rt)
        assert requested(store, rt, ctx)


class TestReplyHeaders:
    @pytest.mark.parametrize(("subject", "expected"), [
        ("Drucker kaputt", "Re: Drucker kaputt"),
        ("Re: Drucker kaputt", "Re: Drucker kaputt"),
        ("Re: Re: Drucker kaputt", "Re: Drucker kaputt"),
        ("RE: re:Drucker kaputt", "Re: Drucker kaputt"),
        ("Re[2]: RE [3]:  Drucker kaputt", "Re: Drucker kaputt"),
        ("AW: Drucker kaputt", "Re: AW: Drucker kaputt"),
        ("Recht: Drucker kaputt", "Re: Recht: Drucker kaputt"),
    ])
    def test_subject_gets_one_re(self, store, rt, subject, expected):
        """One `Re: ` in front, however many the customer's Subject had (OTOBO's
        TicketSubjectClean removes RE: and RE[n]: before it adds its own)."""
        raw = MAIL.replace(b"Subject: Drucker kaputt", b"Subject: " + subject.encode())
        assert requested(store, rt, context(raw))
        assert request_headers(store)["Subject"] == expected

    def test_references_from_in_reply_to_when_there_are_none(self, store, rt):
        """RFC 5322 3.6.4: a parent without References but with one In-Reply-To id
        gives References of that id and the parent's Message-ID."""
        raw = MAIL.replace(b"Message-ID:", b"In-Reply-To: <m0@example.org>\r\nMessage-ID:")
        assert requested(store, rt, context(raw))
        h = request_headers(store)
        assert h["In-Reply-To"] == "<m1@customer.test>"
        assert h["References"] == "<m0@example.org> <m1@customer.test>"
        assert h["Auto-Submitted"] == "auto-replied"


class TestTemplate:
    @pytest.mark.parametrize("template", ["Ticket {ticket_number", "Ticket {0}",
                                          "Ticket {ticket_number!z}", "Ticket }"])
    def test_a_template_that_cannot_be_rendered_leaves_the_message_stored(
            self, store, template):
        """A template that cannot be filled in sends no auto-response; the customer's
        message is stored all the same and its log says why."""
        rt = runtime(config(queues=(
            QueueConfig(name="Raw"),
            QueueConfig(name="Support", address="support@example.org",
                        auto_response_new=template))))
        ctx = context(MAIL)
        assert not requested(store, rt, ctx)
        assert store.count(Ticket) == 1
        assert "auto_response_new" in notices(ctx)
        assert [e.priority for e in ctx.log.entries if "auto_response_new" in e.value] \
            == ["Error"]

    def test_check_refuses_a_template_that_cannot_be_filled_in(self, make_confdir):
        """`deskgate check` (and a load or reload) names the queue's key and the fault
        of a template that cannot be filled in; a good one with braces passes."""
        conf = make_confdir({"50-x.toml": "[[queue]]\nname = 'Refunds'\n"
                                          "auto_response_new = 'Ticket {ticket_number'\n"
                                          "auto_response_followup = '{{ok}} {unknown}'\n"})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errs = {e.key: str(e) for e in exc.value.errors}
        assert list(errs) == ["queue[4].auto_response_new"], errs
        assert errs["queue[4].auto_response_new"].endswith(
            "50-x.toml: queue[4].auto_response_new: cannot be filled in: "
            "expected '}' before end of string")


class TestFollowUpSubject:
    @pytest.mark.parametrize("subject", [
        "Re: [Ticket#2026113010000001] Re: Drucker kaputt",
        "RE: Re: [Ticket#2026113010000001] Drucker kaputt",
        "Re: [Ticket#2026113010000001]  RE[2]: Drucker kaputt",
    ])
    def test_reply_to_our_reply_gets_one_re(self, store, subject):
        """A customer answering our auto-response ("[Ticket#N] Re: ...", their
        program puts another Re: in front) gets "[Ticket#N] Re: ..." back, not
        "Re: [Ticket#N] Re: ...": the ticket's tag goes before one Re:, as OTOBO's
        TicketSubjectClean and TicketSubjectBuild make it."""
        rt = runtime(config(queues=(
            QueueConfig(name="Raw"),
            QueueConfig(name="Support", address="support@example.org",
                        auto_response_followup="Added to {ticket_number}"))))
        tid, _ = store.add_ticket("2026113010000001", queue="Support")
        raw = MAIL.replace(b"Subject: Drucker kaputt", b"Subject: " + subject.encode())
        ctx = context(raw)
        ctx.action, ctx.ticket_id = "followup", tid
        assert requested(store, rt, ctx)
        assert request_headers(store)["Subject"] == "[Ticket#2026113010000001] Re: Drucker kaputt"


class TestDailyLimit:
    def test_count_is_shared_by_nodes_and_restarts_and_lasts_a_day(self, store):
        """max_emails_per_address_per_day counts in the database: a second node (or the
        same one after a restart: a new Runtime on the same store) sees the first one's
        auto-responses, Reply-To and From spelt in any case are one address, and a day
        later the address gets one again."""
        def node(clock: FakeClock):
            return runtime(config(
                queues=(QueueConfig(name="Raw"),
                        QueueConfig(name="Support", address="support@example.org",
                                    auto_response_new="Ticket {ticket_number}")),
                postmaster=PostmasterConfig(max_emails_per_address_per_day=2)), clock=clock)

        clock = FakeClock()
        one, two = node(clock), node(clock)

        def mail(n: int, sender: bytes = b"Carla <carla@customer.test>") -> MessageContext:
            raw = MAIL.replace(b"<m1@", b"<m%d@" % n).replace(
                b"Carla <carla@customer.test>", sender)
            return context(raw)

        assert requested(store, one, mail(1))
        assert requested(store, two, mail(2, b"Carla <Carla@Customer.TEST>"))
        third = mail(3, b"x@customer.test\r\nReply-To: CARLA@customer.test")
        assert not requested(store, one, third)
        assert "2 auto-responses today" in notices(third)
        clock.advance(hours=24, seconds=1)
        assert requested(store, node(clock), mail(4))


class TestOtherQueue:
    def test_reply_to_another_queues_address_gets_none(self, store):
        """A customer's message whose Reply-To is another queue's system address (a
        colleague forwarding, a misconfigured form) gets no auto-response: deskgate
        would answer itself."""
        rt = runtime(config(queues=(
            QueueConfig(name="Raw"),
            QueueConfig(name="Support", address="support@example.org",
                        auto_response_new="Ticket {ticket_number}"),
            QueueConfig(name="Sales", address="sales@example.org",
                        auto_response_new="Ticket {ticket_number}"))))
        raw = MAIL.replace(b"Message-ID:", b"Reply-To: Sales <SALES@example.org>\r\nMessage-ID:")
        ctx = context(raw)
        assert not requested(store, rt, ctx)
        assert "sales@example.org is a system address" in notices(ctx)
