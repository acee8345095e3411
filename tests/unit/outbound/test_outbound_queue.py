"""The durable queue: claims with leases, per-recipient outcomes, retry schedule, DSNs."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import default as default_policy

from sqlalchemy import event, select

from gateway.inbound.bounce import parse_dsn
from gateway.outbound import queue as oq
from gateway.outbound.context import OutboundContext, OutboundCopy
from gateway.outbound.dsn import build_dsn
from gateway.outbound.headers import needs_smtputf8
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.rewrite import parse_submission
from gateway.outbound.sender import record
from gateway.outbound.stages import OutboundStage, build_outbound_stages
from gateway.outbound.submission import AuthGuard
from gateway.outbound.transport import Attempt, Transport
from gateway.store.tables import Article, OutboundMessage, OutboundRecipient

RAW = (b"From: app@internal.test\r\nTo: a@customer.test, b@customer.test\r\n"
       b"Subject: Hello\r\n\r\nbody\r\n")


def enqueue(engine, rt, rcpts=("a@customer.test", "b@customer.test"), stages=None) -> int:
    ctx = OutboundContext(mail_from="app@internal.test", recipients=list(rcpts), raw=RAW,
                          trusted=True)
    with engine.begin() as conn:
        parse_submission(ctx, rt)
        return process_in_transaction(ctx, rt, conn, stages)


class TestClaims:
    def test_claimed_message_is_not_claimed_again_until_lease_expires(self, ob_engine, rt):
        """A second node gets nothing while the lease runs, and the message after it expires."""
        oid = enqueue(ob_engine, rt)
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            a = oq.claim(conn, "node-a", limit=10, lease=60, now=now)
            b = oq.claim(conn, "node-b", limit=10, lease=60, now=now + timedelta(seconds=30))
            c = oq.claim(conn, "node-b", limit=10, lease=60, now=now + timedelta(seconds=61))
        assert [m.id for m in a] == [oid] and b == [] and [m.id for m in c] == [oid]
        assert [addr for _, addr in a[0].recipients] == ["a@customer.test", "b@customer.test"]

    def test_next_due_waits_for_the_lease(self, ob_engine, rt):
        """A claimed message is next due when its lease runs out, not at its (past) next
        attempt: the sender polled every 50 ms while a message was being delivered."""
        enqueue(ob_engine, rt)
        later = enqueue(ob_engine, rt)
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            conn.execute(OutboundMessage.__table__.update().where(
                OutboundMessage.id == later).values(next_attempt=now + timedelta(minutes=10)))
            (m,) = oq.claim(conn, "n", limit=1, lease=120, now=now)
            leased = oq.next_due(conn)
            conn.execute(OutboundMessage.__table__.update().where(
                OutboundMessage.id == later).values(next_attempt=now + timedelta(minutes=1)))
            sooner = oq.next_due(conn)
        assert m.id != later
        assert leased is not None and leased - now == timedelta(minutes=2)
        assert sooner is not None and sooner - now == timedelta(minutes=1)

    def test_not_due_messages_are_not_claimed(self, ob_engine, rt):
        """A message whose next attempt lies in the future stays put."""
        enqueue(ob_engine, rt)
        with ob_engine.begin() as conn:
            got = oq.claim(conn, "n", limit=10, lease=60,
                           now=datetime.now(UTC) - timedelta(minutes=5))
        assert got == []


class TestOutcomes:
    def test_mixed_outcomes_per_recipient(self, ob_engine, rt):
        """One recipient delivered, one deferred: only the deferred one is retried."""
        enqueue(ob_engine, rt)
        with ob_engine.begin() as conn:
            (m,) = oq.claim(conn, "n", limit=1, lease=60)
            (r1, a1), (r2, a2) = m.recipients
            st = oq.record_attempt(conn, m, [oq.RcptResult(r1, a1, 250, "ok"),
                                             oq.RcptResult(r2, a2, 451, "try later")],
                                   schedule=(60.0, 300.0), warn_after=0)
            row = conn.execute(select(OutboundMessage)).one()
            (m2,) = oq.claim(conn, "n", limit=1, lease=60, now=datetime.now(UTC)
                             + timedelta(seconds=70))
        assert st.status == "queued" and [r.address for r in st.delayed] == ["b@customer.test"]
        assert row.attempts == 1 and row.lease_until is None
        assert 54 <= (row.next_attempt.replace(tzinfo=UTC) - datetime.now(UTC)
                      ).total_seconds() <= 67
        assert [a for _, a in m2.recipients] == ["b@customer.test"]

    def test_permanent_failure_marks_article(self, ob_engine, rt):
        """A 5xx fails the recipient at once and puts a transmission error on the article."""
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        with ob_engine.begin() as conn:
            (m,) = oq.claim(conn, "n", limit=1, lease=60)
            ((rid, addr),) = m.recipients
            st = oq.record_attempt(conn, m, [oq.RcptResult(rid, addr, 550, "5.1.1 no user")],
                                   schedule=(60.0,), warn_after=0)
            art = conn.execute(select(Article)).one()
        assert st.status == "failed" and not st.exhausted
        assert art.transmission_status == "failed" and "550 5.1.1 no user" in \
            art.transmission_error

    def test_exhausted_schedule_is_permanent(self, ob_engine, rt):
        """After the last retry a temporary failure becomes permanent."""
        enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        schedule = (1.0,)
        with ob_engine.begin() as conn:
            for attempt in range(2):
                (m,) = oq.claim(conn, "n", limit=1, lease=60,
                                now=datetime.now(UTC) + timedelta(seconds=5 * attempt))
                ((rid, addr),) = m.recipients
                st = oq.record_attempt(conn, m, [oq.RcptResult(rid, addr, 451, "later")],
                                       schedule=schedule, warn_after=0)
            rc = conn.execute(select(OutboundRecipient)).one()
        assert st.status == "failed" and st.exhausted and rc.status == "failed"

    def test_retry_delay_jitter_and_exhaustion(self):
        """Delays follow the schedule within ±10 %; past its end there is none."""
        rng = random.Random(1)
        sched = (60.0, 300.0)
        for _ in range(50):
            assert 54 <= oq.retry_delay(sched, 1, rng) <= 66
            assert 270 <= oq.retry_delay(sched, 2, rng) <= 330
        assert oq.retry_delay(sched, 3, rng) is None

    def test_admin_retry_and_delete(self, ob_engine, rt):
        """retry makes a deferred message due now; delete removes it and notes the article."""
        oid = enqueue(ob_engine, rt)
        with ob_engine.begin() as conn:
            conn.execute(OutboundMessage.__table__.update().values(
                next_attempt=datetime.now(UTC) + timedelta(hours=1)))
            assert oq.claim(conn, "n", limit=1, lease=1) == []
            assert oq.retry_now(conn, oid) == 1
            listed = oq.list_queue(conn)
            assert oq.remove(conn, oid)
            art = conn.execute(select(Article)).one()
            left = oq.list_queue(conn)
        assert set(listed[0]) == {"id", "queue", "sender", "recipients", "attempts",
                                  "next_attempt", "last_error"}
        assert left == [] and art.transmission_status == "failed"


def split(ctx, rt):
    """In the crypto row: one copy per recipient, the way the crypto stage splits a
    message when only some recipients have a key."""
    ctx.copies = [OutboundCopy([r], ctx.msg if i == 0 else copy.deepcopy(ctx.msg))
                  for i, r in enumerate(ctx.recipients)]


SPLIT = tuple(OutboundStage(s.name, split) if s.name == "crypto" else s
              for s in build_outbound_stages())


def article_status(conn) -> str:
    return conn.execute(select(Article.transmission_status)).scalar_one()


def settle(conn, m, code, reply="ok"):
    ((rid, addr),) = m.recipients
    return oq.record_attempt(conn, m, [oq.RcptResult(rid, addr, code, reply)],
                             schedule=(60.0,), warn_after=0)


class TestCopies:
    def test_one_article_one_row_per_copy(self, ob_engine, rt):
        """A split message is one article and one queue row per copy, each with its own
        recipients; the first row's id is returned."""
        oid = enqueue(ob_engine, rt, stages=SPLIT)
        with ob_engine.connect() as conn:
            rows = conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()
            rcpts = conn.execute(select(OutboundRecipient.outbound_id,
                                        OutboundRecipient.address)).all()
            arts = conn.execute(select(Article.id)).scalars().all()
        assert oid == rows[0].id and len(rows) == 2 and len(arts) == 1
        assert {r.article_id for r in rows} == set(arts)
        assert sorted(rcpts) == [(rows[0].id, "a@customer.test"), (rows[1].id, "b@customer.test")]

    def test_article_sent_only_when_every_copy_is(self, ob_engine, rt):
        """One copy sent and one pending leaves the article queued; the second makes it sent."""
        enqueue(ob_engine, rt, stages=SPLIT)
        with ob_engine.begin() as conn:
            m1, m2 = oq.claim(conn, "n", limit=2, lease=60)
            assert settle(conn, m1, 250).status == "sent"
            after_first = article_status(conn)
            assert settle(conn, m2, 250).status == "sent"
            after_second = article_status(conn)
        assert (after_first, after_second) == ("queued", "sent")

    def test_failed_copy_keeps_the_article_failed(self, ob_engine, rt):
        """A copy that failed is not hidden by another copy delivered later."""
        enqueue(ob_engine, rt, stages=SPLIT)
        with ob_engine.begin() as conn:
            m1, m2 = oq.claim(conn, "n", limit=2, lease=60)
            settle(conn, m1, 550, "5.1.1 no user")
            settle(conn, m2, 250)
            art = conn.execute(select(Article)).one()
        assert art.transmission_status == "failed"
        assert "a@customer.test" in art.transmission_error

    def test_deleted_copy_keeps_the_article_failed(self, ob_engine, rt):
        """Deleting an unsent copy marks the article failed; the other copy's delivery
        does not turn it into sent."""
        enqueue(ob_engine, rt, stages=SPLIT)
        with ob_engine.begin() as conn:
            m1, m2 = oq.claim(conn, "n", limit=2, lease=60)
            assert oq.remove(conn, m2.id)
            settle(conn, m1, 250)
            art = conn.execute(select(Article)).one()
        assert art.transmission_status == "failed"
        assert art.transmission_error == "deleted from the outbound queue"

    def test_deleting_a_sent_copy_changes_nothing(self, ob_engine, rt):
        """A copy already delivered can be deleted without marking the article failed."""
        enqueue(ob_engine, rt, stages=SPLIT)
        with ob_engine.begin() as conn:
            m1, _ = oq.claim(conn, "n", limit=2, lease=60)
            settle(conn, m1, 250)
            assert oq.remove(conn, m1.id)
            status = article_status(conn)
        assert status == "queued"


