"""RFC 2033 behaviour of the LMTP listener."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import func, select

from gateway.store.tables import Article, Ticket
from tests.peers.lmtp import LmtpClient

MSG = b"From: a@c.test\r\nTo: support@example.org\r\nSubject: s\r\nMessage-ID: <%d@c>\r\n\r\nhi\r\n"


@pytest.fixture
def rg(config, run_gateway):
    return run_gateway(config)


@pytest.fixture
def client(rg):
    c = LmtpClient(rg.socket_path)
    assert c.lhlo()[0] == 250
    yield c
    c.close()


def tickets(rg) -> int:
    with rg.gateway.engine.connect() as c:
        return c.execute(select(func.count()).select_from(Ticket)).scalar()


class TestGreeting:
    def test_lhlo_extensions(self, rg):
        """LHLO advertises PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME and SIZE."""
        c = LmtpClient(rg.socket_path)
        assert c.greeting[0] == 220
        code, text = c.lhlo()
        c.close()
        assert code == 250
        for ext in ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", f"SIZE {1024 * 1024}"):
            assert ext in text.splitlines()

    def test_helo_and_ehlo_are_refused(self, rg):
        """HELO/EHLO are not LMTP commands."""
        c = LmtpClient(rg.socket_path)
        assert c.cmd("EHLO x")[0] == 500
        assert c.cmd("HELO x")[0] == 500
        c.close()

    def test_mail_before_lhlo(self, rg):
        """MAIL before LHLO is a bad sequence."""
        c = LmtpClient(rg.socket_path)
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 503
        c.close()

    def test_tcp_listener(self, rg):
        """The TCP listener speaks the same protocol."""
        c = LmtpClient(("127.0.0.1", rg.port))
        assert c.lhlo()[0] == 250
        _, data = c.transaction("a@c.test", ["support@example.org"], MSG % 1)
        c.close()
        assert data[0][0] == 250


class TestRecipients:
    def test_validity_maps_to_codes(self, client):
        """valid 250, invalid-temporarily 450 4.2.1, invalid 550 5.2.1, unknown 550 5.1.1."""
        rcpt, data = client.transaction(
            "a@c.test", ["support@example.org", "paused@example.org", "old@example.org",
                         "ghost@example.org"], MSG % 2)
        assert [(c, t[:5]) for c, t in rcpt] == [(250, "2.1.5"), (450, "4.2.1"),
                                                (550, "5.2.1"), (550, "5.1.1")]
        assert len(data) == 1 and data[0][0] == 250

    def test_one_reply_per_recipient_in_order(self, rg, client):
        """Three accepted recipients → three replies after DATA; one ticket."""
        _, data = client.transaction(
            "a@c.test", ["support@example.org", "sales@example.org", "helpdesk@example.org"],
            MSG % 3)
        assert [c for c, _ in data] == [250, 250, 250]
        assert tickets(rg) == 1

    def test_null_sender_is_accepted(self, rg, client):
        """Bounces come from <>; the sender is accepted."""
        _, data = client.transaction("", ["support@example.org"], MSG % 4)
        assert data[0][0] == 250

    def test_unknown_recipient_to_default_queue(self, make_confdir, run_gateway):
        """unknown_recipient = default-queue accepts and routes to the default queue."""
        from gateway.config import load_config
        conf = make_confdir({"50.toml": "[lmtp]\nunknown_recipient = 'default-queue'\n"})
        cfg = load_config(conf)
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        rcpt, data = c.transaction("a@c.test", ["whoever@example.org"],
                                   (MSG % 5).replace(b"To: support@", b"To: whoever@"))
        c.close()
        assert rcpt[0][0] == 250 and data[0][0] == 250
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.queue)).scalar() == "Raw"


class TestPostmaster:
    def test_bare_postmaster_lands_in_the_default_queue(self, rg, client):
        """With unknown_recipient = "reject", RCPT TO:<Postmaster> is still accepted and,
        with no system address in To/Cc, becomes a ticket in postmaster.default_queue."""
        msg = (MSG % 10).replace(b"To: support@example.org", b"To: postmaster")
        rcpt, data = client.transaction("a@c.test", ["Postmaster"], msg)
        assert rcpt[0] == (250, "2.1.5 recipient OK") and data[0][0] == 250
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.queue)).scalar() == "Raw"

    def test_postmaster_system_address_routes(self, make_confdir, run_gateway):
        """A system address postmaster@<gateway.hostname> takes the bare postmaster to its
        queue."""
        from gateway.config import load_config
        conf = make_confdir({"50.toml": "[[address]]\nemail = 'postmaster@helpdesk.test'\n"
                                        "queue = 'Sales'\n"})
        rg = run_gateway(load_config(conf))
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        rcpt, data = c.transaction("a@c.test", ["postmaster"], MSG % 11)
        c.close()
        assert rcpt[0][0] == 250 and data[0][0] == 250
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.queue)).scalar() == "Sales"

    def test_quoted_postmaster_routes_as_the_postmaster(self, make_confdir, run_gateway):
        """<"postmaster"> and <"PostMaster"@hostname> are the postmaster too (RFC 5321
        4.1.2): the system address postmaster@<gateway.hostname> takes them to its queue."""
        from gateway.config import load_config
        conf = make_confdir({"50.toml": "[[address]]\nemail = 'postmaster@helpdesk.test'\n"
                                        "queue = 'Sales'\n"})
        rg = run_gateway(load_config(conf))
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        replies = [c.transaction("a@c.test", [rcpt], MSG % n)
                   for n, rcpt in ((12, '"postmaster"'), (13, '"PostMaster"@helpdesk.test'))]
        c.close()
        assert [(r[0][0], d[0][0]) for r, d in replies] == [(250, 250), (250, 250)]
        with rg.gateway.engine.connect() as conn:
            assert list(conn.execute(select(Ticket.queue)).scalars()) == ["Sales", "Sales"]


class TestQuotedLocalPart:
    def test_needless_quotes_name_the_system_address(self, rg, client):
        """RCPT TO:<"sales"@example.org> is sales@example.org: accepted and routed to its
        queue; a quoted unknown address stays unknown."""
        msg = (MSG % 14).replace(b"To: support@", b"To: \"sales\"@")
        rcpt, data = client.transaction("a@c.test", ['"sales"@example.org',
                                                     '"ghost"@example.org'], msg)
        assert [(c, t[:5]) for c, t in rcpt] == [(250, "2.1.5"), (550, "5.1.1")]
        assert [c for c, _ in data] == [250]
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.queue)).scalar() == "Sales"


class TestData:
    def test_size_limit_after_data(self, rg, client):
        """Over max_message_size: 552 5.3.4 for each recipient, nothing stored."""
        big = MSG % 6 + b"x" * 1100 * 1024 + b"\r\n"
        _, data = client.transaction("a@c.test", ["support@example.org", "sales@example.org"],
                                     big)
        assert [(c, t[:5]) for c, t in data] == [(552, "5.3.4"), (552, "5.3.4")]
        assert tickets(rg) == 0
        # the session is still usable afterwards
        _, data = client.transaction("a@c.test", ["support@example.org"], MSG % 7)
        assert data[0][0] == 250

    def test_size_declared_at_mail(self, client):
        """MAIL FROM with SIZE= over the limit is refused up front."""
        code, text = client.cmd(f"MAIL FROM:<a@c.test> SIZE={2 * 1024 * 1024}")
        assert code == 552 and text.startswith("5.3.4")

    def test_long_lines_and_dot_stuffing(self, rg, client):
        """Lines over 1000 bytes are accepted; leading dots are unstuffed."""
        body = b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.leading dot\r\n..two\r\n"
        _, data = client.transaction("a@c.test", ["support@example.org"], body)
        assert data[0][0] == 250
        with rg.gateway.engine.connect() as c:
            text = c.execute(select(Article.body)).scalar()
        assert "y" * 5000 in text and "\n.leading dot\n..two" in text

    def test_pipelined_commands_after_final_dot(self, rg, client):
        """Commands sent in the same packet as the end of data are answered in order."""
        client.send(b"MAIL FROM:<a@c.test>\r\nRCPT TO:<support@example.org>\r\nDATA")
        assert client.reply()[0] == 250 and client.reply()[0] == 250
        assert client.reply()[0] == 354
        client.sock.sendall((MSG % 8) + b".\r\nMAIL FROM:<b@c.test>\r\n"
                            b"RCPT TO:<sales@example.org>\r\nRSET\r\nNOOP\r\n")
        assert client.reply()[0] == 250      # the message
        assert client.reply()[0] == 250      # MAIL
        assert client.reply()[0] == 250      # RCPT
        assert client.reply()[0] == 250      # RSET
        assert client.reply()[0] == 250      # NOOP
        assert tickets(rg) == 1

    def test_data_without_recipients(self, client):
        """DATA with no accepted recipient is a bad sequence."""
        client.cmd("MAIL FROM:<a@c.test>")
        client.cmd("RCPT TO:<ghost@example.org>")
        assert client.cmd("DATA")[0] == 503

    def test_empty_message(self, rg, client):
        """An empty body ('.' right after 354) is still answered and stored."""
        client.cmd("MAIL FROM:<a@c.test>")
        client.cmd("RCPT TO:<support@example.org>")
        assert client.cmd("DATA")[0] == 354
        client.sock.sendall(b".\r\n")
        assert client.reply()[0] == 250
        assert tickets(rg) == 1
        with rg.gateway.engine.connect() as c:
            (title,) = c.execute(select(Ticket.title)).one()
            (body,) = c.execute(select(Article.body)).one()
        assert title == "(no subject)" and body == ""

    def test_disconnect_in_data_stores_nothing(self, rg):
        """A connection lost in the middle of DATA stores nothing and hurts nobody."""
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        c.cmd("MAIL FROM:<a@c.test>")
        c.cmd("RCPT TO:<support@example.org>")
        c.cmd("DATA")
        c.sock.sendall(b"Subject: half\r\n\r\npartial")
        c.sock.shutdown(socket.SHUT_RDWR)
        c.sock.close()
        c2 = LmtpClient(rg.socket_path)
        c2.lhlo()
        _, data = c2.transaction("a@c.test", ["support@example.org"], MSG % 9)
        c2.close()
        assert data[0][0] == 250 and tickets(rg) == 1
