"""The dashboard over HTTP: pages, escaping, access control, /metrics, /healthz."""

from __future__ import annotations

import base64
import json

from prometheus_client.parser import text_string_to_metric_families

from gateway.passwords import hash_password
from tests.integration.ops.ops_web import message


def post(url: str) -> tuple[int, dict[str, str], str]:
    """POST an empty form; (status, headers, body) of the error answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, data=b"", timeout=30) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                    "Referrer-Policy")


class TestPages:
    def test_pages_show_log_and_tickets(self, dashboard):
        """Overview, list, detail, tickets and ticket pages render what LMTP stored and
        logged: the message's communication and the connection's."""
        d = dashboard()
        assert d.deliver(message(1)) == [250]
        status, headers, body = d.get("/log")
        assert status == 200 and "text/html" in headers["Content-Type"]
        assert 'id="failed"' in body and "Processing now" in body
        status, _, body = d.get("/log/list")
        assert status == 200 and "2 communications<" in body and "LMTP" in body
        with d.rg.gateway.engine.connect() as conn:
            from sqlalchemy import select

            from gateway.store.tables import CommObject, Ticket
            ids = {t: c for t, c in conn.execute(
                select(CommObject.type, CommObject.communication_id))}
            number = conn.execute(select(Ticket.number)).scalar_one()
        status, _, body = d.get(f"/log/{ids['Message']}")
        assert status == 200 and "Envelope" in body and "from &lt;a@customer.test&gt;" in body
        assert f"/tickets/{number}" in body
        status, _, body = d.get(f"/log/{ids['Connection']}")
        assert status == 200 and "Summary" in body and "1 message(s): 1 stored" in body
        status, _, body = d.get("/tickets")
        assert status == 200 and number in body and "Printer broken 1" in body
        status, _, body = d.get(f"/tickets/{number}")
        assert status == 200 and "Hello, message 1." in body and "Crypto" in body
        assert d.get("/log/99999")[0] == 404
        assert d.get("/tickets/nope")[0] == 404

    def test_html_is_escaped(self, dashboard):
        """Subjects and bodies with markup are shown as text, never as HTML."""
        d = dashboard()
        assert d.deliver(message(2, subject="<script>alert(1)</script>")) == [250]
        _, _, body = d.get("/tickets")
        assert "<script>alert(1)</script>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body

    def test_outbound_queue_page_and_gauges(self, dashboard):
        """The outbound page lists waiting messages with attempts and last error; the
        queue depth and age gauges follow the queued rows."""
        from datetime import UTC, datetime, timedelta

        from sqlalchemy import insert

        from gateway.store.tables import OutboundMessage, OutboundRecipient
        d = dashboard()
        status, _, body = d.get("/outbound")
        assert status == 200 and "the queue is empty" in body
        now = datetime.now(UTC)
        with d.rg.gateway.engine.begin() as conn:
            oid = conn.execute(insert(OutboundMessage).values(
                queue="Support", sender="support@example.org", data=b"Subject: x\r\n\r\nx",
                size=14, status="queued", attempts=2, next_attempt=now + timedelta(minutes=5),
                last_error="451 4.3.0 <smarthost> try later", created=now - timedelta(hours=1),
                updated=now).returning(OutboundMessage.id)).scalar_one()
            conn.execute(insert(OutboundRecipient).values(
                outbound_id=oid, address="cust@customer.test", status="pending", updated=now))
        status, _, body = d.get("/outbound")
        assert status == 200 and "cust@customer.test" in body
        assert "451 4.3.0 &lt;smarthost&gt; try later" in body
        status, _, body = d.get(f"/outbound/{oid}")
        assert status == 200 and "Subject: x" in body and "cust@customer.test" in body
        assert d.get("/outbound/9999")[0] == 404
        _, _, text = d.get("/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["deskgate_outbound_queue_depth"].samples[0].value == 1
        assert 3500 < fams["deskgate_outbound_queue_oldest_seconds"].samples[0].value < 4000

    def test_list_filters_and_bad_input(self, dashboard):
        """Filters narrow the list; an invalid filter shows an error instead of failing."""
        d = dashboard("[lmtp]\ntrusted = true\n")
        d.deliver(message(3), mail_from="cust3@customer.test")
        d.deliver(message(5, extra="X-OTOBO-Queue: Nowhere\r\n"))
        _, _, body = d.get("/log/list")
        assert "4 communications" in body        # a message and a connection each
        _, _, body = d.get("/log/list?priority=Error")
        assert "1 communication<" in body
        _, _, body = d.get("/log/list?search=cust3%40customer")
        assert "1 communication<" in body
        _, _, body = d.get("/log/list?search=nothing-like-this")
        assert "0 communications" in body
        status, _, body = d.get("/log/list?sort=nonsense")
        assert status == 200 and 'id="filter-error"' in body
        status, _, body = d.get("/log/list?since=yesterday-ish")
        assert status == 200 and "neither a time nor a duration" in body


class TestAccess:
    def test_token_required_when_configured(self, dashboard):
        """With a token every page but /healthz needs Bearer or ?token= (which a
        browser exchanges for a session cookie: links then carry no token)."""
        import urllib.request

        d = dashboard('token = "s3cret-token"\n')
        status, headers, _ = d.get("/log")
        assert status == 401 and "Basic" in headers["WWW-Authenticate"]
        assert d.get("/log", {"Authorization": "Bearer wrong"})[0] == 401
        assert d.get("/log", {"Authorization": "Bearer s3cret-token"})[0] == 200
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(d.base + "/log/list?token=s3cret-token", timeout=30) as resp:
            assert resp.status == 200 and resp.url == d.base + "/log/list"
            assert "s3cret-token" not in resp.read().decode()
        assert d.get("/metrics")[0] == 401
        assert d.get("/healthz")[0] == 200

    def test_basic_auth_users(self, dashboard):
        """[[dashboard.user]] with a `deskgate passwd` hash logs in by basic auth."""
        h = hash_password("correct horse", ln=10)
        d = dashboard(f'[[dashboard.user]]\nname = "ops"\npassword_hash = "{h}"\n')

        def basic(user, pw):
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode())
                    .decode()}
        assert d.get("/log")[0] == 401
        assert d.get("/log", basic("ops", "wrong"))[0] == 401
        assert d.get("/log", basic("other", "correct horse"))[0] == 401
        assert d.get("/log", basic("ops", "correct horse"))[0] == 200
        assert d.get("/log", basic("ops", "correct horse"))[0] == 200

    def test_security_headers(self, dashboard):
        """Pages forbid framing and sniffing and allow no scripts."""
        d = dashboard()
        _, headers, _ = d.get("/log")
        assert headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in headers["Content-Security-Policy"]

    def test_security_headers_are_the_documented_ones(self, dashboard):
        """Every security header docs/security.md states is sent with exactly that value
        (the CSP included), and every one sent is documented."""
        import re
        from pathlib import Path

        doc = " ".join((Path(__file__).resolve().parents[3] / "docs" / "security.md")
                       .read_text().split())
        names = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                 "Referrer-Policy")
        stated = dict(re.findall(rf"`({'|'.join(names)}): ([^`]+)`", doc))
        d = dashboard()
        for path in ("/log", "/tickets", "/healthz"):
            _, headers, _ = d.get(path)
            sent = {n: headers[n] for n in names if n in headers}
            assert sent == stated, path


    def test_security_headers_on_refusals_and_errors(self, dashboard):
        """421, 400 (its text quotes the URL), 404 and 405 answers carry the same
        security headers as the pages."""
        d = dashboard()
        _, page, _ = d.get("/log")
        answers = [d.get("/log", {"Host": "evil.test"}), d.get("/log/99999999999999999999"),
                   d.get("/no/such/page"), post(d.base + "/metrics")]
        assert [a[0] for a in answers] == [421, 400, 404, 405]
        for status, headers, _ in answers:
            assert {n: headers.get(n) for n in SECURITY_HEADERS} == {
                n: page[n] for n in SECURITY_HEADERS}, status

    def test_security_headers_on_401(self, dashboard):
        """The login prompt (401) carries the pages' security headers too."""
        d = dashboard('token = "s3cret-token"\n')
        _, page, _ = d.get("/log", {"Authorization": "Bearer s3cret-token"})
        status, headers, _ = d.get("/log")
        assert status == 401
        assert {n: headers.get(n) for n in SECURITY_HEADERS} == {
            n: page[n] for n in SECURITY_HEADERS}