class TestDsn:
    def test_dsn_is_rfc3464_and_readable_by_the_bounce_parser(self):
        """The DSN is multipart/report with per-recipient fields the inbound side can read."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org\r\nMessage-ID: <m1@example.org>",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "a@customer.test", 550,
                                                "5.1.1 no such user")],
                         arrival=datetime.now(UTC))
        msg = message_from_bytes(data)
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        assert msg["Auto-Submitted"] == "auto-replied"
        info = parse_dsn(msg)
        assert info is not None
        assert (info.action, info.status, info.original_message_id) == \
            ("failed", "5.1.1", "<m1@example.org>")
        assert "a@customer.test" in info.recipient

    def test_control_characters_do_not_reach_dsn_headers(self):
        """A remote reply with FF and CR LF in it is written with the FF escaped and its two
        lines as one (550-... 550 ..., as Postfix does), a Message-ID's VT becomes a space:
        the DSN is still built and parsed, with no injected header."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org",
                         original_message_id="<m1@example.org>\x0bBcc: x@evil.test",
                         results=[oq.RcptResult(1, "a@customer.test", 550,
                                                "5.1.1 no\x0csuch\r\nX-Evil: 1")],
                         arrival=datetime.now(UTC))
        msg = message_from_bytes(data)
        assert msg["Bcc"] is None and msg["In-Reply-To"] == "<m1@example.org> Bcc: x@evil.test"
        info = parse_dsn(msg)
        assert info is not None and info.status == "5.1.1"
        assert b"X-Evil: 1\r\n" not in data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        assert b"Diagnostic-Code: smtp; 550-5.1.1 no\\x0csuch 550 X-Evil: 1" in data

    def test_header_lines_stay_within_998_octets(self):
        """An original Message-ID as long as the queue keeps (998 octets) and a long
        remote reply: no header line of the DSN is over 998 octets (RFC 5322 2.1.1);
        the Message-ID that cannot fit a line is left out of In-Reply-To/References."""
        mid = "<" + "m" * 984 + "@example.org>"
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org",
                         original_message_id=mid,
                         results=[oq.RcptResult(1, "a@customer.test", 550,
                                                "5.1.1 " + "x" * 900)],
                         arrival=datetime.now(UTC))
        assert max(len(ln) for ln in data.split(b"\r\n")) <= 998
        msg = message_from_bytes(data)
        assert msg["In-Reply-To"] is None and msg["References"] is None
        assert parse_dsn(msg) is not None

    def test_utf8_message_id_is_written_raw_not_as_encoded_words(self):
        """A UTF-8 original Message-ID (RFC 6532) is written raw in In-Reply-To and
        References, where an RFC 2047 encoded word is no msg-id; the DSN, now an RFC 6532
        message, is one the transport sends with SMTPUTF8."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers="From: s@example.org\r\nMessage-ID: "
                                          "<grüße-1@example.org>".encode(),
                         original_message_id="<grüße-1@example.org>",
                         results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no")],
                         arrival=datetime.now(UTC))
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert "In-Reply-To: <grüße-1@example.org>".encode() in head
        assert "References: <grüße-1@example.org>".encode() in head
        assert b"=?" not in b"\r\n".join(head)
        assert needs_smtputf8(data)

    def test_8bit_original_headers_are_returned_as_sent(self):
        """A message with raw UTF-8 (and invalid 8-bit) in its headers gets a DSN whose
        text/rfc822-headers part holds those header bytes unchanged, marked 8bit."""
        headers = ("From: s@example.org\r\nSubject: Grüße\r\nMessage-ID: <m1@example.org>"
                   ).encode() + b"\r\nX-Raw: \xff"
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=headers, original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no user")],
                         arrival=datetime.now(UTC))
        msg = message_from_bytes(data)
        (part,) = [p for p in msg.walk() if p.get_content_type() == "text/rfc822-headers"]
        assert part["Content-Transfer-Encoding"] == "8bit"
        assert part.get_payload(decode=True) == headers + b"\r\n"
        info = parse_dsn(msg)
        assert info is not None and info.original_message_id == "<m1@example.org>"

    def test_non_ascii_recipient_is_rfc6533(self):
        """A non-ASCII recipient is written raw as `Final-Recipient: utf-8; <address>` in a
        message/global-delivery-status part (8bit), never in RFC 2047 form; an ASCII one
        in the same DSN keeps `rfc822;`. Python's parser and the bounce parser read both."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org\r\nMessage-ID: <m1@example.org>",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "j\u00f6rg@b\u00fccher.test", 550,
                                                "5.1.1 no such user"),
                                  oq.RcptResult(2, "a@customer.test", 550, "5.1.1 no user")],
                         arrival=datetime.now(UTC))
        assert b"=?" not in data
        assert "Final-Recipient: utf-8; j\u00f6rg@b\u00fccher.test\r\n".encode() in data
        assert b"Final-Recipient: rfc822; a@customer.test\r\n" in data
        msg = BytesParser(policy=default_policy).parsebytes(data)
        assert msg.get_param("report-type") == "delivery-status"
        (part,) = [p for p in msg.walk()
                   if p.get_content_type() == "message/global-delivery-status"]
        assert part["Content-Transfer-Encoding"] == "8bit"
        assert not [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
        # Python parses a message/* part as one embedded message: the per-message fields
        # are its header, the per-recipient blocks its body.
        (per_msg,) = part.get_payload()
        assert per_msg["Reporting-MTA"] == "dns; helpdesk.test"
        body = per_msg.get_payload(decode=True).decode("utf-8")
        blocks = [HeaderParser(policy=default_policy).parsestr(b)
                  for b in body.split("\r\n\r\n") if b.strip()]
        assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
            ("utf-8; j\u00f6rg@b\u00fccher.test", "failed", "5.1.1"),
            ("rfc822; a@customer.test", "failed", "5.1.1")]
        info = parse_dsn(message_from_bytes(data))
        assert info is not None
        assert (info.recipient, info.status, info.original_message_id) == \
            ("j\u00f6rg@b\u00fccher.test", "5.1.1", "<m1@example.org>")

    def test_ascii_dsn_keeps_delivery_status(self):
        """With ASCII addresses only, the status part stays message/delivery-status with
        `rfc822;` recipients (RFC 3464)."""
        data = build_dsn(action="delayed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "a@customer.test", 451, "4.3.0 later")],
                         arrival=datetime.now(UTC))
        msg = message_from_bytes(data)
        (part,) = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
        blocks = part.get_payload()
        assert isinstance(blocks[1], Message)
        assert blocks[1]["Final-Recipient"] == "rfc822; a@customer.test"
        assert "global" not in data.decode()

    def test_utf8_original_headers_are_returned_as_global_headers(self):
        """Original headers in UTF-8 (RFC 6532) come back unchanged in a
        message/global-headers part (RFC 6533), marked 8bit; the bounce parser still finds
        the Message-ID there."""
        headers = ("From: J\u00f6rg <j\u00f6rg@example.org>\r\nSubject: Gr\u00fc\u00dfe\r\n"
                   "Message-ID: <m1@example.org>").encode()
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=headers, original_message_id="",
                         results=[oq.RcptResult(1, "a@customer.test", 550, "5.1.1 no user")],
                         arrival=datetime.now(UTC))
        msg = BytesParser(policy=default_policy).parsebytes(data)
        (part,) = [p for p in msg.walk() if p.get_content_type() == "message/global-headers"]
        assert part["Content-Transfer-Encoding"] == "8bit"
        assert not [p for p in msg.walk() if p.get_content_type() == "text/rfc822-headers"]
        assert headers + b"\r\n" in data
        (returned,) = part.get_payload()
        assert returned["Subject"] == "Gr\u00fc\u00dfe"
        info = parse_dsn(message_from_bytes(data))
        assert info is not None and info.original_message_id == "<m1@example.org>"

    def test_addresses_with_line_breaks_are_shown_escaped_in_the_readable_part(self):
        """Recipients holding CR LF, VT, NEL or U+2028 (each a line break to some reader)
        are shown in the human-readable part with those characters written as escapes:
        the DSN parses without defects and no line of that part starts with what followed
        a break. Before, '<a@customer.test>: 250 ok' and 'X-Injected: 1>: 553 ...' were
        two lines of it. (A line longer than 78 characters is wrapped, its continuation
        indented, as Postfix wraps it.)"""
        bad = ["a@customer.test>: 250 ok\r\nX-Injected: 1", "b@customer.test\x0bInjected",
               "c@customer.test\x85Injected", "d@customer.test\u2028Injected"]
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(i, a, 553, "5.1.3 address contains a line "
                                                "break") for i, a in enumerate(bad)],
                         arrival=datetime.now(UTC))
        msg = BytesParser(policy=default_policy).parsebytes(data)
        assert all(not p.defects for p in msg.walk())
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        lines = text.get_content().splitlines()
        assert not [ln for ln in lines if ln.startswith(("X-Injected", "Injected"))], lines
        lines = "\n".join(lines).replace("\n    ", " ").splitlines()     # unwrapped
        assert [ln for ln in lines if ln.startswith("<")] == [
            "<a@customer.test>: 250 ok\\r\\nX-Injected: 1>: 553 5.1.3 address contains a "
            "line break",
            "<b@customer.test\\x0bInjected>: 553 5.1.3 address contains a line break",
            "<c@customer.test\\x85Injected>: 553 5.1.3 address contains a line break",
            "<d@customer.test\\u2028Injected>: 553 5.1.3 address contains a line break"]
        info = parse_dsn(message_from_bytes(data))
        assert info is not None and info.status == "5.1.3"

    def test_a_utf8_address_is_shown_as_written(self):
        """A UTF-8 address (SMTPUTF8) is no bad address: the readable part shows it as it
        is, not escaped."""
        data = build_dsn(action="failed", reporting_mta="helpdesk.test", to="app@internal.test",
                         original_headers=b"From: s@example.org",
                         original_message_id="<m1@example.org>",
                         results=[oq.RcptResult(1, "j\u00f6rg@b\u00fccher.test", 550,
                                                "5.1.1 no such user")],
                         arrival=datetime.now(UTC))
        msg = BytesParser(policy=default_policy).parsebytes(data)
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        assert "<j\u00f6rg@b\u00fccher.test>: 550 5.1.1 no such user" in \
            text.get_content().splitlines()

    def test_rejected_8bit_message_is_recorded_and_bounced(self, ob_engine, rt):
        """A 550 for a message with raw UTF-8 in its headers is recorded (failed, not left
        leased to be sent again) and its DSN is queued with those headers in it."""
        raw = RAW.replace(b"To: a@customer.test,", "To: Jörg <a@customer.test>,".encode())
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["a@customer.test"],
                              raw=raw, trusted=True)
        with ob_engine.begin() as conn:
            parse_submission(ctx, rt)
            process_in_transaction(ctx, rt, conn)
        with ob_engine.begin() as conn:
            (m,) = oq.claim(conn, "n", limit=1, lease=60)
            ((rid, addr),) = m.recipients
            st = record(conn, rt, m, Attempt(),
                        [oq.RcptResult(rid, addr, 550, "5.1.1 no user")], Transport())
        with ob_engine.connect() as conn:
            rows = conn.execute(select(OutboundMessage.kind, OutboundMessage.status,
                                       OutboundMessage.data).order_by(OutboundMessage.id)).all()
            (dsn_to,) = conn.execute(select(OutboundRecipient.address).where(
                OutboundRecipient.outbound_id != m.id)).scalars().all()
        assert st.status == "failed" and [r[:2] for r in rows] == [("message", "failed"),
                                                                    ("dsn", "queued")]
        assert dsn_to == "app@internal.test"
        assert "To: Jörg <a@customer.test>,".encode() in rows[1].data


