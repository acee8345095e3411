"""Auto-responses per queue through the real LMTP door, and every suppression rule."""

from __future__ import annotations

import base64
from email import message_from_bytes

import pytest
from sqlalchemy import select, update

from gateway.config import load_config
from gateway.store.tables import (
    AutoResponse,
    AutoResponseRequest,
    CommEntry,
    OutboundMessage,
    Ticket,
)
from tests.integration.outbound.conftest import outbound_toml, wait_for
from tests.peers.lmtp import LmtpClient
from tests.peers.smarthost import AuthSink

DESK = """
[postmaster]
max_emails_per_address_per_day = 3

[[queue]]
name = "Desk"
address = "desk@example.org"
follow_up = "reject"
auto_response_new = "Dear {customer},\\nwe opened ticket {ticket_number} ({title}).\\n"
auto_response_followup = "Thanks, we added it to {ticket_number}.\\n"
auto_response_reject = "Ticket {ticket_number} is closed; please write a new message.\\n"

[[address]]
email = "desk@example.org"
display_name = "Example Desk"
queue = "Desk"
"""


def mail(sender: str = "Jane Doe <jane@customer.test>", subject: str = "Printer broken",
         extra: str = "", mid: str = "<m1@customer.test>") -> bytes:
    return (f"From: {sender}\r\nTo: desk@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\n{extra}\r\nIt does not print.\r\n").encode()


@pytest.fixture
def desk(make_confdir, run_gateway):
    """A running gateway with the Desk queue; relay to an aiosmtpd sink."""
    sink = AuthSink().start()
    conf = make_confdir({"40-outbound.toml": outbound_toml(sink.port), "50-desk.toml": DESK})
    rg = run_gateway(load_config(conf))
    client = LmtpClient(rg.socket_path)
    client.lhlo()

    def deliver(msg: bytes, sender: str = "jane@customer.test") -> None:
        _, replies = client.transaction(sender, ["desk@example.org"], msg)
        assert [c for c, _ in replies] == [250]

    yield rg, deliver, sink
    client.close()
    sink.stop()


def outbound(rg) -> list:
    with rg.gateway.engine.connect() as conn:
        return conn.execute(select(OutboundMessage).order_by(OutboundMessage.id)).all()


def requests(rg) -> list:
    with rg.gateway.engine.connect() as conn:
        return conn.execute(select(AutoResponseRequest.__table__)).all()


def notices(rg) -> list[str]:
    with rg.gateway.engine.connect() as conn:
        return conn.execute(select(CommEntry.value).where(
            CommEntry.key == "AutoResponse")).scalars().all()


class TestAutoResponse:
    def test_new_ticket_gets_auto_reply_with_rfc3834_headers(self, desk):
        """A new ticket's auto-reply: null sender, Auto-Submitted, X-Loop, Precedence,
        template, the local Received header."""
        rg, deliver, sink = desk
        deliver(mail())
        wait_for(lambda: len(sink.received) == 1, what="auto-response delivered")
        got = sink.received[0]
        assert got.mail_from == "" and got.rcpts == ["jane@customer.test"]
        msg = message_from_bytes(got.data)
        with rg.gateway.engine.connect() as conn:
            number = conn.execute(select(Ticket.number)).scalar()
        assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Loop"]
        assert msg["Precedence"] == "bulk"
        assert msg["From"] == "Example Desk <desk@example.org>"
        assert msg["In-Reply-To"] == "<m1@customer.test>"
        assert f"[Ticket#{number}]" in msg["Subject"]
        body = msg.get_payload(decode=True).decode()
        assert f"Dear Jane Doe,\nwe opened ticket {number} (Printer broken)." in body
        # The trace of mail deskgate makes itself: by its host name, with its queue id.
        (row,) = outbound(rg)
        assert msg.get_all("Received") == [
            f"by {rg.gateway.config.gateway.hostname} (deskgate)\r\n\tid {row.id}; "
            f"{msg['Received'].rpartition('; ')[2]}"]

    def test_followup_and_reject_templates(self, desk):
        """Follow-up text for a follow-up; reject text for one to a closed reject-queue ticket."""
        rg, deliver, sink = desk
        deliver(mail())
        with rg.gateway.engine.connect() as conn:
            number = conn.execute(select(Ticket.number)).scalar()
        deliver(mail(subject=f"Re: [Ticket#{number}] Printer broken", mid="<m2@customer.test>"))
        with rg.gateway.engine.begin() as conn:
            conn.execute(update(Ticket).values(state="closed successful", state_type="closed"))
        deliver(mail(subject=f"Re: [Ticket#{number}] again", mid="<m3@customer.test>"))
        wait_for(lambda: len(sink.received) == 3, what="three auto-responses")
        msgs = [message_from_bytes(r.data) for r in sink.received]
        bodies = {m["In-Reply-To"]: m.get_payload(decode=True).decode() for m in msgs}
        assert bodies["<m2@customer.test>"] == f"Thanks, we added it to {number}.\n"
        assert bodies["<m3@customer.test>"] == \
            f"Ticket {number} is closed; please write a new message.\n"


