"""A real Postfix relays example.org over LMTP into the gateway: tickets appear,
and every recipient gets its own outcome in Postfix's log."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.store.tables import CommEntry
from tests.peers import postfix as pfmod
from tests.peers.postfix import Postfix
from tests.peers.require import missing_peer

pytestmark = pytest.mark.postfix

SENDER = "customer@customer.test"


def message(subject: str, to: str, body: str = "Hello helpdesk.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"A Customer <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@customer.test>"
    msg.set_content(body)
    return msg


def send(postfix, msg: EmailMessage, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
        refused = s.send_message(msg, from_addr=SENDER, to_addrs=rcpts)
    assert refused == {}


class TestPostfixDelivery:
    def test_mail_through_postfix_becomes_ticket(self, postfix, pf_gateway, store_of):
        """A message sent to Postfix over SMTP is delivered over LMTP and opens a ticket."""
        rg = pf_gateway()
        since = postfix.log_offset()
        send(postfix, message("printer on fire", "support@example.org",
                              "Grüße, the printer is on fire.\n"), ["support@example.org"])
        postfix.wait_queue_empty()
        st = store_of(rg)
        [ticket] = st.tickets()
        assert ticket.queue == "Support" and ticket.title == "printer on fire"
        [article] = st.articles()
        assert "printer is on fire" in article.body and "Grüße" in article.body
        [raw] = st.article_raws()
        assert raw.startswith(b"Received: ")
        assert b"Message-ID: <printer-on-fire@customer.test>" in raw
        [d] = postfix.deliveries(since)
        assert (d["to"], d["status"], d["dsn"]) == ("support@example.org", "sent", "2.1.5")
        assert d["service"] == "deskgate/lmtp" and "250 2.1.5" in d["text"]
        # Postfix's status=sent line names the ticket and article the message became.
        assert f"ticket {ticket.number}, article {article.id}" in d["text"], d["text"]

    def test_three_recipients_one_unknown(self, postfix, pf_gateway, store_of):
        """Two valid recipients are delivered in one LMTP transaction; the unknown one bounces."""
        rg = pf_gateway()
        since = postfix.log_offset()
        rcpts = ["support@example.org", "nobody@example.org", "sales@example.org"]
        send(postfix, message("three rcpts", ", ".join(rcpts)), rcpts)
        postfix.wait_queue_empty()
        by_rcpt = {d["to"]: d for d in postfix.deliveries(since)
                   if d["service"] == "deskgate/lmtp"}
        assert set(by_rcpt) == set(rcpts)
        assert by_rcpt["nobody@example.org"]["status"] == "bounced"
        assert by_rcpt["nobody@example.org"]["dsn"] == "5.1.1"
        assert "550 5.1.1" in by_rcpt["nobody@example.org"]["text"]
        assert "RCPT TO" in by_rcpt["nobody@example.org"]["text"]
        for r in ("support@example.org", "sales@example.org"):
            assert by_rcpt[r]["status"] == "sent" and by_rcpt[r]["dsn"] == "2.1.5"
            assert "250 2.1.5" in by_rcpt[r]["text"]
        # One transaction: same queue id, and on our side one article for both recipients.
        assert len({d["queue_id"] for d in by_rcpt.values()}) == 1
        st = store_of(rg)
        [ticket] = st.tickets()
        # The first accepted recipient decides; Postfix sorts recipients before LMTP.
        assert ticket.queue in ("Support", "Sales")
        [article] = st.articles()
        deliveries = st.deliveries()
        assert sorted(d.recipient for d in deliveries) == ["sales@example.org",
                                                           "support@example.org"]
        assert {d.article_id for d in deliveries} == {article.id}
        # The bounce to the sender was generated (and discarded by the test's transport).
        postfix.wait_log(r"postfix/bounce\[\d+\]: \w+: sender non-delivery notification",
                         since=since)

    def test_disabled_addresses_deferred_and_bounced(self, postfix, pf_gateway, store_of):
        """invalid-temporarily is deferred by Postfix (450 4.2.1), invalid bounced (550 5.2.1)."""
        rg = pf_gateway()
        since = postfix.log_offset()
        rcpts = ["paused@example.org", "old@example.org", "support@example.org"]
        send(postfix, message("disabled rcpts", ", ".join(rcpts)), rcpts)
        postfix.wait_log(r"to=<paused@example\.org>.*status=deferred", since=since)
        postfix.wait_log(r"to=<support@example\.org>.*status=sent", since=since)
        by_rcpt = {d["to"]: d for d in postfix.deliveries(since)}
        assert by_rcpt["paused@example.org"]["dsn"] == "4.2.1"
        assert "450 4.2.1" in by_rcpt["paused@example.org"]["text"]
        assert by_rcpt["old@example.org"]["status"] == "bounced"
        assert by_rcpt["old@example.org"]["dsn"] == "5.2.1"
        assert "550 5.2.1" in by_rcpt["old@example.org"]["text"]
        [entry] = postfix.queue_entries()
        assert [r["address"] for r in entry["recipients"]] == ["paused@example.org"]
        assert "4.2.1" in entry["recipients"][0]["delay_reason"]
        assert len(store_of(rg).tickets()) == 1


CACHED_ADDRESSES = {"40-example-net.toml": """
    [[address]]
    email = "support@example.net"
    queue = "Support"

    [[address]]
    email = "sales@example.net"
    queue = "Sales"
    """}


class TestPostfixConnectionReuse:
    def test_cached_lmtp_connections_deliver_every_message(self, postfix, pf_gateway,
                                                            store_of):
        """With Postfix's LMTP connection cache (RSET between transactions on one
        connection) a flushed backlog of 30 messages becomes 30 tickets over reused
        connections."""
        rg = pf_gateway(CACHED_ADDRESSES)
        since = postfix.log_offset()
        rcpts = ["support@example.net", "sales@example.net"]
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
            for i in range(30):
                msg = message(f"burst {i}", ", ".join(rcpts))
                assert s.send_message(msg, from_addr=SENDER, to_addrs=rcpts) == {}
        postfix.wait_log(r"deferred transport", count=60, since=since)
        assert store_of(rg).tickets() == []         # held until the flush
        postfix.flush()
        # Mail of a deferred transport is retried only on a flush: keep flushing.
        postfix.wait_queue_empty(flush=True)
        lines = [d for d in postfix.deliveries(since) if d["service"] == "deskgatecached/lmtp"]
        sent = [d for d in lines if d["status"] == "sent"]
        assert len(sent) == 60, [d for d in lines if d["status"] != "sent"][:5]
        assert sorted(t.title for t in store_of(rg).tickets()) == sorted(
            f"burst {i}" for i in range(30))
        reused = [ln for ln in postfix.log_lines(since) if "deskgatecached/lmtp" in ln
                  and "conn_use=" in ln]
        assert reused, "Postfix never reused a cached LMTP connection"



class TestPostfixRetries:
    def test_reply_lost_after_commit_redelivery_stored_once(self, postfix, pf_gateway,
                                                            store_of, monkeypatch):
        """The gateway commits but Postfix sees a 4xx (as when the reply is lost); Postfix's
        retry of the same message is answered 250 and does not add a second article. The
        redelivery's log line and its Duplicate entry in the communication log name the
        ticket and article of the first delivery."""
        rg = pf_gateway()
        real = rg.gateway.deliver

        async def commit_then_fail(*args, **kw):
            await real(*args, **kw)
            raise ConnectionResetError("reply lost after commit")

        monkeypatch.setattr(rg.gateway, "deliver", commit_then_fail)
        since = postfix.log_offset()
        send(postfix, message("lost reply", "support@example.org"), ["support@example.org"])
        postfix.wait_log(r"to=<support@example\.org>.*status=deferred .*451 4\.3\.0",
                         since=since)
        assert len(store_of(rg).articles()) == 1
        monkeypatch.setattr(rg.gateway, "deliver", real)
        after = postfix.log_offset()
        with capture_logs() as logs:
            postfix.flush()
            postfix.wait_queue_empty(flush=True)
        [d] = [d for d in postfix.deliveries(after) if d["status"] == "sent"]
        assert "250 2.1.5 already delivered" in d["text"]
        st = store_of(rg)
        assert len(st.tickets()) == 1 and len(st.articles()) == 1
        [ticket], [article] = st.tickets(), st.articles()
        assert ticket.number
        [line] = [e for e in logs if e["event"] == "delivered"]
        assert (line["action"], line["ticket"], line["article"]) == (
            "duplicate", ticket.number, article.id)
        with rg.gateway.engine.connect() as conn:
            dup = [e.value for e in conn.execute(select(CommEntry).where(
                CommEntry.key == "Duplicate"))]
        assert dup == [f"already delivered (ticket {ticket.number}, article {article.id}, "
                       "stored); not stored again"]

    def test_message_over_gateway_limit_bounced_552(self, postfix, pf_gateway, store_of):
        """A message Postfix accepts but that exceeds the gateway's max_message_size (1 MiB,
        advertised as SIZE in LHLO) is bounced by Postfix with 5.3.4, not retried."""
        rg = pf_gateway()
        since = postfix.log_offset()
        big = message("too big", "support@example.org", "x" * 76 + "\n")
        big.set_content(("y" * 998 + "\n") * 1500)
        send(postfix, big, ["support@example.org"])
        postfix.wait_queue_empty()
        [d] = [d for d in postfix.deliveries(since) if d["service"] == "deskgate/lmtp"]
        assert (d["status"], d["dsn"]) == ("bounced", "5.3.4")
        # Postfix honours the SIZE our LHLO advertises and does not even send it.
        assert f"exceeds size limit {1024 * 1024}" in d["text"]
        assert store_of(rg).tickets() == []


class TestPostfixInternationalised:
    def test_smtputf8_sender_and_headers(self, postfix, pf_gateway, store_of):
        """A UTF-8 envelope sender (SMTPUTF8) and raw UTF-8 headers pass Postfix and our
        LMTP; the article shows the decoded names."""
        rg = pf_gateway()
        since = postfix.log_offset()
        raw = ("From: Jürgen Müller <jürgen@customer.test>\r\nTo: support@example.org\r\n"
               "Subject: Grüße aus Köln\r\nMessage-ID: <utf8@customer.test>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\nDer Drucker brennt.\r\n").encode()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
            s.ehlo()
            assert s.has_extn("smtputf8")
            assert s.sendmail("jürgen@customer.test", ["support@example.org"], raw,
                              mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
        postfix.wait_queue_empty()
        [d] = [d for d in postfix.deliveries(since) if d["service"] == "deskgate/lmtp"]
        assert d["status"] == "sent"
        [article] = store_of(rg).articles()
        assert article.subject == "Grüße aus Köln"
        assert article.from_email == "jürgen@customer.test"
        assert "Drucker brennt" in article.body


class TestPostfixOverTcp:
    def test_lmtp_over_tcp(self, gateway, store_of):
        """A Postfix whose transport is lmtp:inet:127.0.0.1:PORT delivers to the TCP
        listener: three recipients, one unknown bounced, one ticket."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        rg = gateway()
        with pfmod.postfix_dir() as base:
            pf = Postfix(base, f"inet:127.0.0.1:{rg.port}")
            try:
                pf.start()
                rcpts = ["support@example.org", "nobody@example.org", "sales@example.org"]
                send(pf, message("over tcp", ", ".join(rcpts)), rcpts)
                pf.wait_queue_empty()
                by_rcpt = {d["to"]: d for d in pf.deliveries() if d["service"] == "deskgate/lmtp"}
            finally:
                pf.stop()
        assert {r: d["status"] for r, d in by_rcpt.items()} == {
            "support@example.org": "sent", "sales@example.org": "sent",
            "nobody@example.org": "bounced"}
        assert f"127.0.0.1[127.0.0.1]:{rg.port}" in by_rcpt["support@example.org"]["relay"]
        assert len(store_of(rg).tickets()) == 1

class TestPostfixInstance:
    def test_config_clean_and_no_daemon_errors(self, postfix):
        """`postfix check` has nothing to say about the test instance, and no Postfix daemon
        logged a fatal, panic or error line during this module."""
        assert postfix.check() == ""
        bad = [ln for ln in postfix.log_lines() if any(
            f"{kind}: " in ln for kind in ("fatal", "panic", "error"))]
        assert bad == []