class TestAuthGuard:
    def test_lockout_after_max_failures_doubles(self):
        """After max failures a client is locked out; each further failure doubles it."""
        now = [0.0]
        g = AuthGuard(3, 10.0, clock=lambda: now[0])
        assert g.failed("1.2.3.4") == (1, 0.0) and not g.locked("1.2.3.4")
        g.failed("1.2.3.4")
        assert g.failed("1.2.3.4") == (3, 10.0) and g.locked("1.2.3.4")
        assert not g.locked("5.6.7.8")
        now[0] = 11.0
        assert not g.locked("1.2.3.4")
        assert g.failed("1.2.3.4") == (4, 20.0)
        g.succeeded("1.2.3.4")
        assert not g.locked("1.2.3.4")

    def test_failures_are_forgotten_an_hour_after_the_last(self):
        """A failure now and then never adds up to a lock-out; failures in a row do, and
        the count goes on doubling the lock while the failures keep coming."""
        now = [0.0]
        g = AuthGuard(3, 10.0, clock=lambda: now[0])
        for day in range(5):               # one mistyped password a day
            now[0] = day * 86400.0
            assert g.failed("1.2.3.4") == (1, 0.0)
        assert not g.locked("1.2.3.4")
        now[0] = 10 * 86400.0
        g.failed("1.2.3.4")
        g.failed("1.2.3.4")
        assert g.failed("1.2.3.4")[0] == 3 and g.locked("1.2.3.4")
        now[0] += 10.0 + 3000.0            # within the hour after the lock-out ended
        assert g.failed("1.2.3.4") == (4, 20.0)
        now[0] += 20.0 + 3601.0            # more than an hour after it
        assert not g.locked("1.2.3.4") and g.begin("1.2.3.4")
        g.end("1.2.3.4")
        assert g.failed("1.2.3.4") == (1, 0.0)


