"""RT's outgoing mail through deskgate, configured as docs/helpdesk-rt.md says: RT pipes
to msmtp, msmtp submits to deskgate's submission listener, deskgate relays (here to
Postfix's smtp-sink). A customer's reply to that mail reaches the same RT ticket, and
with the documented scrip RT does not mail the customer's own text back."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import textwrap
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import load_config
from tests.conftest import free_port
from tests.integration.helpdesk.test_handoff_rt import message
from tests.integration.helpdesk.test_handoff_webhook import cli, deliver, handoffs, wait_for
from tests.peers.require import missing_peer
from tests.peers.rt import ROOT_PASSWORD, RtServer
from tests.peers.smarthost import SmtpSink

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

pytestmark = [pytest.mark.rt, pytest.mark.postgres, pytest.mark.postfix]

MSMTP = "/usr/bin/msmtp"
DOC = Path(__file__).resolve().parents[3] / "docs" / "helpdesk-rt.md"


def documented_initialdata() -> str:
    """The scrip replacement as docs/helpdesk-rt.md shows it (the block after its marker)."""
    text = DOC.read_text()
    m = re.search(r"<!-- rt-initialdata -->\s*```perl\n(.*?)```", text, re.DOTALL)
    assert m, "docs/helpdesk-rt.md lost its rt-initialdata block"
    return m.group(1)


def rt_mail_config(msmtprc: Path) -> str:
    """RT's site config for sending through msmtp, as documented; RT adds -t."""
    return textwrap.dedent(f"""
        Set($MailCommand, 'sendmailpipe');
        Set($SendmailPath, '{MSMTP}');
        Set($SendmailArguments, '-oi -C {msmtprc}');
        Set($CorrespondAddress, 'support@example.org');
        Set($CommentAddress, 'support@example.org');
        """)


def msmtp_config(submission_port: int) -> str:
    """msmtp to deskgate's submission listener; loopback needs no AUTH."""
    return textwrap.dedent(f"""
        defaults
        tls off
        auth off
        account deskgate
        host 127.0.0.1
        port {submission_port}
        from support@example.org
        account default : deskgate
        """)


