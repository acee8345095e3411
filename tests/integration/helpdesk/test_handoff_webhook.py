"""Hand-off to a webhook: durable outbox, signature, retries, order per ticket, operator CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.helpdesk import outbox
from tests.peers.lmtp import LmtpClient
from tests.peers.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.conftest import RunningGateway


def msg(n: str, subject: str = "printer", extra: str = "") -> bytes:
    return (f"From: Alice <alice@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{n}@customer.test>\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nIt is broken ({n}).\r\n").encode()


def deliver(rg: RunningGateway, data: bytes, rcpt: str = "support@example.org") -> int:
    c = LmtpClient(rg.socket_path)
    c.lhlo()
    _, replies = c.transaction("alice@customer.test", [rcpt], data)
    c.close()
    return replies[0][0]


def handoffs(rg: RunningGateway, status: str = "all") -> list[dict[str, Any]]:
    with rg.gateway.engine.connect() as conn:
        return outbox.list_handoffs(conn, status=status)


def cli(rg: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(rg.config.conf_dir),
                           *args], capture_output=True, text=True, timeout=60)


def poke(rg: RunningGateway) -> None:
    """Wake the hand-off worker (as an LMTP commit or SIGUSR1 does)."""
    next(s for s in rg.gateway.services if s.name == "helpdesk-handoff").poke()  # type: ignore[attr-defined]


def wait_for(pred: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class TestWebhookHandoff:
    def test_new_message_reaches_the_receiver_signed(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """A message over LMTP is POSTed once, signed, with the mapped queue and the body."""
        rg = webhook_gateway()
        assert deliver(rg, msg("w1")) == 250
        docs = receiver.wait_delivered(1)
        assert len(docs) == 1
        r = receiver.received[0]
        assert r.signature_ok and r.headers["Idempotency-Key"] == docs[0]["idempotency_key"]
        d = docs[0]
        assert d["event"] == "ticket.created"
        assert d["ticket"]["queue"] == "Support::L1"
        assert d["decisions"]["Queue"] == "Support"
        assert "It is broken (w1)." in d["article"]["body"]
        assert d["article"]["message_id"] == "<w1@customer.test>"
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        h = handoffs(rg)[0]
        assert h["helpdesk_ticket_id"] == receiver.tickets[d["idempotency_key"]]
        assert h["ticket"] == receiver.number(h["helpdesk_ticket_id"])   # the helpdesk's number

    def test_no_ticket_number_of_its_own(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """With a helpdesk deskgate allocates no number; the ticket takes the helpdesk's."""
        rg = webhook_gateway()
        receiver.stop()
        assert deliver(rg, msg("n1")) == 250
        assert handoffs(rg)[0]["ticket"] == ""
        receiver.start()
        poke(rg)
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered", 30)
        out = cli(rg, "tickets", "show", handoffs(rg)[0]["ticket"], "--json")
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["helpdesk"]["state"] == "delivered"
        assert shown["helpdesk"]["type"] == "webhook"
        assert shown["helpdesk"]["ticket_id"] == handoffs(rg)[0]["helpdesk_ticket_id"]
        assert shown["helpdesk"]["url"].startswith("https://hd.example/ticket/")

    def test_attachment_names_are_safe_for_the_helpdesk_and_kept_in_deskgate(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """The helpdesk gets `x` for an attachment named ../../etc/x; deskgate's ticket
        keeps the name the customer sent."""
        rg = webhook_gateway()
        data = (b"From: Alice <alice@customer.test>\r\nTo: support@example.org\r\n"
                b"Subject: files\r\nMessage-ID: <f1@customer.test>\r\nMIME-Version: 1.0\r\n"
                b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b'Content-Disposition: attachment; filename="../../etc/x"\r\n'
                b"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--b--\r\n")
        assert deliver(rg, data) == 250
        doc = receiver.wait_delivered(1)[0]
        assert [a["filename"] for a in doc["attachments"]] == ["x"]
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        out = cli(rg, "tickets", "show", handoffs(rg)[0]["ticket"], "--json")
        assert out.returncode == 0, out.stderr
        stored = json.loads(out.stdout)["articles"][0]["attachments"]
        assert [a["filename"] for a in stored] == ["../../etc/x"]

    def test_untrusted_x_headers_do_not_reach_the_helpdesk(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """The sender's X-OTOBO-Queue is stripped; a filter's decision is passed on."""
        rg = webhook_gateway(policies={"10.toml": """
            [[filter]]
            name = "010-urgent"
            match = [{ header = "Subject", value = "urgent" }]
            [filter.set]
            "X-Deskgate-Priority" = "5 very high"
            "X-Deskgate-DynamicField-Origin" = "mail"
            """})
        data = msg("u1", "urgent printer",
                   "X-OTOBO-Queue: Junk\r\nX-OTOBO-Priority: 1 very low\r\n")
        assert deliver(rg, data) == 250
        d = receiver.wait_delivered(1)[0]
        assert d["decisions"]["Queue"] == "Support"
        assert d["decisions"]["Priority"] == "5 very high"
        assert d["decisions"]["DynamicField-Origin"] == "mail"
        assert "Junk" not in json.dumps(d["decisions"])

    def test_retries_on_500_then_delivers_once(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """Two 500s are retried on the schedule with the same idempotency key; one 2xx."""
        rg = webhook_gateway()
        receiver.fail_next = 2
        assert deliver(rg, msg("r1")) == 250
        docs = receiver.wait_delivered(1, 30)
        assert len(docs) == 1
        assert [r.status for r in receiver.received] == [500, 500, 200]
        assert len({r.headers["Idempotency-Key"] for r in receiver.received}) == 1
        assert [r.doc["attempt"] for r in receiver.received] == [1, 2, 3]
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        log = cli(rg, "log", "list", "--json")
        comms = [c for c in json.loads(log.stdout) if c["account_type"] == "Handoff"]
        assert sorted(c["status"] for c in comms) == ["Failed", "Failed", "Successful"]

    def test_down_helpdesk_keeps_lmtp_answering_and_catches_up_in_order(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """While the receiver is down every message gets 250; afterwards all arrive once,
        each follow-up after the creation of its ticket."""
        rg = webhook_gateway(retry="1s*20")
        receiver.stop()
        for i in range(4):
            assert deliver(rg, msg(f"d{i}", f"case {i}")) == 250
            assert deliver(rg, msg(f"d{i}-re", f"Re: case {i}",
                                   f"In-Reply-To: <d{i}@customer.test>\r\n")) == 250
        pending = handoffs(rg)
        assert len(pending) == 8 and {h["status"] for h in pending} == {"pending"}
        receiver.start()
        docs = receiver.wait_delivered(8, 40)
        assert len(docs) == 8
        keys = [d["idempotency_key"] for d in docs]
        assert len(set(keys)) == 8                      # none twice
        for i in range(4):
            pos = {d["article"]["message_id"]: n for n, d in enumerate(docs)}
            assert pos[f"<d{i}@customer.test>"] < pos[f"<d{i}-re@customer.test>"]
            follow = docs[pos[f"<d{i}-re@customer.test>"]]
            assert follow["event"] == "article.created"
            create = docs[pos[f"<d{i}@customer.test>"]]
            assert follow["ticket"]["helpdesk_ticket_id"] == \
                receiver.tickets[create["idempotency_key"]]

    def test_failed_handoff_is_retried_by_hand(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """After the schedule a row is failed (Error in the log); `handoff retry` sends it."""
        rg = webhook_gateway(retry="0.2s")
        receiver.fail_next = 100
        assert deliver(rg, msg("f1")) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "failed")
        hid = handoffs(rg)[0]["id"]
        shown = json.loads(cli(rg, "handoff", "show", str(hid), "--json").stdout)
        assert shown["status"] == "failed" and "HTTP 500" in shown["last_error"]
        listed = json.loads(cli(rg, "handoff", "list", "--json").stdout)
        assert [h["id"] for h in listed] == [hid]
        receiver.fail_next = 0
        out = cli(rg, "handoff", "retry", str(hid))
        assert out.returncode == 0, out.stderr
        poke(rg)
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        assert len(receiver.delivered()) == 1


def send(rg: RunningGateway, data: bytes, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(rg.config.conf_dir),
                          "send", "--json", *args], input=data, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def queued_headers(rg: RunningGateway, oid: int) -> str:
    return str(json.loads(cli(rg, "outqueue", "show", str(oid), "--json").stdout)["headers"])


class TestHelpdeskReplies:
    def test_reply_keeps_the_helpdesk_number_and_joins_the_ticket(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """The helpdesk's reply keeps its Subject and lands on the ticket it numbered."""
        rg = webhook_gateway()
        assert deliver(rg, msg("h1")) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        number = handoffs(rg)[0]["ticket"]
        reply = (f"From: agent@example.org\r\nTo: alice@customer.test\r\n"
                 f"Subject: Re: [Ticket#{number}] printer\r\n"
                 f"In-Reply-To: <h1@customer.test>\r\n\r\nFixed.\r\n").encode()
        res = send(rg, reply, "--queue", "Support")
        assert res["ticket"] == number
        head = queued_headers(rg, res["ids"][0])
        assert f"Subject: Re: [Ticket#{number}] printer" in head
        assert head.count("Ticket#") == 1
        shown = json.loads(cli(rg, "tickets", "show", number, "--json").stdout)
        assert [a["direction"] for a in shown["articles"]] == ["incoming", "outgoing"]

    def test_no_number_is_allocated_for_outgoing_mail(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """A new outgoing message without a helpdesk number gets none; one with a number
        the gateway never saw starts a ticket under the helpdesk's number."""
        rg = webhook_gateway()
        plain = (b"From: agent@example.org\r\nTo: bob@customer.test\r\n"
                 b"Subject: hello\r\n\r\nHi.\r\n")
        res = send(rg, plain, "--queue", "Support")
        assert res["ticket"] in ("", None)
        assert "Subject: hello\r\n" in queued_headers(rg, res["ids"][0]) + "\r\n"
        numbered = (b"From: agent@example.org\r\nTo: bob@customer.test\r\n"
                    b"Subject: [Ticket#202612039999999] started in the helpdesk\r\n\r\nHi.\r\n")
        res = send(rg, numbered, "--queue", "Support")
        assert res["ticket"] == "202612039999999"
        shown = json.loads(cli(rg, "tickets", "show", "202612039999999", "--json").stdout)
        assert shown["articles"][0]["direction"] == "outgoing"

    def test_reply_gives_a_numberless_ticket_the_helpdesk_number(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """When the hand-off could not tell the number (a pipe), the helpdesk's first reply
        does: the ticket found by In-Reply-To adopts the number in its Subject."""
        rg = webhook_gateway()
        receiver.tell_number = False
        assert deliver(rg, msg("p1")) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        assert handoffs(rg)[0]["ticket"] == ""
        reply = (b"From: agent@example.org\r\nTo: alice@customer.test\r\n"
                 b"Subject: Re: [Ticket#202612030004242] printer\r\n"
                 b"In-Reply-To: <p1@customer.test>\r\n\r\nOn it.\r\n")
        send(rg, reply, "--queue", "Support")
        shown = json.loads(cli(rg, "tickets", "show", "202612030004242", "--json").stdout)
        assert shown["articles"][0]["message_id"] == "<p1@customer.test>"
        assert shown["helpdesk"]["ticket_number"] == "202612030004242"


class TestHandoffDashboard:
    def test_pages_show_waiting_handoffs_and_the_helpdesk_link(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """/handoff lists a failed row with its error; the ticket page links the helpdesk
        ticket once delivered; /metrics counts pending and failed hand-offs."""
        import urllib.request

        from tests.conftest import free_port

        port = free_port()
        rg = webhook_gateway(retry="0.2s", extra=f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n')
        base = f"http://127.0.0.1:{port}"

        def get(path: str) -> str:
            with urllib.request.urlopen(base + path, timeout=10) as resp:  # noqa: S310
                return str(resp.read().decode())

        receiver.fail_next = 100
        assert deliver(rg, msg("dash1", "<b>bold</b> subject")) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "failed")
        hid = handoffs(rg)[0]["id"]
        page = get("/handoff")
        assert f'id="h{hid}"' in page and "HTTP 500" in page and "1 failed" in page
        item = get(f"/handoff/{hid}")
        assert "&lt;b&gt;bold&lt;/b&gt; subject" in item and "<b>bold</b>" not in item
        metrics = get("/metrics")
        assert "deskgate_handoff_failed 1.0" in metrics
        receiver.fail_next = 0
        assert cli(rg, "handoff", "retry", str(hid)).returncode == 0
        poke(rg)
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        number = handoffs(rg)[0]["ticket"]
        ticket = get(f"/tickets/{number}")
        tid = receiver.tickets[receiver.delivered()[0]["idempotency_key"]]
        assert f'href="https://hd.example/ticket/{tid}"' in ticket
        assert "nothing waiting" in get("/handoff")


class TestHelpdeskLifecycle:
    def test_reload_adds_the_helpdesk_and_check_reports_it(
            self, make_confdir: Callable[..., Any], run_gateway: Callable[..., RunningGateway],
            receiver: WebhookReceiver) -> None:
        """A standalone gateway given a [helpdesk] by reload hands off what arrives from
        then on; `helpdesk check` pings the receiver and reports OK, then FAIL when the
        receiver is gone."""
        from gateway.config import load_config
        from tests.integration.helpdesk.conftest import SECRET, webhook_conf

        conf = make_confdir()
        rg = run_gateway(load_config(conf))
        assert deliver(rg, msg("before")) == 250
        assert handoffs(rg) == []
        (conf / "50-helpdesk.toml").write_text(webhook_conf(receiver.url).replace("\n    ", "\n"))
        secrets = conf.parent / "secrets"
        secrets.mkdir()
        (secrets / "webhook").write_text(SECRET)
        (secrets / "webhook").chmod(0o600)
        assert rg.call(rg.gateway.reload()) is True
        assert deliver(rg, msg("after")) == 250
        docs = receiver.wait_delivered(1)
        assert [d["article"]["message_id"] for d in docs] == ["<after@customer.test>"]
        out = cli(rg, "helpdesk", "check", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["ok"] and report["type"] == "webhook"
        assert receiver.received[-1].doc["event"] == "ping" and receiver.received[-1].signature_ok
        receiver.stop()
        out = cli(rg, "helpdesk", "check")
        assert out.returncode == 1 and "FAIL" in out.stdout


class TestHelpdeskDown:
    def test_a_down_helpdesk_is_probed_not_hammered(
            self, webhook_gateway: Callable[..., RunningGateway], receiver: WebhookReceiver
    ) -> None:
        """After a few failures in a row the worker only probes: most rows wait untried
        (no attempt charged, no failure recorded), the up gauge says 0; once the helpdesk
        answers again every row is delivered once."""
        from gateway import metrics

        rg = webhook_gateway(retry="1s*50")
        receiver.fail_next = 10_000
        for i in range(30):
            assert deliver(rg, msg(f"dn{i}", f"down {i}")) == 250
        time.sleep(3)
        rows = handoffs(rg)
        untried = [h for h in rows if h["attempts"] == 0]
        assert len(rows) == 30 and len(untried) >= 10, [h["attempts"] for h in rows]
        assert receiver.arrived < 30
        assert metrics.HANDOFF_HELPDESK_UP._value.get() == 0  # type: ignore[attr-defined]
        receiver.fail_next = 0
        docs = receiver.wait_delivered(30, 90)
        assert len({d["idempotency_key"] for d in docs}) == 30 == len(docs)
        assert metrics.HANDOFF_HELPDESK_UP._value.get() == 1  # type: ignore[attr-defined]
