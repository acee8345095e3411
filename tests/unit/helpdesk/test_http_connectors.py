"""The HTTP connectors (webhook, OTOBO REST, RT REST2) against a scripted local server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.helpdesk.base import Connector, HandoffError
from gateway.helpdesk.otobo_rest import OtoboRest
from gateway.helpdesk.rt_rest2 import RtRest2
from gateway.helpdesk.webhook import Webhook
from gateway.model import AttachmentData
from tests.integration.helpdesk.items import item, mail
from tests.peers.ca import TestCA
from tests.peers.ports import free_port
from tests.peers.require import missing_peer
from tests.unit.helpdesk.fakehttp import Answer, FakeHttp, Request, fake_http


@pytest.fixture
def server() -> Iterator[FakeHttp]:
    with fake_http() as f:
        yield f


@pytest.fixture
def connector(make_confdir: Callable[..., Path], server: FakeHttp
              ) -> Callable[[str, str], Connector]:
    """connector('webhook', '/hook') → the connector of that type at the fake server."""

    def make(kind: str, path: str, timeout: str = "5s") -> Connector:
        auth = {"webhook": 'secret_file = "sec"', "otobo-rest": 'user = "deskgate"\n'
                'password_file = "sec"', "rt-rest2": 'token_file = "sec"'}[kind]
        conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "{kind}"
            url = "{server.url}{path}"
            {auth}
            timeout = "{timeout}"
            """)})
        (conf.parent / "sec").write_text("s3cret\n")
        (conf.parent / "sec").chmod(0o600)
        cfg = load_config(conf)
        cls = {"webhook": Webhook, "otobo-rest": OtoboRest, "rt-rest2": RtRest2}[kind]
        return cls(cfg)  # type: ignore[no-any-return]

    return make


class TestTotalDeadline:
    """`[helpdesk] timeout` bounds a whole request, from connecting to the last byte of
    the answer: a helpdesk that trickles its answer a byte at a time (each byte well
    within the timeout) no longer holds a worker thread, and the row's lease, for ever."""

    @pytest.mark.parametrize(("kind", "path"), [("webhook", "/hook"), ("otobo-rest", "/ws"),
                                                ("rt-rest2", "")])
    def test_a_trickled_answer_fails_as_temporary_after_the_timeout(
            self, server: FakeHttp, connector: Callable[..., Connector], kind: str,
            path: str) -> None:
        """An answer sent one byte every 0.2 s against a 1 s timeout: the attempt ends
        about a second later with a temporary error that says it timed out."""
        server.on("POST", "/hook", (200, {}, {"ticket_id": "41", "padding": "x" * 40}))
        server.trickle = 0.2
        c = connector(kind, path, timeout="1s")
        t0 = time.monotonic()
        with pytest.raises(HandoffError) as exc:
            c.deliver(item(mail("hello")))
        took = time.monotonic() - t0
        assert exc.value.temporary
        assert "timed out" in str(exc.value) and "1 s" in str(exc.value)
        assert took < 2.5, f"the attempt took {took:.1f} s"

    def test_over_tls_too(self, make_confdir: Callable[..., Path], tmp_path: Path) -> None:
        """https: the deadline reaches the connection after TLS has taken it over."""
        ca = TestCA(tmp_path / "ca")
        leaf = ca.issue("hook", hosts=("127.0.0.1",), filename="hook")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(leaf.cert, leaf.key)
        with fake_http(tls) as server:
            server.on("POST", "/hook", (200, {}, {"ticket_id": "41", "padding": "x" * 40}))
            conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
                [helpdesk]
                type = "webhook"
                url = "{server.url}/hook"
                secret_file = "sec"
                tls_ca_file = "{ca.ca_path}"
                timeout = "1s"
                """)})
            (conf.parent / "sec").write_text("s3cret\n")
            (conf.parent / "sec").chmod(0o600)
            hook = Webhook(load_config(conf))
            assert hook.deliver(item(mail("hello"))).ticket_id == "41"
            server.trickle = 0.2
            t0 = time.monotonic()
            with pytest.raises(HandoffError) as exc:
                hook.deliver(item(mail("hello")))
        assert exc.value.temporary and "timed out" in str(exc.value)
        assert time.monotonic() - t0 < 2.5

    def test_a_prompt_answer_is_delivered(
            self, server: FakeHttp, connector: Callable[..., Connector]) -> None:
        """The deadline takes nothing from an answer that comes in time."""
        server.on("POST", "/hook", (200, {}, {"ticket_id": "41", "ticket_number": "1041"}))
        for _ in range(3):
            assert connector("webhook", "/hook", timeout="1s").deliver(
                item(mail("hello"))).ticket_number == "1041"


@contextlib.contextmanager
def blackholed(addresses: tuple[str, ...]) -> Iterator[int]:
    """A port on each of `addresses` where a connect hangs: a listener with backlog 0
    whose queue is filled by one connection nobody accepts, so Linux drops further
    SYNs (the client retransmits them, as towards a firewall that drops them)."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        for addr in addresses:
            lsn = stack.enter_context(socket.socket())
            lsn.bind((addr, port))
            lsn.listen(0)
            filler = stack.enter_context(socket.socket())
            filler.connect((addr, port))
            probe = stack.enter_context(socket.socket())
            probe.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                probe.connect((addr, port))
                missing_peer(f"a full backlog on {addr} does not hold a connect here")
        yield port