def outcome_of(conn, oid):
    m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
    rc = conn.execute(select(OutboundRecipient.status, OutboundRecipient.attempts,
                             OutboundRecipient.last_code)
                      .where(OutboundRecipient.outbound_id == oid)).all()
    return m, rc


class TestLateOutcomes:
    def test_late_failure_after_another_node_delivered_leaves_the_row_sent(self, ob_engine,
                                                                          rt):
        """An attempt whose lease ran out and that fails after another node delivered the
        message does not make it queued again (sent twice): superseded, row untouched."""
        oid = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            (slow,) = oq.claim(conn, "node-a", limit=1, lease=1, now=now)
            (fast,) = oq.claim(conn, "node-b", limit=1, lease=60,
                               now=now + timedelta(seconds=2))
            assert settle(conn, fast, 250).status == "sent"
            st = settle(conn, slow, 451, "4.3.0 later")
            m, rc = outcome_of(conn, oid)
            art = article_status(conn)
        assert st.status == "superseded"
        assert (m.status, m.attempts, m.last_error) == ("sent", 1, "")
        assert rc == [("sent", 1, 250)] and art == "sent"

    def test_late_outcome_leaves_the_lease_of_the_node_delivering_now(self, ob_engine, rt):
        """A late outcome does not free the row another node holds (a third node could
        take it and send it again while the second one is still at it)."""
        oid = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            (slow,) = oq.claim(conn, "node-a", limit=1, lease=1, now=now)
            oq.claim(conn, "node-b", limit=1, lease=60, now=now + timedelta(seconds=2))
            st = settle(conn, slow, 451, "4.3.0 later")
            m, rc = outcome_of(conn, oid)
            third = oq.claim(conn, "node-c", limit=1, lease=60,
                             now=now + timedelta(seconds=3))
        assert st.status == "superseded"
        assert (m.status, m.claimed_by, m.attempts) == ("queued", "node-b", 0)
        assert m.lease_until is not None and rc == [("pending", 0, 0)] and third == []

    def test_superseded_attempt_is_logged_and_bounces_nothing(self, ob_engine, rt):
        """A late 550 after another node delivered queues no DSN and is logged as
        Superseded with the smarthost's answer."""
        from gateway.store.tables import CommEntry

        oid = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            (slow,) = oq.claim(conn, "node-a", limit=1, lease=1, now=now)
            (fast,) = oq.claim(conn, "node-b", limit=1, lease=60,
                               now=now + timedelta(seconds=2))
            settle(conn, fast, 250)
            ((rid, addr),) = slow.recipients
            st = record(conn, rt, slow, Attempt(),
                        [oq.RcptResult(rid, addr, 550, "5.1.1 no user")], Transport())
            kinds = conn.execute(select(OutboundMessage.kind)).scalars().all()
            entries = conn.execute(select(CommEntry.priority, CommEntry.key, CommEntry.value)
                                   .where(CommEntry.key == "Superseded")).all()
            m, _ = outcome_of(conn, oid)
        assert st.status == "superseded" and kinds == ["message"] and m.status == "sent"
        assert len(entries) == 1 and entries[0].priority == "Warn"
        assert "550 5.1.1 no user" in entries[0].value


