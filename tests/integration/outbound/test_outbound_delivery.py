"""Delivery to the smarthost: TLS verification, AUTH, retries, permanent failures and DSNs."""

from __future__ import annotations

import re
import smtplib
from email import message_from_bytes

import pytest
from sqlalchemy import select

from gateway.inbound.bounce import parse_dsn
from gateway.store.tables import Article, CommEntry, OutboundMessage, OutboundRecipient
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers import postfix as pfmod
from tests.peers.ca import TestCA
from tests.peers.require import missing_peer
from tests.peers.smarthost import AuthSink, SmtpSink, free_port

MSG = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n"
       b"Message-ID: <orig-1@internal.test>\r\n\r\nbody\r\n")


def submit(cfg, rcpts=("cust@customer.test",), msg=MSG, sender="app@internal.test"):
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        assert s.sendmail(sender, list(rcpts), msg) == {}


def rows(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(table).order_by(table.id)).all()


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "ca")


class TestRelayTls:
    @pytest.mark.parametrize("security", ["starttls", "tls"])
    def test_verified_tls_and_auth_to_the_smarthost(self, ca, tmp_path, outbound_config,
                                                    run_gateway, security):
        """STARTTLS or implicit TLS with a pinned CA, then AUTH: delivered, user seen."""
        leaf = ca.issue("smarthost", hosts=("127.0.0.1", "localhost"))
        secret = tmp_path / "relay.pw"
        secret.write_text("relaypw\n")
        secret.chmod(0o600)
        with AuthSink(leaf.cert, leaf.key, users={"gw": "relaypw"},
                      implicit_tls=security == "tls", auth_required=True) as sink:
            cfg = outbound_config(sink.port, security=security, extra_relay=f"""
tls_ca_file = "{ca.ca_path}"
user = "gw"
password_file = "{secret}"
""")
            rg = run_gateway(cfg)
            submit(cfg)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            (got,) = sink.received
            assert got.user == "gw" and got.tls
            entries = [e.value for e in rows(rg.gateway.engine, CommEntry)]
            assert any("certificate verified" in v for v in entries)
            assert any("authenticated as gw" in v for v in entries)
            assert not any("relaypw" in v for v in entries)

    def test_unknown_ca_is_refused_and_retried(self, ca, tmp_path, outbound_config,
                                               run_gateway):
        """A certificate from a CA we do not trust fails verification: nothing is sent."""
        other = TestCA(tmp_path / "other-ca", name="someone else")
        leaf = other.issue("smarthost", hosts=("127.0.0.1", "localhost"))
        with AuthSink(leaf.cert, leaf.key) as sink:
            cfg = outbound_config(sink.port, security="starttls",
                                  extra_relay=f'tls_ca_file = "{ca.ca_path}"',
                                  retry="1h")
            rg = run_gateway(cfg)
            submit(cfg)

            def tried():
                (m,) = rows(rg.gateway.engine, OutboundMessage)
                return m if m.attempts >= 1 else None

            m = wait_for(tried, what="a delivery attempt")
            assert m.status == "queued" and m.last_error.startswith(
                "Server certificate not verified: host 127.0.0.1[127.0.0.1]: certificate "
                "verify failed"), m.last_error
            assert sink.received == []


class TestRetries:
    def test_smarthost_down_then_up_delivers_once(self, outbound_config, run_gateway):
        """Connection refused is retried on the schedule; when the relay comes up, one copy."""
        port = free_port()
        cfg = outbound_config(port, retry="1s*20")
        rg = run_gateway(cfg)
        submit(cfg)
        wait_for(lambda: rows(rg.gateway.engine, OutboundMessage)[0].attempts >= 2,
                 what="two failed attempts")
        (m,) = rows(rg.gateway.engine, OutboundMessage)
        assert m.status == "queued" and m.last_error
        with AuthSink(port=port) as sink:
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            assert len(sink.received) == 1

    def test_4xx_from_smtp_sink_then_success(self, tmp_path, outbound_config, run_gateway):
        """Postfix smtp-sink answering 4xx to RCPT defers; a well sink then gets it once."""
        if not SmtpSink.available():
            missing_peer("smtp-sink not installed")
        port = free_port()
        cfg = outbound_config(port, retry="1s*20")
        with SmtpSink(tmp_path / "sink1", options=["-r", "RCPT"], port=port):
            rg = run_gateway(cfg)
            submit(cfg)
            m = wait_for(lambda: (r := rows(rg.gateway.engine, OutboundRecipient)[0])
                         .last_code and r, what="a deferral")
            assert 400 <= m.last_code < 500 and m.status == "pending"
        with SmtpSink(tmp_path / "sink2", port=port) as sink:
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            wait_for(lambda: sink.count() >= 1, what="sink counter")
            msgs = sink.messages()
            assert len(msgs) == 1 and msgs[0].rcpts == ["cust@customer.test"]


