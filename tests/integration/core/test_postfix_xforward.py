"""A real Postfix with `lmtp_send_xforward_command = yes` delivers over LMTP: the
message's communication log names the original SMTP client and Postfix's queue ID,
the per-message log line carries queue_id=, and `deskgate log list --search` finds
the message by that queue ID."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
import structlog
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.store.tables import CommEntry, CommObject
from tests.peers import postfix as pfmod
from tests.peers.postfix import Postfix
from tests.peers.require import missing_peer

pytestmark = pytest.mark.postfix

SENDER = "customer@customer.test"


class XforwardPostfix(Postfix):
    """The test instance with XFORWARD on for its LMTP clients, as docs/mta.md advises."""

    __test__ = False

    def write_config(self) -> None:
        super().write_config()
        with (self.conf / "main.cf").open("a") as fh:
            fh.write("lmtp_send_xforward_command = yes\n")


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    """This module's Postfix: the core fixture's, with XFORWARD."""
    if not pfmod.available():
        missing_peer("Postfix binaries missing or not running as root")
    with pfmod.postfix_dir() as base:
        pf = XforwardPostfix(base, f"unix:{base / 'lmtp.sock'}")
        try:
            pf.start()
            yield pf
        finally:
            pf.stop()


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"A Customer <{SENDER}>"
    msg["To"] = "support@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@customer.test>"
    msg.set_content("Hello helpdesk.\n")
    return msg


class TestPostfixXforward:
    def test_client_and_queue_id_recorded(self, postfix, pf_gateway, store_of):
        """Mail submitted over SMTP from 127.0.0.1: the message's communication has a
        Client entry with 127.0.0.1 and a QueueID entry with the queue ID Postfix logged
        and wrote in its Received header; the delivered line has queue_id=."""
        rg = pf_gateway()
        since = postfix.log_offset()
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
                s.ehlo("client.customer.test")
                assert s.send_message(message("who sent this"), from_addr=SENDER,
                                      to_addrs=["support@example.org"]) == {}
            postfix.wait_queue_empty()
        [d] = [d for d in postfix.deliveries(since) if d["service"] == "deskgate/lmtp"]
        assert d["status"] == "sent"
        qid = d["queue_id"]
        [raw] = store_of(rg).article_raws()
        received = re.search(rb"\(Postfix\) with E?SMTP id (\w+)", raw)
        assert received is not None and received.group(1).decode() == qid

        with rg.gateway.engine.connect() as conn:
            rows = conn.execute(select(CommEntry.key, CommEntry.value, CommObject.type)
                                .join(CommObject, CommObject.id == CommEntry.object_id)
                                .where(CommEntry.key.in_(("Client", "QueueID")))).all()
        by_key = {k: (v, t) for k, v, t in rows}
        assert by_key["QueueID"] == (qid, "Message")
        client, obj = by_key["Client"]
        assert obj == "Message"
        assert "[127.0.0.1]" in client and "HELO client.customer.test" in client
        assert "ESMTP" in client

        [line] = [e for e in logs if e["event"] == "delivered"]
        assert line["queue_id"] == qid

        found = subprocess.run([sys.executable, "-m", "gateway", "-c",
                                str(rg.config.conf_dir), "log", "list", "--search", qid,
                                "--json"], capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        [comm] = json.loads(found.stdout)
        assert comm["account_type"] == "LMTP"

    def test_second_message_on_a_connection_has_its_own_queue_id(self, postfix, pf_gateway,
                                                                  store_of):
        """Two messages: each communication names its own Postfix queue ID, never the
        other's (the attributes are reset after each transaction)."""
        rg = pf_gateway()
        since = postfix.log_offset()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
            for subject in ("first one", "second one"):
                assert s.send_message(message(subject), from_addr=SENDER,
                                      to_addrs=["support@example.org"]) == {}
        postfix.wait_queue_empty()
        qids = sorted(d["queue_id"] for d in postfix.deliveries(since)
                      if d["service"] == "deskgate/lmtp" and d["status"] == "sent")
        assert len(qids) == 2 and qids[0] != qids[1]
        with rg.gateway.engine.connect() as conn:
            logged = sorted(v for (v,) in conn.execute(
                select(CommEntry.value).where(CommEntry.key == "QueueID")))
        assert logged == qids