class TestSuppression:
    @pytest.mark.parametrize("extra", ["Precedence: bulk\r\n", "X-Loop: yes\r\n",
                                       "Auto-Submitted: auto-generated\r\n",
                                       "List-Id: <users.lists.test>\r\n"],
                             ids=["precedence", "x-loop", "auto-submitted", "list-id"])
    def test_no_reply_to_looping_mail(self, desk, extra):
        """Mail with a loop signal gets no auto-response (the reason is logged)."""
        rg, deliver, _ = desk
        deliver(mail(extra=extra))
        assert outbound(rg) == [] and requests(rg) == []
        assert any("looping mail" in n for n in notices(rg))

    def test_no_reply_to_bounce(self, desk):
        """A DSN (multipart/report) never gets an auto-response."""
        rg, deliver, _ = desk
        dsn = (b"From: MAILER-DAEMON@mx.customer.test\r\nTo: desk@example.org\r\n"
               b"Subject: Undelivered\r\nMessage-ID: <b1@mx>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n"
               b"\r\n--XX\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--XX\r\n"
               b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
               b"Final-Recipient: rfc822; x@customer.test\r\nAction: failed\r\n"
               b"Status: 5.1.1\r\n\r\n--XX--\r\n")
        deliver(dsn, sender="")
        assert outbound(rg) == [] and requests(rg) == []
        assert any("bounce" in n or "looping" in n for n in notices(rg))

    def test_no_reply_to_no_auto_response_addresses(self, desk):
        """A sender matching postmaster.no_auto_response gets none."""
        rg, deliver, _ = desk
        deliver(mail(sender="postmaster@customer.test"), sender="postmaster@customer.test")
        assert outbound(rg) == [] and requests(rg) == []
        assert any("no_auto_response" in n for n in notices(rg))

    def test_daily_limit_per_address(self, desk):
        """At most max_emails_per_address_per_day auto-responses go to one address."""
        rg, deliver, _ = desk
        for i in range(4):
            deliver(mail(subject=f"Problem {i}", mid=f"<p{i}@customer.test>"))
        out = wait_for(lambda: len(outbound(rg)) >= 3 and outbound(rg), what="3 queued")
        assert len(out) == 3 and all(m.kind == "auto-response" for m in out)
        assert requests(rg) == []
        assert any("already had 3 auto-responses" in n for n in notices(rg))


class TestUnusableSender:
    @pytest.mark.postgres
    @pytest.mark.parametrize("sender", ["a\x00b@customer.test", "c" * 600 + "@customer.test"],
                             ids=["nul", "over-320"])
    def test_unusable_sender_stored_without_auto_response(self, make_confdir, run_gateway,
                                                          pg_url, sender):
        """A From address no reply can go to (a NUL byte, longer than an address may be)
        gets no auto-response and the message is stored; PostgreSQL refused the address
        in the auto-response counter, which sent the whole message to the quarantine."""
        from gateway.store.tables import Quarantine

        conf = make_confdir({"50-desk.toml": DESK,
                             "60-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n'})
        rg = run_gateway(load_config(conf))
        client = LmtpClient(rg.socket_path)
        client.lhlo()
        _, replies = client.transaction("jane@customer.test", ["desk@example.org"],
                                        mail(sender=sender))
        client.close()
        assert [c for c, _ in replies] == [250]
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Quarantine.reason)).scalars().all() == []
            assert conn.execute(select(Ticket.title)).scalars().all() == ["Printer broken"]
        assert requests(rg) == []
        assert any("not an address" in n for n in notices(rg))


