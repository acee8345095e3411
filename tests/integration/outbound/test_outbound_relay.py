"""Submission → queue → smarthost, end to end through a running gateway."""

from __future__ import annotations

import smtplib

from sqlalchemy import select

from gateway.store.tables import (
    Article,
    CommEntry,
    CommObject,
    Communication,
    OutboundMessage,
    Ticket,
)
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers.smarthost import AuthSink

MSG = (b"From: Agent Smith <agent@internal.test>\r\nTo: Customer <cust@customer.test>\r\n"
       b"Subject: Your order\r\nX-Deskgate-Queue: Sales\r\nBcc: hidden@internal.test\r\n"
       b"\r\nHello,\r\nyour order shipped.\r\n")


class TestSubmissionToRelay:
    def test_allowed_network_message_is_rewritten_stored_and_delivered(
            self, tmp_path, outbound_config, run_gateway):
        """A client in allow_networks submits; the relay gets the rewritten message once."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                refused = s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            assert refused == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="sent")
            got = sink.received
            assert len(got) == 1
            assert got[0].mail_from == "sales@example.org"
            assert got[0].rcpts == ["cust@customer.test"]
            data = got[0].data
            assert b"From: sales@example.org" in data
            assert b"X-Deskgate-Queue" not in data and b"hidden@internal.test" not in data
            assert b"Subject: [Ticket#" in data and b"Message-ID: <" in data
            with rg.gateway.engine.connect() as conn:
                art = conn.execute(select(Article)).one()
                t = conn.execute(select(Ticket)).one()
                comms = conn.execute(select(Communication.account_type, Communication.status)
                                     .where(Communication.direction == "Outgoing")).all()
                objs = conn.execute(select(CommObject.type)).scalars().all()
            assert art.direction == "outgoing" and art.sender_type == "agent"
            assert art.transmission_status == "sent"
            assert t.queue == "Sales" and f"[Ticket#{t.number}]" in art.subject
            assert ("SMTP", "Successful") in comms and len(comms) >= 2
            assert "Connection" in objs and "Message" in objs
            with rg.gateway.engine.connect() as conn:
                m = conn.execute(select(OutboundMessage)).one()
            assert m.attempts == 1


class TestReload:
    def test_reload_switches_the_relay(self, outbound_config, run_gateway):
        """After a reload with a new [relay] port, queued mail goes to the new smarthost."""
        with AuthSink() as old, AuthSink() as new:
            cfg = outbound_config(old.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="first delivery")
            conf = cfg.conf_dir / "40-outbound.toml"
            conf.write_text(conf.read_text().replace(f"port = {old.port}",
                                                     f"port = {new.port}"))
            assert rg.call(rg.gateway.reload())
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                     what="second delivery")
            assert len(old.received) == 1 and len(new.received) == 1
            with rg.gateway.engine.connect() as conn:
                clients = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "Client")).scalars().all()
            assert clients and "no AUTH, client in allow_networks" in clients[0]
