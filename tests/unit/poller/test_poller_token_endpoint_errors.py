"""What the Authentication error says when the token endpoint answers badly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.config import load_config
from gateway.inbound.poller.oauth2 import TokenSource
from gateway.inbound.poller.session import MailboxError

ACCOUNT = """
[[account]]
name = "m365"
type = "imaps"
host = "outlook.office365.com"
login = "helpdesk@example.org"
[account.oauth2]
token_url = "{url}"
client_id = "abc"
client_secret = "s3cret-client"
refresh_token = "rt-s3cret"
"""


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[tuple[int, str, bytes]]]]:
    """A loopback token endpoint answering with answers[0] = (status, content type, body)."""
    answers: list[tuple[int, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code, ctype, body = answers[0]
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/token", answers
    srv.shutdown()
    srv.server_close()


def refused(make_confdir, url: str) -> MailboxError:
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT.format(url=url)}))
    ts = TokenSource(cfg.account[0], cfg.root, lambda a: None, lambda *a: None)
    with pytest.raises(MailboxError) as info:
        ts.get()
    assert "s3cret" not in info.value.reason
    return info.value


def test_server_error_is_not_called_a_refusal(make_confdir, endpoint):
    url, answers = endpoint
    answers.append((500, "text/html", b"<html>rt-s3cret oops</html>"))
    exc = refused(make_confdir, url)
    assert exc.step == "auth" and exc.temporary
    assert url in exc.reason and "HTTP 500 Internal Server Error" in exc.reason
    assert "refused" not in exc.reason


def test_a_page_instead_of_json_names_the_endpoint_and_what_it_sent(make_confdir, endpoint):
    url, answers = endpoint
    answers.append((200, "text/html; charset=utf-8", b"<html>Sign in rt-s3cret</html>"))
    exc = refused(make_confdir, url)
    assert url in exc.reason and "HTTP 200" in exc.reason and "text/html" in exc.reason
    assert "not JSON" in exc.reason


def test_a_refusal_keeps_the_error_code(make_confdir, endpoint):
    url, answers = endpoint
    answers.append((400, "application/json",
                    b'{"error":"invalid_grant","error_description":"AADSTS70008: expired"}'))
    exc = refused(make_confdir, url)
    assert not exc.temporary
    assert "refused" in exc.reason and "HTTP 400 invalid_grant: AADSTS70008: expired" in exc.reason


def test_an_answer_without_access_token_names_what_it_had(make_confdir, endpoint):
    url, answers = endpoint
    answers.append((200, "application/json",
                    b'{"token_type":"Bearer","refresh_token":"rt-s3cret-new"}'))
    exc = refused(make_confdir, url)
    assert url in exc.reason and "without access_token" in exc.reason
    assert "token_type, refresh_token" in exc.reason


def test_an_untrusted_https_endpoint_is_not_called_unreachable(make_confdir, tmp_path):
    """A token endpoint whose certificate is refused was reached: the error says which
    certificate check failed and what it was checked against."""
    import ssl

    from tests.peers.ca import TestCA

    ca = TestCA(tmp_path / "ca")
    cert = ca.issue("tokens", hosts=("127.0.0.1",), filename="tokens")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/token"
        exc = refused(make_confdir, url)
    finally:
        srv.shutdown()
        srv.server_close()
    assert "unreachable" not in exc.reason
    assert url in exc.reason and "not trusted: unable to get local issuer certificate" in \
        exc.reason and "system CA store" in exc.reason, exc.reason