class TestControlCharactersInHeaders:
    @pytest.mark.parametrize("ctl", ["\v", "\f", "\x1c", "\x1e", "\x1f", "\x00", "\x7f"])
    def test_subject_with_control_character_becomes_ticket_and_reply(self, desk, ctl):
        """A Subject with a control character (VT, FF, FS, RS, US, NUL, DEL) becomes a
        ticket, not quarantine; the auto-response carries the subject with it replaced
        and no injected header."""
        from gateway.store.tables import Quarantine

        rg, deliver, _sink = desk
        deliver(mail(subject=f"hello{ctl}Bcc: victim@evil.test"))
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Quarantine.id)).all() == []
            (title,) = conn.execute(select(Ticket.title)).scalars().all()
        assert "hello" in title
        (row,) = wait_for(lambda: outbound(rg), what="the auto-response queued")
        reply = message_from_bytes(row.data)
        subject = str(reply["Subject"])
        assert subject.endswith("hello Bcc: victim@evil.test"), subject
        assert not any(ord(c) < 32 or ord(c) == 127 for c in subject)
        assert reply["Bcc"] is None and reply.get_all("Subject") == [reply["Subject"]]


class TestRequests:
    """The inbound commit only requests the auto-response; the sender builds it."""

    def test_commit_writes_a_request_not_a_queue_row(self, make_confdir):
        """The inbound transaction holds a request row (counted for the daily limit) and no
        outbound row; build_requests turns it into one queue row and removes it."""
        import asyncio

        from gateway.app import Gateway
        from gateway.model import Envelope
        from gateway.outbound.autoresponse import build_requests

        conf = make_confdir({"40-outbound.toml": outbound_toml(9), "50-desk.toml": DESK})
        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            env = Envelope(mail_from="jane@customer.test", recipients=("desk@example.org",),
                           raw=mail())
            assert asyncio.run(gw.pipeline.deliver(env)).action == "new"
            with gw.engine.connect() as conn:
                assert conn.execute(select(OutboundMessage.id)).all() == []
                (req,) = conn.execute(select(AutoResponseRequest.__table__)).all()
                (counter,) = conn.execute(select(AutoResponse.__table__)).all()
            assert req.address == "jane@customer.test" and req.kind == "new"
            assert counter.id == req.counter_id and counter.outbound_id is None

            async def build() -> int:
                return await build_requests(lambda: gw.runtime, gw.writer, gw.engine)

            assert asyncio.run(build()) == 1
            assert asyncio.run(build()) == 0          # nothing left: not queued twice
            with gw.engine.connect() as conn:
                (row,) = conn.execute(select(OutboundMessage)).all()
                assert conn.execute(select(AutoResponseRequest.id)).all() == []
                assert conn.execute(select(AutoResponse.outbound_id)).scalar() == row.id
            msg = message_from_bytes(row.data)
            assert row.kind == "auto-response" and msg["Auto-Submitted"] == "auto-replied"
            assert msg["From"] == "Example Desk <desk@example.org>"   # rewritten by the sender
        finally:
            gw.close()

    def test_request_taken_once(self, make_confdir):
        """Two builders finishing the same request (two nodes): one queue row."""
        import asyncio

        from gateway.app import Gateway
        from gateway.model import Envelope
        from gateway.outbound.autoresponse import build, finish, pending_requests

        conf = make_confdir({"40-outbound.toml": outbound_toml(9), "50-desk.toml": DESK})
        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            env = Envelope(mail_from="jane@customer.test", recipients=("desk@example.org",),
                           raw=mail())
            asyncio.run(gw.pipeline.deliver(env))
            with gw.engine.connect() as conn:
                (req,) = pending_requests(conn)
                a, b = build(req, gw.runtime, conn), build(req, gw.runtime, conn)
            with gw.engine.begin() as conn:
                first = finish(conn, gw.runtime, req, a)
            with gw.engine.begin() as conn:
                second = finish(conn, gw.runtime, req, b)
            assert first is not None and second is None
            with gw.engine.connect() as conn:
                assert len(conn.execute(select(OutboundMessage.id)).all()) == 1
        finally:
            gw.close()

    def test_request_committed_before_a_stop_is_sent_after_restart(self, make_confdir,
                                                                     run_gateway):
        """A gateway that stops right after the inbound commit (no sender ran) leaves the
        request; the next gateway's sender builds and sends it, once."""
        import asyncio

        from gateway.app import Gateway
        from gateway.model import Envelope

        sink = AuthSink().start()
        try:
            conf = make_confdir({"40-outbound.toml": outbound_toml(sink.port),
                                 "50-desk.toml": DESK})
            gw = Gateway(load_config(conf))
            gw.prepare_store()
            env = Envelope(mail_from="jane@customer.test", recipients=("desk@example.org",),
                           raw=mail())
            asyncio.run(gw.pipeline.deliver(env))
            gw.close()                                  # gone before anything was built
            rg = run_gateway(load_config(conf))
            wait_for(lambda: len(sink.received) == 1, what="auto-response after restart")
            assert sink.received[0].rcpts == ["jane@customer.test"]
            assert requests(rg) == [] and len(outbound(rg)) == 1
        finally:
            sink.stop()