class TestDeletedWhileDelivering:
    def test_a_late_outcome_of_a_deleted_row_does_not_land_on_its_successor(self, ob_engine,
                                                                           rt):
        """SQLite gives a deleted last row's id to the next message: the late outcome of
        the deleted one (even with the same node holding the new one) records nothing."""
        old = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        with ob_engine.begin() as conn:
            (slow,) = oq.claim(conn, "node-a", limit=1, lease=60)
            assert oq.remove(conn, old)
        new = enqueue(ob_engine, rt, rcpts=("b@customer.test",))
        with ob_engine.begin() as conn:
            (fresh,) = oq.claim(conn, "node-a", limit=1, lease=60)
            st = settle(conn, slow, 550, "5.1.1 no user")
            m, rc = outcome_of(conn, new)
        assert new == old and fresh.id == new        # the id was given again
        assert st.status == "deleted"
        assert (m.status, m.attempts, m.claimed_by) == ("queued", 0, "node-a")
        assert rc == [("pending", 0, 0)]


class TestLostClaims:
    def test_a_claim_whose_lease_ran_out_comes_back_as_lost(self, ob_engine, rt):
        """A node that claimed and never recorded (killed) is named on the next claim;
        the interrupted attempt is not counted and the message's last error says so;
        when that claim is interrupted too, the one after knows (lost_again)."""
        oid = enqueue(ob_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with ob_engine.begin() as conn:
            (dead,) = oq.claim(conn, "node-a", limit=1, lease=1, now=now)
            (m,) = oq.claim(conn, "node-b", limit=1, lease=1, now=now + timedelta(seconds=2))
            row, rc = outcome_of(conn, oid)
            (again,) = oq.claim(conn, "node-c", limit=1, lease=60,
                                now=now + timedelta(seconds=4))
        assert dead.lost_by == "" and m.lost_by == "node-a" and not m.lost_again
        assert m.lost_until == now + timedelta(seconds=1)
        assert (row.status, row.attempts, row.claimed_by, row.last_error) == (
            "queued", 0, "node-b", oq.INTERRUPTED)
        assert rc == [("pending", 0, 0)]
        assert again.lost_by == "node-b" and again.lost_again and again.attempts == 0

    def test_a_lost_claim_is_taken_by_one_node_only(self, claim_engine, rt):
        """Two nodes after the same lost claim, the second's claim landing between the
        first's read of the due rows and its write: one of them records it, the other
        gets nothing."""
        oid = enqueue(claim_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with claim_engine.begin() as conn:
            oq.claim(conn, "node-a", limit=1, lease=1, now=now)
        b, c = claim_racing(claim_engine, now + timedelta(seconds=2), b_lease=60,
                            c_now=now + timedelta(seconds=2))
        with claim_engine.connect() as conn:
            row, _ = outcome_of(conn, oid)
        takers = [(node, m.lost_by) for node, got in (("node-b", b), ("node-c", c))
                  for m in got]
        assert len(takers) == 1 and takers[0][1] == "node-a"
        assert row.claimed_by == takers[0][0]

    def test_a_lost_claim_taken_meanwhile_is_not_taken_again(self, claim_engine, rt):
        """The claim a node read is no longer the row's once another node took it, even
        when that node's lease has run out too by the time of the write (a short lease,
        or a clock ahead): the lost attempt is still taken once, by one node."""
        oid = enqueue(claim_engine, rt, rcpts=("a@customer.test",))
        now = datetime.now(UTC)
        with claim_engine.begin() as conn:
            oq.claim(conn, "node-a", limit=1, lease=1, now=now)
        b, c = claim_racing(claim_engine, now + timedelta(seconds=2), b_lease=1,
                            c_now=now + timedelta(seconds=4))
        with claim_engine.connect() as conn:
            row, _ = outcome_of(conn, oid)
        takers = [(node, m.lost_by) for node, got in (("node-b", b), ("node-c", c))
                  for m in got]
        assert len(takers) == 1 and takers[0][1] == "node-a"
        assert row.claimed_by == takers[0][0]


def claim_racing(engine, b_now, *, b_lease, c_now):
    """node-c claims; between its read of the due rows and its first write, node-b's
    whole claim runs on another connection and commits (as a second node's would).
    Returns (node-b's claim, node-c's claim). On PostgreSQL node-c's read holds the
    rows (FOR UPDATE SKIP LOCKED), so node-b's claim skips them."""
    b: list[oq.Claimed] = []
    fired: list[bool] = []

    table = OutboundMessage.__tablename__.upper()

    def meanwhile(conn, cursor, statement, *args):
        if fired or not statement.lstrip().upper().startswith(f"UPDATE {table} "):
            return
        fired.append(True)
        with engine.begin() as other:
            b.extend(oq.claim(other, "node-b", limit=1, lease=b_lease, now=b_now))

    with engine.begin() as conn:
        event.listen(conn, "before_cursor_execute", meanwhile)
        try:
            c = oq.claim(conn, "node-c", limit=1, lease=60, now=c_now)
        finally:
            event.remove(conn, "before_cursor_execute", meanwhile)
    assert fired, "node-c's claim wrote nothing: no race was run"
    return b, c