class TestRecipientLimit:
    def test_recipients_refused_with_452_too_many_go_in_a_following_transaction(
            self, outbound_config, run_gateway):
        """A Postfix smarthost with smtpd_recipient_limit = 2 answers the third RCPT
        `452 4.5.3 Error: too many recipients` (RFC 5321 4.5.3.1.10): the rest goes in
        following transactions at once, in the same attempt, as Postfix's own client does;
        no recipient waits for the retry schedule (1h here)."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        rcpts = [f"c{i}@customer.test" for i in range(5)]
        with AuthSink() as sink, pfmod.postfix_dir() as base:
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.start_relaying({"customer.test": sink.port}, "smtpd_recipient_limit=2")
            try:
                cfg = outbound_config(pf.port, retry="1h")
                rg = run_gateway(cfg)
                submit(cfg, rcpts=rcpts)
                (m,) = wait_for(lambda: [m for m in rows(rg.gateway.engine, OutboundMessage)
                                         if m.attempts], timeout=30, what="the attempt")
                assert (m.status, m.attempts) == ("sent", 1), m.last_error
                wait_for(lambda: sorted(r for m in sink.received for r in m.rcpts) == rcpts,
                         timeout=30, what="every recipient behind Postfix")
            finally:
                pf.stop()
        with rg.gateway.engine.connect() as conn:
            notes = conn.execute(select(CommEntry.value)
                                 .where(CommEntry.key == "Recipients")).scalars().all()
        assert notes and all("452 4.5.3 Error: too many recipients" in n for n in notes)
        rc = rows(rg.gateway.engine, OutboundRecipient)
        assert [(r.status, r.attempts, r.last_code) for r in rc] == [("sent", 1, 250)] * 5
        assert len(sink.received) >= 3


class TestPermanentFailure:
    def test_550_sends_dsn_to_submitter_and_marks_article(self, outbound_config, run_gateway):
        """A 550 for one recipient: DSN (null sender) to the submitter, article error, Error log."""
        with AuthSink() as sink:
            sink.set_script(lambda stage, addr: "550 5.1.1 no such user"
                            if stage == "RCPT" and addr.startswith("gone@") else None)
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            submit(cfg, rcpts=("cust@customer.test", "gone@customer.test"))
            wait_for(lambda: statuses(rg.gateway.engine) == ["failed", "sent"],
                     what="failure and DSN delivered")
            first, dsn = sink.received
            assert first.rcpts == ["cust@customer.test"]
            assert dsn.mail_from == "" and dsn.rcpts == ["app@internal.test"]
            info = parse_dsn(message_from_bytes(dsn.data))
            assert info is not None and info.action == "failed" and info.status == "5.1.1"
            assert "gone@customer.test" in info.recipient
            (art,) = rows(rg.gateway.engine, Article)
            assert art.transmission_status == "failed"
            assert "gone@customer.test" in art.transmission_error and "550" in \
                art.transmission_error
            errors = [e for e in rows(rg.gateway.engine, CommEntry) if e.priority == "Error"]
            assert any("gone@customer.test" in e.value for e in errors)
            rcpt = {r.address: r.status for r in rows(rg.gateway.engine, OutboundRecipient)}
            assert rcpt["cust@customer.test"] == "sent" and rcpt["gone@customer.test"] == \
                "failed"

    def test_smtp_sink_hard_error_on_data(self, tmp_path, outbound_config, run_gateway):
        """smtp-sink answering 5xx to DATA fails the message and queues a DSN."""
        if not SmtpSink.available():
            missing_peer("smtp-sink not installed")
        port = free_port()
        with SmtpSink(tmp_path / "sink", options=["-f", "DATA"], port=port):
            cfg = outbound_config(port, retry="1h")
            rg = run_gateway(cfg)
            submit(cfg)
            wait_for(lambda: statuses(rg.gateway.engine)[:1] == ["failed"], what="failure")
            m = rows(rg.gateway.engine, OutboundMessage)
            assert m[0].attempts == 1 and m[0].last_error.startswith(
                "host 127.0.0.1[127.0.0.1] said: 5"), m[0].last_error
            assert len(m) == 2 and m[1].kind == "dsn" and m[1].sender == ""

    def test_exhausted_retries_send_dsn(self, outbound_config, run_gateway):
        """4xx until the schedule ends is a permanent failure with a DSN."""
        with AuthSink() as sink:
            sink.set_script(lambda stage, addr: "451 4.3.0 later"
                            if addr == "cust@customer.test" else None)
            cfg = outbound_config(sink.port, retry="200ms, 200ms")
            rg = run_gateway(cfg)
            submit(cfg)
            wait_for(lambda: statuses(rg.gateway.engine) == ["failed", "sent"],
                     what="exhausted and DSN")
            (m, _dsn) = rows(rg.gateway.engine, OutboundMessage)
            assert m.attempts == 3
            info = parse_dsn(message_from_bytes(sink.received[0].data))
            assert info is not None and info.action == "failed"

    def test_delayed_dsn_after_warn_after(self, outbound_config, run_gateway):
        """A message still deferred after warn_after gets one "delayed" DSN, then continues."""
        with AuthSink() as sink:
            sink.set_script(lambda stage, addr: "451 4.3.0 later"
                            if addr == "cust@customer.test" else None)
            cfg = outbound_config(sink.port, retry="300ms*30", extra_relay='warn_after = "1s"')
            rg = run_gateway(cfg)
            submit(cfg)
            wait_for(lambda: len(sink.received) >= 1, what="delayed DSN")
            info = parse_dsn(message_from_bytes(sink.received[0].data))
            assert info is not None and info.action == "delayed"
            sink.set_script(None)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"], what="delivery")
            assert len(sink.received) == 2


UTF8_MSG = ("From: app@internal.test\r\nTo: jörg@kunde.test\r\nSubject: Grüße\r\n"
            "Message-ID: <utf8-1@internal.test>\r\n\r\nbody\r\n").encode()


def submit_utf8(cfg, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        assert s.sendmail("app@internal.test", [rcpt], UTF8_MSG,
                          mail_options=["SMTPUTF8"]) == {}


class TestInternationalAddresses:
    def test_non_ascii_recipient_relayed_with_smtputf8(self, outbound_config, run_gateway):
        """A recipient with a UTF-8 local part goes to a smarthost that offers SMTPUTF8,
        with MAIL FROM ... SMTPUTF8, and arrives as sent."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            submit_utf8(cfg, "jörg@kunde.test")
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            (got,) = sink.received
            assert got.rcpts == ["jörg@kunde.test"]
            assert "Grüße".encode() in got.data

    def test_relay_without_smtputf8_fails_at_once_with_a_dsn(self, outbound_config,
                                                             run_gateway):
        """A smarthost that does not offer SMTPUTF8 can never take the message: the
        recipient fails on the first attempt with 5.6.7 and the submitter gets a DSN,
        instead of attempts for the whole retry schedule."""
        with AuthSink(smtputf8=False) as sink:
            cfg = outbound_config(sink.port, retry="1h*5")
            rg = run_gateway(cfg)
            submit_utf8(cfg, "jörg@kunde.test")
            wait_for(lambda: statuses(rg.gateway.engine)[:1] == ["failed"], what="failure")
            m = rows(rg.gateway.engine, OutboundMessage)
            assert m[0].attempts == 1
            (r,) = [x for x in rows(rg.gateway.engine, OutboundRecipient)
                    if x.outbound_id == m[0].id]
            assert r.status == "failed" and r.last_code == 553 and "5.6.7" in r.last_reply
            assert len(m) == 2 and m[1].kind == "dsn"
            assert sink.received == [] or all(x.rcpts != ["jörg@kunde.test"]
                                              for x in sink.received)

    def test_dsn_to_a_utf8_return_path_has_a_raw_utf8_to_and_goes_with_smtputf8(
            self, outbound_config, run_gateway):
        """The DSN for a message from jörg@kunde.test goes through a real Postfix with
        SMTPUTF8 (its Received line says UTF8SMTP, RFC 6531 3.7.4) and arrives with To: as raw UTF-8
        (RFC 6532), not an RFC 2047 encoded word, which is no address."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        with AuthSink() as sink, pfmod.postfix_dir() as base:
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.start_relaying({"kunde.test": sink.port},
                              "relay_domains=kunde.test, customer.test",
                              "smtpd_recipient_restrictions=check_recipient_access "
                              "inline:{ gone@customer.test=REJECT }, "
                              "permit_mynetworks, reject")
            try:
                cfg = outbound_config(pf.port, retry="1h")
                rg = run_gateway(cfg)
                with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                    s.sendmail("jörg@kunde.test", ["gone@customer.test"], UTF8_MSG,
                               mail_options=["SMTPUTF8"])
                wait_for(lambda: sink.received, timeout=30, what="the DSN behind Postfix")
            finally:
                pf.stop()
        assert statuses(rg.gateway.engine)[0] == "failed"
        (dsn,) = sink.received
        assert dsn.mail_from == "" and dsn.rcpts == ["jörg@kunde.test"]
        head = re.sub(rb"\r\n[ \t]+", b" ", dsn.data.split(b"\r\n\r\n", 1)[0])
        assert "To: jörg@kunde.test".encode() in head.split(b"\r\n")
        received = [ln for ln in head.split(b"\r\n") if ln.startswith(b"Received:")]
        assert any(b"with UTF8SMTP" in ln and b"helpdesk.test" in ln for ln in received), \
            received
        info = parse_dsn(message_from_bytes(dsn.data))
        assert info is not None and info.action == "failed" and info.status == "5.7.1"

    def test_utf8_headers_with_an_ascii_envelope_still_go_to_a_relay_without_smtputf8(
            self, outbound_config, run_gateway):
        """UTF-8 header fields alone do not make a relay without SMTPUTF8 refuse the
        message (as a UTF-8 address does): it is sent as 8-bit content, with a Notice."""
        msg = ("From: Jörg <app@internal.test>\r\nTo: cust@customer.test\r\n"
               "Subject: Grüße\r\nMessage-ID: <utf8-hdr-2@internal.test>\r\n\r\nbody\r\n")
        with AuthSink(smtputf8=False) as sink:
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("app@internal.test", ["cust@customer.test"], msg.encode(),
                           mail_options=["SMTPUTF8"])
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            (got,) = sink.received
            assert b"Subject: [Ticket#" in got.data and "Grüße".encode() in got.data
        notes = [e.value for e in rows(rg.gateway.engine, CommEntry)]
        assert any("without SMTPUTF8" in v for v in notes), notes

    @pytest.mark.parametrize(("limit", "part"), [
        ("", "message/global"), ("bounce_size_limit = 0", "message/global-headers")])
    def test_dsn_returning_utf8_headers_to_an_ascii_return_path_goes_with_smtputf8(
            self, outbound_config, run_gateway, limit, part):
        """A message with ASCII addresses but raw UTF-8 headers (RFC 6532: a UTF-8 From
        display name and Subject) is bounced whole as message/global (or, with
        relay.bounce_size_limit = 0, its headers as message/global-headers), and the DSN
        carrying them goes through a real Postfix with SMTPUTF8 (UTF8SMTP in its Received
        line), although its own envelope is ASCII."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        msg = ("From: Jörg Müller <app@kunde.test>\r\nTo: gone@customer.test\r\n"
               "Subject: Grüße aus Köln\r\nMessage-ID: <utf8-hdr-1@kunde.test>\r\n\r\n"
               "body\r\n").encode()
        with AuthSink() as sink, pfmod.postfix_dir() as base:
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.write_config()
            pf.run("postconf", "-e",
                   f"transport_maps=inline:{{ kunde.test=smtp:[127.0.0.1]:{sink.port} }}",
                   "relay_domains=kunde.test, customer.test",
                   "smtpd_recipient_restrictions=check_recipient_access "
                   "inline:{ gone@customer.test=REJECT }, "
                   "permit_mynetworks, reject")
            with (pf.conf / "master.cf").open("a") as fh:
                fh.write("smtp      unix  -       -       n       -       -       smtp\n")
            pf.run("postfix", "start")
            pf.running = True
            try:
                pf._wait_listening()
                cfg = outbound_config(pf.port, retry="1h", extra_relay=limit)
                rg = run_gateway(cfg)
                with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                    s.sendmail("app@kunde.test", ["gone@customer.test"], msg,
                               mail_options=["SMTPUTF8"])
                wait_for(lambda: sink.received, timeout=30, what="the DSN behind Postfix")
            finally:
                pf.stop()
        assert statuses(rg.gateway.engine)[0] == "failed"
        (dsn,) = sink.received
        assert dsn.mail_from == "" and dsn.rcpts == ["app@kunde.test"]
        head = re.sub(rb"\r\n[ \t]+", b" ", dsn.data.split(b"\r\n\r\n", 1)[0])
        received = [ln for ln in head.split(b"\r\n") if ln.startswith(b"Received:")]
        assert any(b"with UTF8SMTP" in ln and b"helpdesk.test" in ln for ln in received), \
            received
        parsed = message_from_bytes(dsn.data)
        (returned,) = [p for p in parsed.walk() if p.get_content_type() == part]
        assert returned["Content-Transfer-Encoding"] == "8bit"
        assert "Grüße aus Köln".encode() in dsn.data
        info = parse_dsn(parsed)
        assert info is not None and info.action == "failed" and info.status == "5.7.1"