def header_lines(data: bytes) -> list[bytes]:
    """The header lines of a message as received (without their line ends)."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.split(b"\n")


@pytest.fixture
def desk_sink(tmp_path, make_confdir, run_gateway):
    """A running gateway with the Desk queue, relaying to Postfix's smtp-sink."""
    from tests.peers.require import missing_peer
    from tests.peers.smarthost import SmtpSink

    if not SmtpSink.available():
        missing_peer("smtp-sink (Postfix) not installed")
    sink = SmtpSink(tmp_path / "sink").start()
    conf = make_confdir({"40-outbound.toml": outbound_toml(sink.port), "50-desk.toml": DESK})
    rg = run_gateway(load_config(conf))
    client = LmtpClient(rg.socket_path)
    client.lhlo()

    def deliver(msg: bytes) -> bytes:
        """The auto-response to `msg` as smtp-sink received it."""
        _, replies = client.transaction("jane@customer.test", ["desk@example.org"], msg)
        assert [c for c, _ in replies] == [250]
        (got,) = wait_for(lambda: sink.count() >= 1 and sink.messages(),
                          what="auto-response received by smtp-sink")
        return got.data

    yield rg, deliver
    client.close()
    sink.stop()


class TestLongHeaders:
    @pytest.mark.parametrize("word", ["x" * 3000, "ä" * 3000], ids=["ascii", "utf-8"])
    def test_subject_without_spaces_folds_within_998_octets(self, desk_sink, word):
        """A 3,000-character Subject without spaces: every header line of the
        auto-response smtp-sink receives is at most 998 octets (RFC 5322 2.1.1), and
        the Subject still reads "[Ticket#N] Re: " and the whole customer subject."""
        from email.policy import default

        rg, deliver = desk_sink
        encoded = "=?utf-8?b?" + base64.b64encode(word.encode()).decode() + "?="
        data = deliver(mail(subject=word if word.isascii() else encoded))
        assert max(len(ln) for ln in header_lines(data)) <= 998
        with rg.gateway.engine.connect() as conn:
            number = conn.execute(select(Ticket.number)).scalar()
        msg = message_from_bytes(data, policy=default)
        assert str(msg["Subject"]) == f"[Ticket#{number}] Re: {word}"

    def test_long_message_ids_never_make_a_line_over_998_octets(self, desk_sink):
        """A customer Message-ID that fits a line only folded, and a References id too
        long for any line: In-Reply-To and References keep the first (folded), leave out
        the second, and no header line is over 998 octets."""
        _rg, deliver = desk_sink
        long_id = "<" + "n" * 970 + "@customer.test>"        # 986 octets
        huge = "<" + "m" * 990 + "@customer.test>"           # 1,006 octets
        data = deliver(mail(mid=f"\r\n {long_id}",
                            extra=f"References: <r1@customer.test>\r\n {huge}\r\n"))
        assert max(len(ln) for ln in header_lines(data)) <= 998
        msg = message_from_bytes(data)
        assert msg["In-Reply-To"].strip() == long_id
        assert msg["References"].split() == ["<r1@customer.test>", long_id]


