"""Mail content on every dashboard page is text, never markup: Subjects, From names,
attachment file names, header values, communication-log entries, account names,
errors from remote servers, the helpdesk's ticket ids, and what admins type into the
forms. Over plain HTTP against a running gateway."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update

from gateway.store.tables import (
    Article,
    CommEntry,
    CommObject,
    Communication,
    Handoff,
    OutboundMessage,
    OutboundRecipient,
    Ticket,
)
from tests.integration.admin.conftest import ADMIN

SCRIPT = "<script>alert(1)</script>"
ATTR = '"onmouseover="alert(2)'
TEXTAREA = "</textarea><script>alert(3)</script>"
JS_URL = "javascript:alert(4)"
# Every payload in one string, as a remote server or a sender would put it in a field.
ALL = f"{SCRIPT} {ATTR} {TEXTAREA} {JS_URL}"

# A link, form target or image whose URL a payload chose.
JS_LINK = re.compile(r"""(href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.I)


def assert_inert(page: str, body: str) -> None:
    """No payload survived as markup: the dashboard itself serves no <script> at all."""
    assert "<script" not in body.lower(), f"{page}: unescaped <script>"
    assert '"onmouseover=' not in body.lower(), f"{page}: attribute broken out of"
    assert "</textarea><" not in body.lower(), f"{page}: textarea closed by content"
    assert not JS_LINK.search(body), f"{page}: javascript: URL in a link"


HOSTILE_MESSAGE = (
    f'From: "{SCRIPT} {ATTR}" <a@customer.test>\r\n'
    "To: support@example.org\r\n"
    f"Cc: \"{TEXTAREA}\" <cc@customer.test>\r\n"
    f"Subject: {ALL}\r\n"
    "Message-ID: <esc1@customer.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b"\r\n'
    "\r\n--b\r\n"
    "Content-Type: text/plain\r\n\r\n"
    f"body {ALL}\r\n"
    "--b\r\n"
    "Content-Type: text/plain\r\n"
    f"Content-Disposition: attachment; filename=\"x{ATTR}{SCRIPT}.txt\"\r\n\r\n"
    "data\r\n"
    "--b--\r\n"
).encode()


def _store_hostile_rows(d, ticket_id: int) -> tuple[int, int, int]:
    """An outbound message, a hand-off and a poller communication whose texts came from
    remote servers and senders; their ids."""
    now = datetime.now(UTC)
    with d.rg.gateway.engine.begin() as conn:
        conn.execute(update(Ticket).where(Ticket.id == ticket_id).values(
            helpdesk_ticket_id=JS_URL, helpdesk_ticket_number=ALL))
        oid = conn.execute(insert(OutboundMessage).values(
            queue=ALL, sender=f"{ATTR}@customer.test", message_id=f"<{SCRIPT}>",
            submitter=ALL, data=f"Subject: {ALL}\r\n\r\nx".encode(), size=10,
            status="queued", attempts=1, next_attempt=now + timedelta(minutes=5),
            last_error=f"451 {ALL}", created=now, updated=now
        ).returning(OutboundMessage.id)).scalar_one()
        conn.execute(insert(OutboundRecipient).values(
            outbound_id=oid, address=f"{ATTR}@customer.test", status="pending",
            last_reply=ALL, updated=now))
        done = conn.execute(insert(OutboundMessage).values(
            queue="Support", sender="support@example.org", data=b"x", size=1,
            status="failed", attempts=5, next_attempt=now, last_error=f"550 {ALL}",
            created=now, updated=now).returning(OutboundMessage.id)).scalar_one()
        article_id = conn.execute(select(Article.id).where(Article.ticket_id == ticket_id)
                                  ).scalar_one()
        hid = conn.execute(insert(Handoff).values(
            ticket_id=ticket_id, article_id=article_id, kind="create", key="esc-1",
            helpdesk="webhook", status="failed", attempts=3, cycle_started=now,
            next_attempt=now, claimed_by=ALL, last_error=f"HTTP 500: {ALL}",
            decisions={"queue": ALL}, created=now, updated=now
        ).returning(Handoff.id)).scalar_one()
        cid = conn.execute(insert(Communication).values(
            direction="Incoming", status="Failed", account_type="IMAPS", account=ALL,
            start=now - timedelta(minutes=1), end=now).returning(Communication.id)
        ).scalar_one()
        obj = conn.execute(insert(CommObject).values(
            communication_id=cid, type="Connection", status="Failed",
            start=now - timedelta(minutes=1), end=now).returning(CommObject.id)).scalar_one()
        conn.execute(insert(CommEntry).values(
            object_id=obj, communication_id=cid, priority="Error", key=ALL,
            value=f"server said: {ALL}", time=now))
    assert done
    return oid, hid, cid