class TestMetricsAndHealth:
    def test_metrics_parse_and_count_lmtp(self, dashboard):
        """/metrics parses with prometheus_client and counts LMTP messages and latency."""
        d = dashboard()

        def value(body, name, **labels):
            for fam in text_string_to_metric_families(body):
                for s in fam.samples:
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                        return s.value
            return 0.0
        before = d.get("/metrics")[2]
        n0 = value(before, "deskgate_messages_total", door="lmtp", direction="in", result="new")
        c0 = value(before, "deskgate_pipeline_seconds_count", door="lmtp")
        d.deliver(message(4))
        d.deliver(message(4))                 # a redelivery: duplicate
        status, headers, body = d.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"deskgate_messages", "deskgate_pipeline_seconds",
                "deskgate_outbound_queue_depth", "deskgate_poller_errors",
                "deskgate_filter_timeouts"} <= names
        assert value(body, "deskgate_messages_total", door="lmtp", direction="in",
                     result="new") == n0 + 1
        assert value(body, "deskgate_messages_total", door="lmtp", direction="in",
                     result="duplicate") >= 1
        assert value(body, "deskgate_pipeline_seconds_count", door="lmtp") == c0 + 2

    def test_healthz_of_a_node_without_lmtp(self, make_confdir):
        """`[lmtp] listen = []` (a node that only polls or only runs submission):
        `deskgate serve` reports healthy without any LMTP listener."""
        import urllib.request

        from tests.conftest import free_port
        from tests.peers.serve import start_serve, stop_serve, wait_for

        port = free_port()
        conf = make_confdir({"60-node.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                                             "[lmtp]\nlisten = []\n"})
        proc = start_serve(conf)
        got: dict[str, object] = {}

        def healthz() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    got.update(status=r.status, body=json.loads(r.read()))
            except urllib.error.HTTPError as exc:
                got.update(status=exc.code, body=json.loads(exc.read()))
            except OSError:
                return False
            return True

        try:
            assert wait_for(healthz, 60)
            assert got["body"]["listeners"] == 0
            assert got["status"] == 200 and got["body"]["ok"] is True
        finally:
            stop_serve(proc)

    def test_healthz(self, dashboard):
        """/healthz answers 200 with the database and listeners up, 503 when a listener is down."""
        d = dashboard()
        status, _, body = d.get("/healthz")
        data = json.loads(body)
        assert status == 200 and data["ok"] and data["database"]
        assert data["listeners"] == data["listeners_serving"] == 2
        srv = d.rg.gateway.servers[1]
        d.rg.loop.call_soon_threadsafe(srv.close)
        import time
        for _ in range(50):
            if not srv.is_serving():
                break
            time.sleep(0.05)
        status, _, body = d.get("/healthz")
        assert status == 503 and json.loads(body)["listeners_serving"] == 1