class TestBuildFailures:
    """A request whose build crashes is not rebuilt on every pass of the sender for ever."""

    @staticmethod
    def gateway_with_request(make_confdir, lease="30s", retry="200ms, 200ms"):
        import asyncio

        from gateway.app import Gateway
        from gateway.model import Envelope

        conf = make_confdir({"40-outbound.toml": outbound_toml(9, retry=retry, lease=lease),
                             "50-desk.toml": DESK})
        gw = Gateway(load_config(conf))
        gw.prepare_store()
        env = Envelope(mail_from="jane@customer.test", recipients=("desk@example.org",),
                       raw=mail())
        asyncio.run(gw.pipeline.deliver(env))
        return gw

    @staticmethod
    def build_now(gw) -> int:
        import asyncio

        from gateway.outbound.autoresponse import build_requests

        async def run() -> int:
            return await build_requests(lambda: gw.runtime, gw.writer, gw.engine)
        return asyncio.run(run())

    def test_a_build_that_never_returns_counts(self, make_confdir, monkeypatch):
        """A build that ends the process (SIGKILL, the OOM killer: simulated by SystemExit
        from the build, which leaves no outcome) counts as a build: the request is built
        again on relay.retry and given up when it runs out, as a build that raised is."""
        import contextlib
        import time

        from gateway import metrics
        from gateway.outbound import autoresponse

        calls = []

        def killed(req, rt, conn):
            calls.append(time.monotonic())
            raise SystemExit("killed while building")

        monkeypatch.setattr(autoresponse, "build", killed)
        labels = {"door": "autoresponse", "direction": "out", "result": "failed"}
        before = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels) or 0
        gw = self.gateway_with_request(make_confdir, lease="300ms")
        try:
            for _ in range(30):
                with contextlib.suppress(SystemExit):
                    self.build_now(gw)
                with gw.engine.connect() as conn:
                    if not conn.execute(select(AutoResponseRequest.id)).all():
                        break
                time.sleep(0.05)
            with gw.engine.connect() as conn:
                left = conn.execute(select(AutoResponseRequest.id)).all()
                counters = conn.execute(select(AutoResponse.id)).all()
                queued = conn.execute(select(OutboundMessage.id)).all()
                errors = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "AutoResponse", CommEntry.priority == "Error")
                    ).scalars().all()
        finally:
            gw.close()
        assert left == [] and queued == [] and counters == []
        assert len(calls) == 3                            # the first build and two retries
        assert calls[1] - calls[0] >= 0.15 and calls[2] - calls[1] >= 0.15
        (err,) = errors
        assert "did not finish" in err and "3" in err
        after = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels)
        assert after == before + 1

    def test_a_database_failure_counts_not_even_when_the_count_cannot_be_taken_back(
            self, make_confdir, monkeypatch):
        """The build is counted before it starts; when the database fails the build and
        still fails when that count is taken back, it is taken back at the next pass,
        which builds the request at once (no relay.retry delay, nothing counted)."""
        from sqlalchemy.exc import OperationalError

        from gateway.outbound import autoresponse

        real_build, real_uncount = autoresponse.build, autoresponse.uncount_build
        down = {"build": True, "uncount": True}      # the database is away meanwhile

        def locked(name, real):
            def call(*args, **kw):
                if down[name]:
                    raise OperationalError("SELECT 1", {}, Exception("database is locked"))
                return real(*args, **kw)
            return call

        monkeypatch.setattr(autoresponse, "build", locked("build", real_build))
        monkeypatch.setattr(autoresponse, "uncount_build", locked("uncount", real_uncount))
        gw = self.gateway_with_request(make_confdir, retry="1h")
        try:
            queued = [self.build_now(gw)]
            down.update(build=False, uncount=False)          # it is back
            queued.append(self.build_now(gw))
            with gw.engine.connect() as conn:
                rows = conn.execute(select(OutboundMessage.kind)).scalars().all()
        finally:
            gw.close()
        assert queued == [0, 1] and rows == ["auto-response"]

    def test_a_build_that_keeps_crashing_is_given_up(self, make_confdir, monkeypatch):
        """Failed builds are tried again on relay.retry; when it runs out the request is
        given up: an Error naming the crash, counted as result="failed", nothing queued
        and the daily counter not charged."""
        import time

        from gateway import metrics
        from gateway.outbound import autoresponse

        calls = []

        def broken(req, rt, conn):
            calls.append(time.monotonic())
            raise RuntimeError("the signing library crashed")

        monkeypatch.setattr(autoresponse, "build", broken)
        labels = {"door": "autoresponse", "direction": "out", "result": "failed"}
        before = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels) or 0
        gw = self.gateway_with_request(make_confdir)
        try:
            for _ in range(30):
                self.build_now(gw)
                with gw.engine.connect() as conn:
                    if not conn.execute(select(AutoResponseRequest.id)).all():
                        break
                time.sleep(0.05)
            with gw.engine.connect() as conn:
                left = conn.execute(select(AutoResponseRequest.id)).all()
                counters = conn.execute(select(AutoResponse.id)).all()
                queued = conn.execute(select(OutboundMessage.id)).all()
                errors = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "AutoResponse", CommEntry.priority == "Error")
                    ).scalars().all()
        finally:
            gw.close()
        assert left == [] and queued == [] and counters == []
        assert len(calls) == 3                            # the first build and two retries
        assert calls[1] - calls[0] >= 0.15 and calls[2] - calls[1] >= 0.15
        (err,) = errors
        assert "RuntimeError: the signing library crashed" in err and "3" in err
        after = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels)
        assert after == before + 1

    def test_a_database_failure_while_building_is_retried_without_counting(
            self, make_confdir, monkeypatch):
        """A build that fails because of the database is tried again on the next pass and
        never gives the request up."""
        from sqlalchemy.exc import OperationalError

        from gateway.outbound import autoresponse

        real = autoresponse.build
        failures = []

        def locked(req, rt, conn):
            if len(failures) < 6:
                failures.append(1)
                raise OperationalError("SELECT 1", {}, Exception("database is locked"))
            return real(req, rt, conn)

        monkeypatch.setattr(autoresponse, "build", locked)
        gw = self.gateway_with_request(make_confdir)
        try:
            queued = [self.build_now(gw) for _ in range(7)]
            with gw.engine.connect() as conn:
                rows = conn.execute(select(OutboundMessage.kind)).scalars().all()
        finally:
            gw.close()
        assert queued == [0] * 6 + [1] and rows == ["auto-response"]

    def test_a_refused_build_is_counted_once(self, make_confdir, monkeypatch):
        """A build refused for a reason of the message (no key, say) is not sent, logged as
        a Warn and counted once as result="refused", at once (no retries)."""
        from gateway import metrics
        from gateway.errors import PermanentError
        from gateway.outbound import autoresponse

        def refused(req, rt, conn):
            raise PermanentError("no key for jane@customer.test")

        monkeypatch.setattr(autoresponse, "build", refused)
        labels = {"door": "autoresponse", "direction": "out", "result": "refused"}
        before = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels) or 0
        gw = self.gateway_with_request(make_confdir)
        try:
            assert [self.build_now(gw) for _ in range(2)] == [0, 0]
            with gw.engine.connect() as conn:
                left = conn.execute(select(AutoResponseRequest.id)).all()
                warns = conn.execute(select(CommEntry.priority).where(
                    CommEntry.key == "AutoResponse", CommEntry.value.contains("no key"))
                    ).scalars().all()
        finally:
            gw.close()
        assert left == [] and warns == ["Warn"]
        after = metrics.REGISTRY.get_sample_value("deskgate_messages_total", labels)
        assert after == before + 1