class Setup:
    """deskgate, the RT that mails through it, and the smarthost deskgate relays to."""

    def __init__(self, rg: RunningGateway, rt: RtServer, sink: SmtpSink) -> None:
        self.rg, self.rt, self.sink = rg, rt, sink

    def relayed_to(self, rcpt: str) -> list[EmailMessage]:
        """Messages deskgate's relay handed to the smarthost for `rcpt`."""
        out = []
        for m in self.sink.messages():
            if rcpt in m.rcpts:
                parsed = email.message_from_bytes(m.data, policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                out.append(parsed)
        return out

    def all_relayed(self) -> bool:
        """deskgate queued something and relayed all of it."""
        out = cli(self.rg, "outqueue", "list", "--all", "--json")
        rows = json.loads(out.stdout)
        return bool(rows) and all(r["status"] == "sent" for r in rows)

    def agent_answers(self, ticket: int, text: str) -> None:
        """An RT agent (root) answers on the ticket over REST2, as the web UI would."""
        req = urllib.request.Request(  # noqa: S310 (loopback http)
            f"{self.rt.url}/REST/2.0/ticket/{ticket}/correspond", method="POST",
            data=json.dumps({"Content": text, "ContentType": "text/plain"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Basic "
                     + base64.b64encode(f"root:{ROOT_PASSWORD}".encode()).decode()})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            assert resp.status == 201


def body_text(m: EmailMessage) -> str:
    part = m.get_body(("plain", "html"))
    return part.get_content() if part is not None else ""


@pytest.fixture(scope="module")
def rt_with_documented_scrip(rt5: RtServer) -> RtServer:
    rt5.insert_initialdata(documented_initialdata())
    return rt5


@pytest.fixture
def rt_mail(rt_with_documented_scrip: RtServer, make_confdir: Callable[..., Path],
            tmp_path: Path, run_gateway: Callable[..., RunningGateway]) -> Iterator[Setup]:
    """deskgate (relay → smtp-sink, submission on loopback, hand-off to RT) and an RT
    that mails through deskgate's submission port with msmtp."""
    if not SmtpSink.available() or not Path(MSMTP).exists():
        missing_peer("msmtp or Postfix's smtp-sink not installed: run make system-deps")
    rt5 = rt_with_documented_scrip
    sub_port = free_port()
    rc = tmp_path / "msmtprc"
    rc.write_text(msmtp_config(sub_port))
    rc.chmod(0o600)
    rt = rt5.sibling(rt_mail_config(rc))
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        rt.start()
        conf = make_confdir({"50-helpdesk.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "rt-rest2"
            url = "{rt.url}"
            token_file = "secrets/rt.token"
            retry = "1s, 1s, 1s"
            poll_interval = "0.2s"

            [relay]
            host = "127.0.0.1"
            port = {sink.port}
            security = "none"
            retry = "1s, 1s"
            poll_interval = "200ms"
            timeout = "10s"

            [submission]
            listen = ["127.0.0.1:{sub_port}"]
            """)})
        secrets = conf.parent / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "rt.token").write_text(rt5.token + "\n")
        (secrets / "rt.token").chmod(0o600)
        yield Setup(run_gateway(load_config(conf)), rt, sink)
    finally:
        rt.stop()
        sink.stop()


class TestRtMailThroughDeskgate:
    """RT's auto-reply and agents' answers leave through deskgate; replies come back."""

    def test_rt_mail_goes_out_through_deskgate_and_the_reply_returns_to_the_ticket(
            self, rt_mail: Setup) -> None:
        """RT's auto-reply and an agent's answer reach the customer through deskgate's
        relay from the queue address with RT's tag; the customer's reply to the answer is
        added to the same RT ticket (no second ticket) and is not mailed back to them."""
        tag = uuid.uuid4().hex[:8]
        subject = f"Mail path {tag}"
        alice = "alice@customer.test"
        assert deliver(rt_mail.rg, message(f"m-{tag}", subject, "Hello RT.\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rt_mail.rg)] == ["delivered"],
                        60)
        [t] = rt_mail.rt.database.tickets(subject)

        assert wait_for(lambda: len(rt_mail.relayed_to(alice)) == 1, 60)
        [auto] = rt_mail.relayed_to(alice)
        assert str(auto["Subject"]) == f"[hd.test #{t.id}] AutoReply: {subject}"
        assert auto["From"].addresses[0].addr_spec == "support@example.org"

        rt_mail.agent_answers(t.id, f"We are on it ({tag}).")
        assert wait_for(lambda: len(rt_mail.relayed_to(alice)) == 2, 60)
        answer = rt_mail.relayed_to(alice)[1]
        assert str(answer["Subject"]) == f"[hd.test #{t.id}] {subject}", \
            [(str(m["Subject"]), str(m["Message-ID"])) for m in rt_mail.relayed_to(alice)]
        assert f"We are on it ({tag})." in body_text(answer)

        reply = message(f"r-{tag}", f"Re: {answer['Subject']}", f"Still broken ({tag}).\r\n",
                        f"In-Reply-To: {answer['Message-ID']}\r\n")
        assert deliver(rt_mail.rg, reply) == 250
        assert wait_for(lambda: len(handoffs(rt_mail.rg)) == 2 and all(
            h["status"] == "delivered" for h in handoffs(rt_mail.rg)), 60)
        assert rt_mail.rt.database.tickets(f"%{subject}") == rt_mail.rt.database.tickets(
            subject)                                # one RT ticket, no "Re: [hd.test #N]"
        txs = rt_mail.rt.database.transactions(t.id)
        assert [x.type for x in txs] == ["Create", "Correspond", "Correspond"]
        assert f"Still broken ({tag})." in txs[-1].content
        # deskgate keeps the conversation on one ticket too: RT's mails (joined by their
        # X-RT-Ticket header; the auto-reply RT sends while it creates the ticket, before
        # it answers the hand-off, is merged in then) and the customer's reply sit on the
        # ticket RT numbered, and there is no other ticket.
        shown = json.loads(cli(rt_mail.rg, "tickets", "show", str(t.id), "--json").stdout)
        assert shown["helpdesk"]["ticket_id"] == str(t.id)
        arts = [(a["direction"], a["subject"]) for a in shown["articles"]]
        assert arts[0] == ("incoming", subject) and arts[-1][0] == "incoming"
        assert ("outgoing", f"[hd.test #{t.id}] {subject}") in arts
        assert ("outgoing", f"[hd.test #{t.id}] AutoReply: {subject}") in arts
        listed = json.loads(cli(rt_mail.rg, "tickets", "list", "--json").stdout)
        assert [x["number"] for x in listed] == [str(t.id)]
        assert arts[-1] == ("incoming", f"Re: [hd.test #{t.id}] {subject}")

        # RT ran its scrips before it answered the hand-off; deskgate took any mail they
        # sent before answering RT. Once all of it is relayed, nothing echoed the reply.
        assert wait_for(rt_mail.all_relayed, 30)
        assert not [m for m in rt_mail.relayed_to(alice)
                    if f"Still broken ({tag})." in body_text(m)]
