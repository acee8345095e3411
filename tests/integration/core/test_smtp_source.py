"""Postfix's load generator `smtp-source -L` against the listener: it finishes
(no hang) and every message it sent is a ticket."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gateway.store.tables import Delivery
from tests.peers.require import missing_peer

pytestmark = pytest.mark.postfix

DEFAULT_QUEUE = {"40-unknown.toml": '[lmtp]\nunknown_recipient = "default-queue"\n'}
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def smtp_source(target: str, *args: str) -> None:
    if not shutil.which(SMTP_SOURCE):
        missing_peer("smtp-source (postfix) not installed")
    proc = subprocess.run([SMTP_SOURCE, "-L", *args, target], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


class TestSmtpSource:
    def test_unix_socket_reused_connections(self, gateway, store_of):
        """-r 3 -d -s 20 over the unix socket: 300 messages, 300 tickets, 3 recipients each."""
        rg = gateway(DEFAULT_QUEUE)
        smtp_source(f"unix:{rg.socket_path}", "-r", "3", "-d", "-s", "20", "-m", "300",
                    "-l", "2000", "-f", "customer@customer.test", "-t", "support@example.org")
        st = store_of(rg)
        tickets = st.tickets()
        assert len(tickets) == 300
        assert {t.queue for t in tickets} == {"Support"}
        assert len({a.message_id for a in st.articles()}) == 300
        assert st.count(Delivery) == 900

    def test_tcp_new_connection_per_message(self, gateway, store_of):
        """-r 3 over TCP, a new connection per message: every message becomes a ticket."""
        rg = gateway(DEFAULT_QUEUE)
        smtp_source(f"127.0.0.1:{rg.port}", "-r", "3", "-s", "5", "-m", "40", "-l", "5000",
                    "-f", "customer@customer.test", "-t", "support@example.org")
        st = store_of(rg)
        assert len(st.tickets()) == 40
        assert st.count(Delivery) == 120

    def test_prefixed_system_addresses(self, gateway, store_of):
        """With 2support@/3support@ as system addresses (no default queue) every message is a
        ticket in the queue of the first RCPT smtp-source sends (3support@ → Sales)."""
        rg = gateway({"40-prefixed.toml": """
            [[address]]
            email = "2support@example.org"
            queue = "Support"

            [[address]]
            email = "3support@example.org"
            queue = "Sales"
            """})
        smtp_source(f"unix:{rg.socket_path}", "-r", "3", "-d", "-s", "2", "-m", "10",
                    "-f", "customer@customer.test", "-t", "support@example.org")
        st = store_of(rg)
        assert [t.queue for t in st.tickets()] == ["Sales"] * 10
        assert {d.recipient for d in st.deliveries()} == {
            "support@example.org", "2support@example.org", "3support@example.org"}
