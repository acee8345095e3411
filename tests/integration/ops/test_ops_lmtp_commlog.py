"""What the LMTP door writes to the communication log, seen through the log views."""

from __future__ import annotations

import dataclasses
import socket
import time

from sqlalchemy import func, select

from gateway import commlog_views as views
from gateway.store.tables import Article
from tests.integration.ops.ops_web import message
from tests.peers.lmtp import LmtpClient


def comms(rg, **kw):
    with rg.gateway.engine.connect() as conn:
        return [views.get_communication(conn, r["id"]) for r in
                views.list_communications(conn, views.LogFilter(sort="id", **kw))]


def of_type(got, type_):
    return [d for d in got if [o["type"] for o in d["objects"]] == [type_]]


def messages(rg, **kw):
    """The per-message communications (one Message object each)."""
    return of_type(comms(rg, **kw), "Message")


def connections(rg, count=1, timeout=10.0):
    """The per-connection communications, once `count` of them are written (they are
    queued when the connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        got = of_type(comms(rg), "Connection")
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def entries(d):
    (o,) = d["objects"]
    return [(e["priority"], e["key"], e["value"]) for e in o["entries"]]


class TestLmtpEntries:
    def test_one_successful_communication_per_message(self, config, run_gateway):
        """Each delivered message: an Incoming LMTP communication, Successful, with one
        Message object linked to its ticket and Envelope/Ticket entries."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for n in (1, 2):
            _, data = c.transaction(f"cust{n}@customer.test", ["support@example.org"],
                                    message(n))
            assert [d[0] for d in data] == [250]
        c.close()
        got = messages(rg)
        assert len(got) == 2
        for n, d in enumerate(got, 1):
            assert (d["direction"], d["account_type"], d["status"]) == \
                ("Incoming", "LMTP", "Successful")
            assert d["end"] is not None and d["end"] >= d["start"]
            (o,) = d["objects"]
            assert o["type"] == "Message" and o["status"] == "Successful"
            assert o["article_id"] and o["ticket_number"]
            keys = [e["key"] for e in o["entries"]]
            assert keys[0] == "Envelope" and "Ticket" in keys
            assert f"cust{n}@customer.test" in o["entries"][0]["value"]

    def test_duplicate_and_problems_are_logged(self, config, run_gateway):
        """A redelivery logs a Duplicate notice; a bad X-header queue (trusted LMTP) an Error
        that the priority filter finds, and that communication is a Warning, not Successful."""
        cfg = dataclasses.replace(config, lmtp=dataclasses.replace(config.lmtp, trusted=True))
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for msg in (message(1), message(1), message(2, extra="X-OTOBO-Queue: Nowhere\r\n")):
            _, data = c.transaction("a@customer.test", ["support@example.org"], msg)
            assert [d[0] for d in data] == [250]
        c.close()
        first, dup, bad = messages(rg)
        assert [e["key"] for e in dup["objects"][0]["entries"]].count("Duplicate") == 1
        assert dup["status"] == first["status"] == "Successful"
        assert bad["status"] == "Warning"
        assert [o["status"] for o in bad["objects"] if o["type"] == "Message"] == ["Warning"]
        assert [d["id"] for d in messages(rg, priority="Error")] == [bad["id"]]
        assert [d["id"] for d in messages(rg, priority="Notice")] == [dup["id"], bad["id"]]
        assert first["id"] not in [d["id"] for d in messages(rg, priority="Warn")]
        assert [d["id"] for d in messages(rg, search="nowhere")] == [bad["id"]]

    def test_unparseable_pipeline_failure_is_a_failed_message(self, config, run_gateway,
                                                              monkeypatch):
        """When a stage crashes the message goes to quarantine: its object is Failed with
        an Error entry, the communication Warning, and the MTA still gets 250."""

        def boom(ctx, rt):
            raise RuntimeError("stage exploded")

        rg = run_gateway(config)
        rg.gateway.pipeline.stages = rg.gateway.pipeline.stages.with_stage("prepare", "trust",
                                                                           boom)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("a@customer.test", ["support@example.org"], message(3))
        c.close()
        assert [d[0] for d in data] == [250]
        (d,) = messages(rg)
        assert d["status"] == "Warning"
        (o,) = d["objects"]
        assert o["status"] == "Failed"
        assert any(e["priority"] == "Error" and "quarantine" in e["value"]
                   for e in o["entries"])


