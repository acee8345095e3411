"""The dashboard's ticket page: articles with attachment names and the crypto status."""

from __future__ import annotations

from sqlalchemy import select, update

from gateway.store.tables import Article, Ticket

MULTIPART = (b"From: Customer <cust@customer.test>\r\nTo: support@example.org\r\n"
             b"Subject: Invoice attached\r\nMessage-ID: <att1@customer.test>\r\n"
             b"MIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=BOUND\r\n\r\n"
             b"--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the invoice.\r\n"
             b"--BOUND\r\nContent-Type: application/pdf\r\n"
             b"Content-Disposition: attachment; filename=\"invoice <2026>.pdf\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n"
             b"--BOUND--\r\n")


class TestTicketPage:
    def test_attachments_and_crypto_status(self, dashboard):
        """Attachment file names (escaped), content types and sizes are listed; an article's
        stored crypto result shows as signed/valid with the signer, or as not decrypted."""
        d = dashboard()
        assert d.deliver(MULTIPART) == [250]
        with d.rg.gateway.engine.begin() as conn:
            number = conn.execute(select(Ticket.number)).scalar_one()
            conn.execute(update(Article).values(crypto={
                "encrypted": False, "decrypted": False, "signed": True,
                "signature_valid": True, "signer": "cust@customer.test", "method": "smime"}))
        status, _, body = d.get(f"/tickets/{number}")
        assert status == 200
        assert "invoice &lt;2026&gt;.pdf" in body and "application/pdf" in body
        assert "signed by cust@customer.test" in body and "signature valid" in body
        assert "See the invoice." in body
        with d.rg.gateway.engine.begin() as conn:
            conn.execute(update(Article).values(crypto={
                "encrypted": True, "decrypted": False, "signed": False,
                "error": "no private key for support@example.org"}))
        _, _, body = d.get(f"/tickets/{number}")
        assert "not decrypted" in body and "no private key for support@example.org" in body

    def test_customer_shown_once(self, dashboard):
        """The Customer row names the customer once (customer_no repeats the address)."""
        d = dashboard()
        assert d.deliver(MULTIPART) == [250]
        with d.rg.gateway.engine.begin() as conn:
            number, user, no = conn.execute(
                select(Ticket.number, Ticket.customer_user, Ticket.customer_no)).one()
        assert user == no == "cust@customer.test"
        _, _, body = d.get(f"/tickets/{number}")
        row = body.split("<th>Customer</th>", 1)[1].split("</tr>", 1)[0]
        assert row.count("cust@customer.test") == 1, row

    def test_classifier_decision_and_moves(self, dashboard):
        """The classifier's decision (queue, confidence, runner-up, priority) and the
        agents' moves are shown on the ticket page."""
        from gateway.cli import main as cli_main

        d = dashboard()
        assert d.deliver(MULTIPART) == [250]
        with d.rg.gateway.engine.begin() as conn:
            number = conn.execute(select(Ticket.number)).scalar_one()
            conn.execute(update(Ticket).values(classification={
                "queue": "Sales", "confidence": 0.81, "runner_up": "Support",
                "runner_up_confidence": 0.12, "priority": "4 high",
                "priority_confidence": 0.55, "applied_queue": True,
                "applied_priority": False}))
        assert cli_main(["-c", str(d.rg.config.conf_dir), "tickets", "move", number,
                         "Sales", "--by", "agent7"]) == 0
        _, _, body = d.get(f"/tickets/{number}")
        assert "Sales 0.81" in body and "runner-up Support 0.12" in body
        assert "priority 4 high 0.55 not applied" in body
        assert "by agent7: Support → Sales" in body