class TestEncodedWordsOnlyWhereAllowed:
    def test_utf8_address_and_message_id_are_never_encoded_words(self, desk):
        """A customer writing from jörg@kunde.test with a UTF-8 Message-ID (RFC 6532):
        the auto-response's To, In-Reply-To and References carry them raw, not as
        RFC 2047 encoded words (which are no address and no msg-id); the UTF-8 Subject
        may be encoded."""
        _rg, deliver, sink = desk
        deliver(mail(sender="Jörg Müller <jörg@kunde.test>", subject="Grüße",
                     mid="<grüße-1@kunde.test>",
                     extra="References: <r1@kunde.test> <grüße-0@kunde.test>\r\n"))
        wait_for(lambda: len(sink.received) == 1, what="auto-response delivered")
        got = sink.received[0]
        assert got.rcpts == ["jörg@kunde.test"]
        fields = dict(ln.split(b": ", 1) for ln in header_lines(got.data)
                      if not ln[:1].isspace() and b": " in ln)
        assert fields[b"To"].decode() == "jörg@kunde.test"
        assert fields[b"In-Reply-To"].decode() == "<grüße-1@kunde.test>"
        assert fields[b"References"].decode().split() == [
            "<r1@kunde.test>", "<grüße-0@kunde.test>", "<grüße-1@kunde.test>"]