class TestHostileContentIsText:
    def test_every_page_shows_hostile_fields_escaped(self, admin_dashboard):
        """A message whose From name, Cc, Subject, body and attachment file name carry
        <script>, an attribute break-out, </textarea> and a javascript: URL, and rows
        whose remote errors, account names and helpdesk ticket id carry them too: no page
        gives any of them back as markup, and the escaped text is there."""
        d = admin_dashboard()
        assert d.deliver("support@example.org", HOSTILE_MESSAGE) == [250]
        with d.rg.gateway.engine.connect() as conn:
            ticket_id, number = conn.execute(select(Ticket.id, Ticket.number)).one()
        oid, hid, cid = _store_hostile_rows(d, ticket_id)
        with d.rg.gateway.engine.connect() as conn:
            message_comm = conn.execute(
                select(CommObject.communication_id).where(CommObject.type == "Message")
            ).scalar_one()
        pages = ["/log", "/log/list", f"/log/{cid}", f"/log/{message_comm}", "/tickets",
                 f"/tickets/{number}", "/outbound", f"/outbound/{oid}", "/handoff",
                 f"/handoff/{hid}", "/accounts", "/queues", "/addresses", "/filters",
                 f"/log/list?search={JS_URL}", f"/tickets?state={TEXTAREA}"]
        seen = ""
        for page in pages:
            status, body = d.request(page.replace(" ", "%20").replace("<", "%3C")
                                     .replace(">", "%3E").replace('"', "%22"))
            assert status == 200, (page, body)
            assert_inert(page, body)
            seen += body
        # shown, as text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in seen
        assert "&lt;/textarea&gt;" in seen
        assert "&#34;onmouseover=&#34;alert(2)" in seen
        assert "x&#34;onmouseover=&#34;alert(2)&lt;script&gt;" in seen     # attachment
        assert "HTTP 500: &lt;script&gt;" in seen and "451 &lt;script&gt;" in seen

    @pytest.mark.parametrize(("url", "ticket_id", "link"), [
        ("{id}", JS_URL, None),
        ("https://helpdesk.example.org/index.pl?TicketID={id}", "7&Action=AgentTicketDelete#x",
         'href="https://helpdesk.example.org/index.pl?TicketID='
         '7%26Action%3DAgentTicketDelete%23x"')])
    def test_helpdesk_link_is_only_http(self, admin_dashboard, url, ticket_id, link):
        """The helpdesk's ticket id comes from the helpdesk's answer: with ticket_url =
        "{id}" an id of javascript:… must not become a link; an id in an https
        ticket_url is URL-quoted into the link (it cannot add parameters)."""
        d = admin_dashboard(extra=f'[helpdesk]\nticket_url = "{url}"\n')
        assert d.deliver("support@example.org", HOSTILE_MESSAGE) == [250]
        with d.rg.gateway.engine.connect() as conn:
            tid, number = conn.execute(select(Ticket.id, Ticket.number)).one()
        _store_hostile_rows(d, tid)
        with d.rg.gateway.engine.begin() as conn:
            conn.execute(update(Ticket).where(Ticket.id == tid).values(
                helpdesk_ticket_id=ticket_id))
        status, body = d.request(f"/tickets/{number}")
        assert status == 200
        assert_inert("ticket", body)
        assert 'id="helpdesk"' in body and "ticket &lt;script&gt;" in body
        if link:
            assert link in body

    def test_admin_forms_echo_input_as_text(self, admin_dashboard):
        """What an admin pastes into the filter form (a message with </textarea>, a
        filter name breaking out of its attribute) comes back escaped, on the dry run
        and on a refused save."""
        d = admin_dashboard()
        csrf = d.csrf(ADMIN, "/admin/filter")
        msg = f"From: a@customer.test\nSubject: {ALL}\n\n{TEXTAREA}\n"
        data = {"csrf": csrf, "original": "", "name": f"010{ATTR}{SCRIPT}",
                "comment": ALL, "c0_group": "match", "c0_header": "Subject",
                "c0_kind": "value", "c0_pattern": "alert", "s0_header": "X-Deskgate-Queue",
                "s0_value": "Junk", "message": msg, "action": "dry-run"}
        status, body = d.request("/admin/filter", data=data)
        assert status in (200, 422), body
        assert_inert("filter dry run", body)
        assert "&lt;/textarea&gt;&lt;script&gt;" in body
        status, body = d.request("/admin/filter", data={**data, "action": "save",
                                                        "c0_pattern": "("})
        assert status == 422, body
        assert_inert("filter refused", body)
        status, body = d.request("/admin/queue", data={
            "csrf": csrf, "original": "", "name": f"Q{ATTR}{SCRIPT}", "comment": TEXTAREA,
            "auto_response_new": TEXTAREA, "follow_up": "possible", "sign": "none",
            "encrypt": "never"})
        assert status in (200, 422), body
        assert_inert("queue form", body)
        for page in ("/queues", "/tickets", "/admin/address", "/addresses"):
            status, body = d.request(page)
            assert status == 200
            assert_inert(page, body)


class TestHeaders:
    def test_policy_limits_forms_frames_and_base_and_cookie_flags(self, admin_dashboard):
        """Should markup ever slip through, the policy still keeps it harmless: no
        script, no form posting elsewhere, no <base> re-pointing the links, no framing.
        The session cookie a page sets is out of scripts' reach and not sent along by
        other sites' posts; a refused login gets none."""
        import urllib.error
        import urllib.request

        from tests.integration.admin.conftest import basic

        d = admin_dashboard()
        for path, user in (("/log", ADMIN), ("/admin/filter", ADMIN), ("/nope", ADMIN),
                           ("/log", None), ("/log", ("root", "wrong"))):
            req = urllib.request.Request(d.base + path,  # noqa: S310 - loopback
                                         headers=basic(user) if user else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                    headers = resp.headers
            except urllib.error.HTTPError as exc:
                headers = exc.headers
            csp = [p.strip() for p in headers["Content-Security-Policy"].split(";")]
            for directive in ("default-src 'none'", "form-action 'self'",
                              "frame-ancestors 'none'", "base-uri 'none'"):
                assert directive in csp, (path, csp)
            cookie = headers.get("Set-Cookie")
            if user != ADMIN:
                assert cookie is None, path
            elif path != "/nope":                   # the router's 404 is no page
                assert cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie, path
