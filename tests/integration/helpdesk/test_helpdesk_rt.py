"""The rt-rest2 connector against a real Request Tracker 5 (REST2): creation,
correspondence, attachments, custom fields, retries without duplicates, errors, check."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, load_config
from gateway.helpdesk.base import HandoffError, HandoffItem
from gateway.helpdesk.rt_rest2 import RtRest2
from gateway.model import AttachmentData
from tests.peers.ca import TestCA
from tests.peers.rt import AGENT, AGENT_PASSWORD, ROOT_PASSWORD, RtServer, TlsFront

pytestmark = [pytest.mark.rt, pytest.mark.postgres]

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def rt_config(make_confdir: Callable[..., Path], rt: RtServer, *, auth: str = "token",
              url: str = "", extra: str = "", tls_ca: str = "") -> Config:
    """A conf.d with [helpdesk] type = "rt-rest2" pointing at `rt`."""
    root = make_confdir().parent
    if auth == "token":
        (root / "rt.token").write_text(rt.token + "\n")
        (root / "rt.token").chmod(0o600)
        cred = 'token_file = "rt.token"'
    else:
        user, password = auth.split(":", 1)
        (root / "rt.pass").write_text(password + "\n")
        (root / "rt.pass").chmod(0o600)
        cred = f'user = "{user}"\npassword_file = "rt.pass"'
    (root / "conf.d" / "60-helpdesk.toml").write_text(textwrap.dedent(f"""
        [helpdesk]
        type = "rt-rest2"
        url = "{url or rt.url}"
        timeout = "20s"
        """) + cred + "\n" + (f'tls_ca_file = "{tls_ca}"\n' if tls_ca else "")
        + textwrap.dedent("""
        [helpdesk.queues]
        Raw = "General"
        """) + extra)
    return load_config(root / "conf.d")


def item(*, kind: str = "create", subject: str = "", queue: str = "Support", body: str = "",
         html: str = "", sender: str = "alice@customer.test", attempts: int = 0,
         attachments: list[AttachmentData] | None = None, decisions: dict[str, str] | None = None,
         rt_ticket: str = "", created: str = "") -> HandoffItem:
    """A hand-built hand-off item as the worker would pass it."""
    subject = subject or f"Printer on fire {uuid.uuid4().hex[:8]}"
    article: dict[str, Any] = {
        "from": f"Alice Example <{sender}>", "from_email": sender,
        "to": "support@example.org", "cc": "", "reply_to": "", "subject": subject,
        "message_id": f"<{uuid.uuid4().hex}@customer.test>", "in_reply_to": "",
        "references": "", "content_type": "text/html" if html else "text/plain",
        "body": body or "The printer in room 42 is on fire.\nÜnïcödé check.\n",
        "body_html": html, "sender_type": "customer", "is_visible_for_customer": True}
    return HandoffItem(
        id=1, kind=kind, key=uuid.uuid4().hex, attempts=attempts, ticket_id=1, article_id=1,  # type: ignore[arg-type]
        helpdesk_ticket_id=rt_ticket, helpdesk_ticket_number=rt_ticket, queue=queue,
        decisions={"Queue": queue, "Priority": "3 normal", **(decisions or {})},
        ticket={"number": "2026120310000001", "title": subject, "queue": queue,
                "priority": "3 normal", "state": "new"},
        article=article, attachments=attachments or [], crypto={}, mime=b"",
        created=created)


@pytest.fixture
def rt_conf(make_confdir: Callable[..., Path], rt5: RtServer) -> Callable[..., Config]:
    def make(**kw: Any) -> Config:
        return rt_config(make_confdir, rt5, **kw)
    return make


class TestCreate:
    """New tickets: queue, requestor, subject, content, priority, attachments, fields."""

    def test_create_lands_in_the_queue_with_requestor_content_and_attachment(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """A create makes one RT ticket in the mapped queue with our requestor, subject,
        body and the attachment's exact bytes; the answer carries RT's ticket id."""
        it = item(attachments=[AttachmentData("report.pdf", "application/pdf", PDF)],
                  decisions={"Priority": "4 high"})
        res = RtRest2(rt_conf()).deliver(it)
        assert res.detail == "created" and res.ticket_id == res.ticket_number
        [t] = rt5.database.tickets(it.article["subject"])
        assert str(t.id) == res.ticket_id
        assert (t.queue, t.requestors, t.priority) == ("Support", ["alice@customer.test"], 75)
        [tx] = rt5.database.transactions(t.id)
        assert tx.type == "Create"
        assert tx.content == it.article["body"]
        assert tx.files["report.pdf"].content == PDF
        assert tx.files["report.pdf"].content_type == "application/pdf"

    def test_html_body_is_sent_as_html(self, rt5: RtServer,
                                       rt_conf: Callable[..., Config]) -> None:
        """An article with an HTML body reaches RT as text/html."""
        it = item(html="<p>The printer is <b>on fire</b></p>")
        res = RtRest2(rt_conf()).deliver(it)
        [tx] = rt5.database.transactions(int(res.ticket_id))
        html = [a for a in tx.attachments if a.content_type == "text/html"]
        assert html and html[0].text == "<p>The printer is <b>on fire</b></p>"

    def test_queue_mapping_and_url_with_rest_path(self, rt5: RtServer,
                                                  rt_conf: Callable[..., Config]) -> None:
        """helpdesk.url may end in /REST/2.0/; the item's (mapped) queue is used."""
        cfg = rt_conf(url=rt5.url + "/REST/2.0/")
        it = item(queue=cfg.helpdesk.helpdesk_queue("Raw"))
        res = RtRest2(cfg).deliver(it)
        assert rt5.database.ticket(int(res.ticket_id)).queue == "General"

    def test_dynamic_fields_set_where_rt_has_the_field_else_warned(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """DynamicField-Server fills RT's "Server" custom field; a field RT lacks is
        reported in Delivered.log and not sent."""
        it = item(decisions={"DynamicField-Server": "web01", "DynamicField-Colour": "red"})
        res = RtRest2(rt_conf()).deliver(it)
        assert rt5.database.ticket(int(res.ticket_id)).custom_fields == {"Server": "web01"}
        warns = [v for p, _, v in res.log if p == "Warn"]
        assert len(warns) == 1 and "'Colour'" in warns[0] and "red" in warns[0]

    def test_basic_auth_user_and_password(self, rt5: RtServer,
                                          rt_conf: Callable[..., Config]) -> None:
        """helpdesk.user + password authenticate with HTTP basic auth."""
        it = item(queue="Sales")
        res = RtRest2(rt_conf(auth=f"{AGENT}:{AGENT_PASSWORD}")).deliver(it)
        assert rt5.database.ticket(int(res.ticket_id)).queue == "Sales"


class TestFollowUp:
    """Follow-ups correspond on the RT ticket."""

    def test_followup_corresponds_on_the_same_ticket(self, rt5: RtServer,
                                                     rt_conf: Callable[..., Config]) -> None:
        """A follow-up with the RT ticket id adds a Correspond with body and file."""
        conn = RtRest2(rt_conf())
        first = item()
        tid = conn.deliver(first).ticket_id
        follow = item(kind="followup", subject="Re: " + first.article["subject"],
                      body="Still burning.\n", rt_ticket=tid,
                      attachments=[AttachmentData("smoke.bin", "application/octet-stream",
                                                  b"\x00smoke\xff")])
        res = conn.deliver(follow)
        assert (res.ticket_id, res.detail) == (tid, "corresponded")
        txs = rt5.database.transactions(int(tid))
        assert [t.type for t in txs] == ["Create", "Correspond"]
        assert txs[1].content == "Still burning.\n"
        assert txs[1].files["smoke.bin"].content == b"\x00smoke\xff"
        assert len(rt5.database.tickets(f"%{first.article['subject']}")) == 1

    def test_followup_without_id_uses_the_subject_tag(self, rt5: RtServer,
                                                      rt_conf: Callable[..., Config]) -> None:
        """No recorded RT ticket, but "[hd.test #N]" in the subject: corresponds on N."""
        conn = RtRest2(rt_conf())
        tid = conn.deliver(item()).ticket_id
        res = conn.deliver(item(kind="followup", subject=f"Re: [hd.test #{tid}] the printer",
                                body="Tagged reply.\n"))
        assert res.ticket_id == tid
        assert rt5.database.transactions(int(tid))[-1].content == "Tagged reply.\n"

    def test_new_message_tagged_for_a_ticket_of_the_sender_corresponds(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """A "create" whose Subject carries RT's tag of a ticket the sender is requestor of
        (a reply to RT's mail deskgate could not join) is added to that ticket."""
        conn = RtRest2(rt_conf())
        first = item()
        tid = conn.deliver(first).ticket_id
        res = conn.deliver(item(subject=f"Re: [hd.test #{tid}] {first.article['subject']}",
                                body="Reply to RT's mail.\n"))
        assert (res.ticket_id, res.detail) == (tid, "corresponded")
        assert any("RT's tag of ticket" in v for _, _, v in res.log)
        assert rt5.database.transactions(int(tid))[-1].content == "Reply to RT's mail.\n"
        assert rt5.database.tickets(f"Re: [hd.test #{tid}]%") == []

    def test_tag_of_a_ticket_the_sender_is_not_on_creates(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """Someone else's message naming that tag gets its own ticket."""
        conn = RtRest2(rt_conf())
        tid = conn.deliver(item()).ticket_id
        other = item(subject=f"Fwd: [hd.test #{tid}] something", sender="mallory@other.test")
        res = conn.deliver(other)
        assert res.detail == "created" and res.ticket_id != tid
        assert rt5.database.ticket(int(res.ticket_id)).requestors == ["mallory@other.test"]

    def test_followup_without_any_ticket_is_permanent(self,
                                                      rt_conf: Callable[..., Config]) -> None:
        """Neither an id nor a tag: a permanent error, nothing sent."""
        with pytest.raises(HandoffError) as exc:
            RtRest2(rt_conf()).deliver(item(kind="followup", subject="Re: what ticket?"))
        assert not exc.value.temporary and "without an RT ticket" in str(exc.value)


class TestExactlyOnce:
    """A retry after a lost answer finds what the earlier attempt left in RT."""

    def test_create_retry_finds_the_ticket_instead_of_a_second(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """deliver twice (attempts=1 the second time): one RT ticket, answered "found"."""
        conn = RtRest2(rt_conf())
        it = item(attachments=[AttachmentData("a.txt", "text/plain", b"file a\n")],
                  created="2026-01-01T00:00:00+00:00")
        first = conn.deliver(it)
        again = conn.deliver(item(subject=it.article["subject"], attempts=1,
                                  attachments=it.attachments, created=it.created))
        assert (again.ticket_id, again.detail) == (first.ticket_id, "found")
        assert len(rt5.database.tickets(it.article["subject"])) == 1

    def test_create_retry_when_rt_runs_west_of_utc(
            self, rt5: RtServer, make_confdir: Callable[..., Path]) -> None:
        """RT reads a date in a ticket search in its own time zone: with RT on New York
        time, a retry a moment after the lost answer still finds the ticket."""
        from datetime import UTC, datetime

        ny = rt5.sibling("\nSet($Timezone, 'America/New_York');")
        ny.start()
        try:
            conn = RtRest2(rt_config(make_confdir, ny))
            now = datetime.now(UTC).isoformat()
            it = item(created=now)
            first = conn.deliver(it)
            again = conn.deliver(item(subject=it.article["subject"], attempts=1, created=now))
        finally:
            ny.stop()
        assert (again.ticket_id, again.detail) == (first.ticket_id, "found")
        assert len(rt5.database.tickets(it.article["subject"])) == 1

    def test_create_retry_long_subject_and_html(self, rt5: RtServer,
                                               rt_conf: Callable[..., Config]) -> None:
        """A subject longer than RT keeps and an HTML body are still recognised."""
        conn = RtRest2(rt_conf())
        subject = f"Long {uuid.uuid4().hex}  " + "very  long subject " * 14
        html = "<p>The printer<br>\n is <b>on fire</b>  </p>\n"
        first = conn.deliver(item(subject=subject, html=html))
        again = conn.deliver(item(subject=subject, html=html, attempts=1))
        assert (again.ticket_id, again.detail) == (first.ticket_id, "found")
        assert len(rt5.database.tickets(subject.split()[1][:8].join("%%"))) == 1

    def test_key_field_makes_the_retry_exact(self, rt5: RtServer,
                                             rt_conf: Callable[..., Config]) -> None:
        """Where RT has a Deskgate-Key field (queue Sales) the key is stored and a retry
        finds the ticket by it even after an agent changed subject and requestor; the
        same content under another key is another hand-off and is created."""
        conn = RtRest2(rt_conf())
        it = item(queue="Sales")
        first = conn.deliver(it)
        t = rt5.database.ticket(int(first.ticket_id))
        assert t.custom_fields == {"Deskgate-Key": it.key}
        agent = conn.deliver(item(kind="followup", rt_ticket=first.ticket_id))
        assert agent.detail == "corresponded"
        retry = HandoffItem(**{**it.__dict__, "attempts": 1,
                               "article": {**it.article, "subject": "changed by an agent",
                                           "from_email": "bob@customer.test"}})
        again = conn.deliver(retry)
        assert (again.ticket_id, again.detail) == (first.ticket_id, "found")
        other = conn.deliver(item(queue="Sales", subject=it.article["subject"], attempts=1))
        assert other.detail == "created" and other.ticket_id != first.ticket_id

    def test_create_retry_with_other_content_creates(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """Same subject and requestor but another body is a different message: created."""
        conn = RtRest2(rt_conf())
        it = item()
        first = conn.deliver(it)
        other = conn.deliver(item(subject=it.article["subject"], body="Another text.\n",
                                  attempts=1))
        assert other.detail == "created" and other.ticket_id != first.ticket_id
        assert len(rt5.database.tickets(it.article["subject"])) == 2

    def test_create_retry_ignores_tickets_older_than_the_message(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """An identical ticket created before the message was committed is not ours."""
        conn = RtRest2(rt_conf())
        it = item()
        conn.deliver(it)
        later = item(subject=it.article["subject"], attempts=2,
                     created="2099-01-01T00:00:00+00:00")
        assert conn.deliver(later).detail == "created"
        assert len(rt5.database.tickets(it.article["subject"])) == 2

    def test_first_attempt_does_not_search(self, rt5: RtServer,
                                           rt_conf: Callable[..., Config]) -> None:
        """attempts=0 creates without looking (two identical first attempts: two tickets)."""
        conn = RtRest2(rt_conf())
        it = item()
        conn.deliver(it)
        conn.deliver(item(subject=it.article["subject"]))
        assert len(rt5.database.tickets(it.article["subject"])) == 2

    def test_followup_retry_does_not_correspond_twice(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """A retried follow-up whose reply is already on the ticket is answered "found"."""
        conn = RtRest2(rt_conf())
        tid = conn.deliver(item()).ticket_id
        follow = item(kind="followup", body="Once only.\n", rt_ticket=tid)
        conn.deliver(follow)
        again = conn.deliver(item(kind="followup", body="Once only.\n", rt_ticket=tid,
                                  subject=follow.article["subject"], attempts=1))
        assert (again.ticket_id, again.detail) == (tid, "found")
        assert [t.type for t in rt5.database.transactions(int(tid))] == ["Create", "Correspond"]


class TestErrors:
    """RT's refusals and absence map to permanent or temporary errors, without secrets."""

    def test_unknown_queue_is_permanent_with_rts_text(self, rt5: RtServer,
                                                      rt_conf: Callable[..., Config]) -> None:
        """A queue RT does not have: permanent, RT's message quoted, no ticket."""
        it = item(queue="NoSuchQueue")
        with pytest.raises(HandoffError) as exc:
            RtRest2(rt_conf()).deliver(it)
        assert not exc.value.temporary
        assert "No permission to create tickets in the queue 'NoSuchQueue'" in str(exc.value)
        assert "RT has no queue 'NoSuchQueue'" in str(exc.value)
        assert rt5.database.tickets(it.article["subject"]) == []

    def test_correspond_on_missing_ticket_is_permanent(
            self, rt_conf: Callable[..., Config]) -> None:
        """A follow-up for a ticket RT does not have fails for good."""
        with pytest.raises(HandoffError) as exc:
            RtRest2(rt_conf()).deliver(item(kind="followup", rt_ticket="999999"))
        assert not exc.value.temporary and "RT has no ticket 999999" in str(exc.value)

    def test_wrong_url_path_is_temporary(self, rt5: RtServer,
                                         rt_conf: Callable[..., Config]) -> None:
        """RT under another path than helpdesk.url says (404): temporary, a hint to the URL."""
        with pytest.raises(HandoffError) as exc:
            RtRest2(rt_conf(url=rt5.url + "/rt")).deliver(item())
        assert exc.value.temporary and "404" in str(exc.value)
        assert "check helpdesk.url" in str(exc.value)

    def test_wrong_password_is_temporary_and_hides_the_secret(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """Basic auth with a wrong password: temporary 401 error naming the keys, not
        the password."""
        with pytest.raises(HandoffError) as exc:
            RtRest2(rt_conf(auth="root:wrong-Secret-77")).deliver(item())
        assert exc.value.temporary and "401" in str(exc.value)
        assert "helpdesk.password" in str(exc.value) and "wrong-Secret-77" not in str(exc.value)

    def test_wrong_token_is_temporary_and_hides_the_token(
            self, rt5: RtServer, make_confdir: Callable[..., Path]) -> None:
        """A forged token: temporary 401 error naming helpdesk.token, not the token."""
        bad = RtServer(rt5.dir, db=rt5.db, port=rt5.port)
        cfg = rt_config(make_confdir, bad)
        (cfg.root / "rt.token").write_text("1-27-0123456789abcdef0123456789abcdef\n")
        (cfg.root / "rt.token").chmod(0o600)
        cfg = load_config(cfg.root / "conf.d")
        with pytest.raises(HandoffError) as exc:
            RtRest2(cfg).deliver(item())
        assert exc.value.temporary and "helpdesk.token" in str(exc.value)
        assert "0123456789abcdef" not in str(exc.value)

    def test_rt_stopped_is_temporary(self, rt5: RtServer,
                                     make_confdir: Callable[..., Path]) -> None:
        """An RT that was serving and is stopped: temporary "cannot reach"."""
        other = rt5.sibling()
        other.start()
        try:
            conn = RtRest2(rt_config(make_confdir, other))
            assert conn.deliver(item()).detail == "created"
        finally:
            other.stop()
        with pytest.raises(HandoffError) as exc:
            conn.deliver(item())
        assert exc.value.temporary and "cannot reach RT" in str(exc.value)


class TestTls:
    """https:// RT (TLS terminated in front of it) verified against tls_ca_file."""

    def test_private_ca_verified_with_tls_ca_file(
            self, rt5: RtServer, rt_conf: Callable[..., Config], tmp_path: Path) -> None:
        """With the private CA in tls_ca_file the hand-off works over https; without it
        the system store rejects the certificate: a temporary error, nothing created."""
        ca = TestCA(tmp_path / "ca")
        server = ca.issue("rt", hosts=("localhost", "127.0.0.1"), filename="rt")
        front = TlsFront(rt5.port, server.cert, server.key).start()
        try:
            res = RtRest2(rt_conf(url=front.url, extra="", tls_ca=str(ca.ca_path))).deliver(
                item(queue="Sales"))
            assert rt5.database.ticket(int(res.ticket_id)).queue == "Sales"
            it = item()
            with pytest.raises(HandoffError) as exc:
                RtRest2(rt_conf(url=front.url)).deliver(it)
            assert exc.value.temporary and "CERTIFICATE_VERIFY_FAILED" in str(exc.value)
            assert rt5.database.tickets(it.article["subject"]) == []
        finally:
            front.stop()


class TestCheck:
    """`deskgate helpdesk check` for RT: login, visible queues, the mapped queues."""

    def test_check_reports_login_queues_and_mapping(
            self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """Login ok with RT's version, the visible queues listed, a missing mapped queue
        fails, each queue says how retries are checked."""
        cfg = rt_conf(extra='Support = "Support"\nSales = "Sales::L1"\nJunk = "Sales"\n')
        steps = {step: (status, text) for status, step, text in RtRest2(cfg).check()}
        assert steps["login"][0] == "ok" and "RT 5." in steps["login"][1]
        assert steps["queues"][0] == "ok"
        assert all(q in steps["queues"][1] for q in ("General", "Support", "Sales", "Junk"))
        assert steps["queue General"][0] == "ok" and steps["queue Support"][0] == "ok"
        assert steps["queue Sales::L1"][0] == "fail"
        assert "queue Raw" not in steps and "queue Junk" not in steps   # mapped
        assert "compare requestor, subject and content" in steps["queue Support"][1]
        assert "check the Deskgate-Key custom field" in steps["queue Sales"][1]

    def test_check_wrong_password(self, rt5: RtServer, rt_conf: Callable[..., Config]) -> None:
        """A refused login is a failed step that names the keys, not the password."""
        steps = RtRest2(rt_conf(auth=f"root:{ROOT_PASSWORD}x")).check()
        assert steps[-1][:2] == ("fail", "login")
        assert f"{ROOT_PASSWORD}x" not in repr(steps)

    def test_check_unreachable(self, make_confdir: Callable[..., Path], rt5: RtServer) -> None:
        """Nothing listening: a failed connect step."""
        gone = RtServer(rt5.dir, db=rt5.db)       # a fresh free port, nothing on it
        steps = RtRest2(rt_config(make_confdir, gone)).check()
        assert steps[0][:2] == ("fail", "connect")