class TestLongBodyLines:
    def test_a_template_line_longer_than_998_octets_is_sent_within_the_limit(
            self, tmp_path, make_confdir, run_gateway):
        """A template whose line (a 1,500-character URL) is longer than 998 octets:
        every line smtp-sink receives is at most 998 octets (RFC 5322 2.1.1), and the
        decoded body still holds the whole URL."""
        from tests.peers.require import missing_peer
        from tests.peers.smarthost import SmtpSink

        if not SmtpSink.available():
            missing_peer("smtp-sink (Postfix) not installed")
        url = "https://example.org/kb?" + "a" * 1500
        desk = DESK.replace('auto_response_new = "Dear {customer},',
                            f'auto_response_new = "See {url} ,')
        sink = SmtpSink(tmp_path / "sink").start()
        try:
            conf = make_confdir({"40-outbound.toml": outbound_toml(sink.port),
                                 "50-desk.toml": desk})
            rg = run_gateway(load_config(conf))
            client = LmtpClient(rg.socket_path)
            client.lhlo()
            _, replies = client.transaction("jane@customer.test", ["desk@example.org"],
                                            mail())
            client.close()
            assert [c for c, _ in replies] == [250]
            (got,) = wait_for(lambda: sink.count() >= 1 and sink.messages(),
                              what="auto-response received by smtp-sink")
        finally:
            sink.stop()
        data = got.data
        assert max(len(ln) for ln in data.replace(b"\r\n", b"\n").split(b"\n")) <= 998
        body = message_from_bytes(data).get_payload(decode=True).decode()
        assert f"See {url} ," in body


class TestSigningKeyMissing:
    @pytest.mark.parametrize("sign", ["smime", "pgp"])
    def test_message_stored_and_log_says_no_signing_key(self, make_confdir, run_gateway,
                                                        request, sign):
        """A queue that signs but has no key for its address: the customer's message
        is stored, no auto-response goes out unsigned, and the communication log says
        why; the refused one does not count for the daily limit."""
        sink = AuthSink().start()
        request.addfinalizer(sink.stop)
        desk = DESK.replace('follow_up = "reject"', f'follow_up = "reject"\nsign = "{sign}"')
        conf = make_confdir({"40-outbound.toml": outbound_toml(sink.port),
                             "50-desk.toml": desk})
        rg = run_gateway(load_config(conf))
        client = LmtpClient(rg.socket_path)
        client.lhlo()
        _, replies = client.transaction("jane@customer.test", ["desk@example.org"], mail())
        client.close()
        assert [c for c, _ in replies] == [250]
        wait_for(lambda: requests(rg) == [], timeout=20)
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.title)).scalars().all() == ["Printer broken"]
            assert conn.execute(select(AutoResponse.id)).scalars().all() == []
        assert outbound(rg) == []
        why = [n for n in notices(rg) if n.startswith("no auto-response (new)")]
        assert len(why) == 1 and "cannot sign" in why[0], notices(rg)