class TestLmtpConnections:
    def test_clean_session_is_one_successful_connection(self, config, run_gateway):
        """A session delivering two messages: one Connection communication, Successful,
        with the peer, the LHLO name and a summary of 2 stored; the two Message
        communications stay as they were."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo("mta.client.test")
        for n in (1, 2):
            _, data = c.transaction(f"cust{n}@customer.test", ["support@example.org"],
                                    message(n))
            assert [d[0] for d in data] == [250]
        c.close()
        (d,) = connections(rg)
        assert (d["direction"], d["account_type"], d["status"]) == \
            ("Incoming", "LMTP", "Successful")
        assert d["end"] is not None and d["end"] >= d["start"]
        msgs = messages(rg)
        assert len(msgs) == 2 and {m["account"] for m in msgs} == {d["account"]}
        assert all(m["status"] == "Successful" for m in msgs)
        got = entries(d)
        assert got[0] == ("Info", "Connection", f"from {d['account']}")
        assert ("Info", "LHLO", "mta.client.test") in got
        assert got[-1] == ("Info", "Summary", "2 message(s): 2 stored, 0 duplicate, "
                           "0 temporary failure; 0 recipient(s) refused")
        assert {p for p, _, _ in got} == {"Info"}

    def test_refused_recipient_is_a_notice_and_a_warning(self, config, run_gateway):
        """An unknown recipient next to a valid one: the connection is Warning, with a
        Notice naming the address and the 550 5.1.1 sent; the message is stored."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        rcpt, data = c.transaction("a@customer.test",
                                   ["nobody@example.org", "support@example.org"], message(1))
        assert [r[0] for r in rcpt] == [550, 250] and [d[0] for d in data] == [250]
        c.close()
        (d,) = connections(rg)
        assert d["status"] == "Warning"
        notices = [(k, v) for p, k, v in entries(d) if p == "Notice"]
        assert notices == [("RCPT", "<nobody@example.org> refused: "
                                    "550 5.1.1 no such system address")]
        assert entries(d)[-1][2] == ("1 message(s): 1 stored, 0 duplicate, "
                                     "0 temporary failure; 1 recipient(s) refused")
        assert d["id"] in [x["id"] for x in comms(rg, priority="Notice")]
        assert len(messages(rg)) == 1

    def test_connection_lost_in_data_is_failed(self, config, run_gateway):
        """A client that closes the socket in the middle of DATA: the connection is
        Failed with an Error entry, and nothing is stored."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<a@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.sock.sendall(b"Subject: cut short\r\n\r\nhalf a bo")
        c.sock.shutdown(socket.SHUT_RDWR)
        c.sock.close()
        (d,) = connections(rg)
        assert d["status"] == "Failed"
        errors = [v for p, _, v in entries(d) if p == "Error"]
        assert len(errors) == 1
        assert "connection lost during DATA" in errors[0] and "<a@customer.test>" in errors[0]
        assert messages(rg) == []
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Article)).scalar_one() == 0

    def test_timeout_with_open_transaction_is_failed(self, config, run_gateway):
        """A client that goes quiet after RCPT is timed out: Failed, with an Error saying
        so."""
        cfg = dataclasses.replace(config, lmtp=dataclasses.replace(config.lmtp, timeout=0.3))
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<a@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
        (d,) = connections(rg)
        c.close()
        assert d["status"] == "Failed"
        errors = [v for p, _, v in entries(d) if p == "Error"]
        assert len(errors) == 1 and errors[0].startswith("timed out before DATA")

    def test_sequence_and_unknown_commands_are_notices(self, config, run_gateway):
        """RCPT before MAIL (503) and a command aiosmtpd does not know (500) are each a
        Notice with the reply sent; the connection ends Warning without an Error."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 503
        assert c.cmd("FROB")[0] == 500
        c.close()
        (d,) = connections(rg)
        assert d["status"] == "Warning"
        notices = [(k, v) for p, k, v in entries(d) if p == "Notice"]
        assert notices == [
            ("RCPT", "RCPT TO:<support@example.org> refused: 503 5.5.1 Need MAIL command"),
            ("Reply", '500 5.5.1 Error: command "FROB" not recognized')]
        assert entries(d)[-1][2] == ("0 message(s): 0 stored, 0 duplicate, "
                                     "0 temporary failure; 1 recipient(s) refused")


class TestLmtpRefusalCap:
    def test_300_refused_recipients_log_100_and_one_more(self, config, run_gateway):
        """A connection refusing 300 recipients logs the first 100 as Notices and one
        Notice for the 200 left out; the summary still counts all 300, and a message
        after them is stored as usual."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<probe@customer.test>")[0] == 250
        for n in range(300):
            assert c.cmd(f"RCPT TO:<nobody{n}@example.org>")[0] == 550
        assert c.cmd("RSET")[0] == 250
        _, data = c.transaction("a@customer.test", ["support@example.org"], message(1))
        assert [d[0] for d in data] == [250]
        c.close()
        (d,) = connections(rg)
        assert d["status"] == "Warning"
        notices = [(k, v) for p, k, v in entries(d) if p == "Notice"]
        assert len(notices) == 101
        assert notices[:100] == [("RCPT", f"<nobody{n}@example.org> refused: "
                                          "550 5.1.1 no such system address")
                                 for n in range(100)]
        assert notices[100] == ("Refused", "200 more refused recipients not logged")
        assert entries(d)[-1] == ("Info", "Summary", "1 message(s): 1 stored, 0 duplicate, "
                                  "0 temporary failure; 300 recipient(s) refused")
        assert len(entries(d)) <= 106
        assert len(messages(rg)) == 1

    def test_other_refused_commands_count_towards_the_cap(self, config, run_gateway):
        """Refused commands of any kind share the cap; the Notice for those left out
        names how many of each."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for _ in range(99):
            assert c.cmd("RCPT TO:<support@example.org>")[0] == 503
        for _ in range(3):
            assert c.cmd("FROB")[0] == 500
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 503
        c.close()
        (d,) = connections(rg)
        notices = [(k, v) for p, k, v in entries(d) if p == "Notice"]
        assert [k for k, _ in notices] == ["RCPT"] * 99 + ["Reply", "Refused"]
        assert notices[-1][1] == "3 more refused commands not logged (2 Reply, 1 RCPT)"
        assert entries(d)[-1][2] == ("0 message(s): 0 stored, 0 duplicate, "
                                     "0 temporary failure; 100 recipient(s) refused")
