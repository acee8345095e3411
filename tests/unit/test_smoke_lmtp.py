"""Smoke test of the LMTP door through the shared fixtures."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.store.tables import Article, Ticket
from tests.peers.lmtp import LmtpClient

MSG = (b"From: a@customer.test\r\nTo: support@example.org\r\nSubject: s\r\n"
       b"Message-ID: <1@c>\r\n\r\nhi\r\n")


class TestLmtpSmoke:
    def test_per_recipient_replies_and_ticket(self, config, run_gateway):
        """Two valid and one unknown recipient: 250/550 at RCPT, two 250s after DATA, one ticket."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        code, text = c.lhlo()
        assert code == 250 and "PIPELINING" in text and "ENHANCEDSTATUSCODES" in text
        rcpt, data = c.transaction("a@customer.test",
                                   ["support@example.org", "nobody@example.org",
                                    "sales@example.org"], MSG)
        c.close()
        assert [r[0] for r in rcpt] == [250, 550, 250]
        assert rcpt[1][1].startswith("5.1.1")
        assert [d[0] for d in data] == [250, 250]
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Ticket)).scalar() == 1
            assert conn.execute(select(Ticket.queue)).scalar() == "Support"
            assert conn.execute(select(func.count()).select_from(Article)).scalar() == 1