class TestDeadlineCoversConnect:
    """The deadline counts from before the name is resolved and the first address is
    tried: a helpdesk name whose addresses all drop SYNs costs `[helpdesk] timeout`
    once, not once per address."""

    def test_three_addresses_that_drop_syns_cost_one_timeout(
            self, make_confdir: Callable[..., Path],
            monkeypatch: pytest.MonkeyPatch) -> None:
        addrs = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
        real = socket.getaddrinfo

        def resolve(host: object, port: object, *args: object, **kw: object) -> object:
            if host == "helpdesk.test":     # the name's three A records
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                        for a in addrs]
            return real(host, port, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        with blackholed(addrs) as port:
            conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
                [helpdesk]
                type = "webhook"
                url = "http://helpdesk.test:{port}/hook"
                secret_file = "sec"
                timeout = "1s"
                """)})
            (conf.parent / "sec").write_text("s3cret\n")
            (conf.parent / "sec").chmod(0o600)
            hook = Webhook(load_config(conf))
            t0 = time.monotonic()
            with pytest.raises(HandoffError) as exc:
                hook.deliver(item(mail("hello")))
            took = time.monotonic() - t0
        assert exc.value.temporary
        assert "timed out" in str(exc.value) and "1 s" in str(exc.value)
        # one timeout per address would be 3 s; the slack is for a loaded machine
        assert took < 2.5, f"the attempt took {took:.1f} s against a 1 s timeout"


class TestRedirects:
    """A redirect is not followed: urllib would repeat a POST as a GET without its body
    (and send the credentials to wherever Location points)."""

    def test_webhook_post_redirected_is_not_taken_for_delivered(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """A 301 to /hook/ whose GET answers 200 is an error naming the new URL, not a
        delivery of a document nobody stored."""
        server.on("POST", "/hook", (301, {"Location": f"{server.url}/hook/"}, ""))
        server.on("GET", "/hook/", (200, {}, {"ticket_id": "1"}))
        with pytest.raises(HandoffError) as exc:
            connector("webhook", "/hook").deliver(item(mail("hello")))
        assert exc.value.temporary
        assert "redirect" in str(exc.value) and f"{server.url}/hook/" in str(exc.value)
        assert [(r.method, r.path) for r in server.requests] == [("POST", "/hook")]

    def test_rt_redirect_is_not_followed_with_the_token(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """RT's answer 302 is a temporary error naming Location; the token is not sent on."""
        server.on("GET", "/REST/2.0/queue/Raw", (302, {"Location": "http://127.0.0.1:9/x"}, ""))
        server.on("POST", "/REST/2.0/ticket",
                  (302, {"Location": f"{server.url}/elsewhere"}, ""))
        with pytest.raises(HandoffError) as exc:
            connector("rt-rest2", "").deliver(item(mail("hello")))
        assert exc.value.temporary and "redirect" in str(exc.value)
        assert all(r.path != "/elsewhere" for r in server.requests)

    def test_otobo_redirect_is_not_followed(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """OTOBO's web server redirecting (http → https, say) is a temporary error."""
        server.on("POST", "/ws/Session", (301, {"Location": f"{server.url}/other"}, ""))
        server.on("GET", "/other", (200, {}, {"SessionID": "x"}))
        with pytest.raises(HandoffError) as exc:
            connector("otobo-rest", "/ws").deliver(item(mail("hello")))
        assert exc.value.temporary and f"{server.url}/other" in str(exc.value)
        assert [(r.method, r.path) for r in server.requests] == [("POST", "/ws/Session")]


def otobo_ticket_create(req: Request) -> Answer:
    """OTOBO 11's TicketCreate checks: every attachment needs Content, ContentType and
    Filename with data (Kernel/GenericInterface/Operation/Ticket/TicketCreate.pm)."""
    for att in req.json.get("Attachment") or []:
        for needed in ("Content", "ContentType", "Filename"):
            if not att.get(needed):
                return 200, {}, {"Error": {
                    "ErrorCode": "TicketCreate.MissingParameter",
                    "ErrorMessage": f"TicketCreate: Attachment->{needed}  parameter is missing!"}}
    return 200, {}, {"TicketID": "7", "TicketNumber": "2026120310000071", "ArticleID": "9"}


class TestOtoboAttachments:
    def test_an_empty_file_does_not_fail_the_ticket(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """OTOBO refuses an attachment without content (MissingParameter, permanent): the
        empty file is left out with a Notice and the ticket is created with the others."""
        server.on("POST", "/ws/Session", (200, {}, {"SessionID": "sid"}))
        server.on("POST", "/ws/Ticket", otobo_ticket_create)
        atts = [AttachmentData(filename="empty.txt", content_type="text/plain", content=b""),
                AttachmentData(filename="Prüfbericht.pdf", content_type="application/pdf",
                               content=b"%PDF-1.4")]
        res = connector("otobo-rest", "/ws").deliver(item(mail("report", attachments=atts)))
        assert (res.ticket_id, res.detail) == ("7", "created")
        sent = server.requests[-1].json["Attachment"]
        assert [a["Filename"] for a in sent] == ["Prüfbericht.pdf"]
        assert ("Notice", "Attachment", "attachment 'empty.txt' is empty: not passed on "
                "(OTOBO refuses a file without content)") in res.log


class TestRtKeyField:
    def test_queue_lookup_failing_is_temporary_not_a_ticket_without_key(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """RT failing to tell the queue's custom fields (HTTP 503) is retried: creating
        the ticket without Deskgate-Key would make a later retry's key search miss it
        (a second ticket after a lost answer)."""
        server.on("GET", "/REST/2.0/queue/Raw", (503, {}, {"message": "busy"}))
        server.on("POST", "/REST/2.0/ticket", (201, {}, {"id": 5}))
        with pytest.raises(HandoffError) as exc:
            connector("rt-rest2", "").deliver(item(mail("hello")))
        assert exc.value.temporary and "503" in str(exc.value)
        assert ("POST", "/REST/2.0/ticket") not in [(r.method, r.path)
                                                     for r in server.requests]

    def test_key_is_stored_with_the_ticket(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """With the Deskgate-Key field on the queue the key travels with the ticket."""
        server.on("GET", "/REST/2.0/queue/Raw", (200, {}, {"TicketCustomFields": [
            {"name": "Deskgate-Key"}]}))
        server.on("POST", "/REST/2.0/ticket", (201, {}, {"id": 5}))
        it = item(mail("hello"))
        assert connector("rt-rest2", "").deliver(it).ticket_id == "5"
        assert server.requests[-1].json["CustomFields"] == {"Deskgate-Key": it.key}


class TestRtTooLarge:
    """RT (or the web server in front of it) refusing the request as too large (HTTP 413)
    fails at once, as OTOBO's and the webhook's 413 do: the same message is as large on
    every retry."""

    def test_new_ticket_413_is_permanent_and_says_why(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """A ticket too large for RT is a permanent error naming the limit to raise."""
        server.on("GET", "/REST/2.0/queue/Raw", (200, {}, {"TicketCustomFields": []}))
        server.on("POST", "/REST/2.0/ticket", (413, {"Content-Type": "text/html"},
                                               "<html><body><h1>413 Request Entity Too "
                                               "Large</h1></body></html>"))
        with pytest.raises(HandoffError) as exc:
            connector("rt-rest2", "").deliver(item(mail("big", attachments=[AttachmentData(
                filename="scan.pdf", content_type="application/pdf", content=b"%PDF" * 64)])))
        assert not exc.value.temporary
        assert "413" in str(exc.value) and "too large" in str(exc.value)

    def test_follow_up_413_is_permanent(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """The same for a reply added to an RT ticket."""
        server.on("POST", "/REST/2.0/ticket/5/correspond", (413, {}, ""))
        it = replace(item(mail("big")), kind="followup", helpdesk_ticket_id="5")
        with pytest.raises(HandoffError) as exc:
            connector("rt-rest2", "").deliver(it)
        assert not exc.value.temporary and "too large" in str(exc.value)


class TestAttachmentNames:
    """Each HTTP connector hands the helpdesk safe file names; the item (what deskgate
    stored) keeps the customer's."""

    def test_otobo_rest(self, server: FakeHttp,
                        connector: Callable[[str, str], Connector]) -> None:
        """TicketCreate gets the safe Filename of every attachment."""
        from tests.unit.helpdesk.test_attachment_names import SAFE, UNSAFE, unsafe_item

        server.on("POST", "/ws/Session", (200, {}, {"SessionID": "sid"}))
        server.on("POST", "/ws/Ticket", otobo_ticket_create)
        it = unsafe_item()
        connector("otobo-rest", "/ws").deliver(it)
        assert [a["Filename"] for a in server.requests[-1].json["Attachment"]] == SAFE
        assert it.attachments == UNSAFE

    def test_rt_rest2(self, server: FakeHttp,
                      connector: Callable[[str, str], Connector]) -> None:
        """POST /ticket carries the safe FileName of every attachment."""
        from tests.unit.helpdesk.test_attachment_names import SAFE, UNSAFE, unsafe_item

        server.on("GET", "/REST/2.0/queue/Raw", (200, {}, {"TicketCustomFields": []}))
        server.on("POST", "/REST/2.0/ticket", (201, {}, {"id": 5}))
        it = unsafe_item()
        assert connector("rt-rest2", "").deliver(it).ticket_id == "5"
        assert [a["FileName"] for a in server.requests[-1].json["Attachments"]] == SAFE
        assert it.attachments == UNSAFE

    def test_rt_rest2_empty_file_warning_uses_the_safe_name(
            self, server: FakeHttp, connector: Callable[[str, str], Connector]) -> None:
        """The note about a skipped empty file names it safely (no control characters)."""
        server.on("GET", "/REST/2.0/queue/Raw", (200, {}, {"TicketCustomFields": []}))
        server.on("POST", "/REST/2.0/ticket", (201, {}, {"id": 5}))
        it = replace(item(mail("x")), attachments=[
            AttachmentData(filename="../e\x1b.txt", content_type="text/plain", content=b"")])
        res = connector("rt-rest2", "").deliver(it)
        assert ("Notice", "RT", "attachment e.txt is empty and was not sent") in res.log

    def test_webhook(self, server: FakeHttp,
                     connector: Callable[[str, str], Connector]) -> None:
        """The webhook document's attachments[].filename is the safe name."""
        from tests.unit.helpdesk.test_attachment_names import SAFE, UNSAFE, unsafe_item

        server.on("POST", "/hook", (200, {}, {"ticket_id": "1"}))
        it = unsafe_item()
        connector("webhook", "/hook").deliver(it)
        assert [a["filename"] for a in server.requests[-1].json["attachments"]] == SAFE
        assert it.attachments == UNSAFE
