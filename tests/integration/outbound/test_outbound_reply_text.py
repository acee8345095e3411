"""What a refused recipient leaves behind: the queue's last_error, the article's
transmission error, `deskgate outqueue list/show --json` and the DSN, for an address with
a line break and for a smarthost's multi-line or control-character replies (a real
smtplib client against a small SMTP server on 127.0.0.1 whose RCPT replies are given)."""

from __future__ import annotations

import json
import os
import re
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from gateway.config import Config
from gateway.inbound.bounce import parse_dsn
from gateway.outbound.transport import make_transport
from gateway.runtime import build_runtime
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from gateway.store.tables import Article, CommEntry, OutboundMessage, OutboundRecipient
from tests.unit.outbound.test_outbound_queue import enqueue
from tests.unit.outbound.test_outbound_sender import run_sender

REPO = Path(__file__).resolve().parents[3]
# smtplib's quoteaddr reads this one as <evil@customer.test>; it fails with 553 5.1.3.
BAD = "evil@customer.test>\r\nRCPT TO:<victim@elsewhere.test"
# The smarthost as Postfix names it in a reason: "host 127.0.0.1[127.0.0.1] said: ...".
HOST = "127.0.0.1[127.0.0.1]"
# What no stored or printed text may hold raw: C0 controls, DEL, C1, U+2028/2029.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same, but the line breaks of JSON's own indented layout.
CONTROL_BUT_LF = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class _Session(socketserver.StreamRequestHandler):
    server: Smarthost

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._reply(self.server.greeting)
        if not self.server.greeting.startswith("220"):
            return
        rcpts: list[str] = []
        refuse = False
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "EHLO":
                self._reply("250-smarthost.test\r\n250 8BITMIME")
            elif verb == "MAIL":
                rcpts = []
                # A DSN (null sender) is always taken.
                refuse = not line.upper().startswith("MAIL FROM:<>")
                if refuse and self.server.mail_reply:
                    self._reply(self.server.mail_reply)
                    if self.server.close_after == "MAIL":
                        return
                    continue
                self._reply("250 2.1.0 OK")
            elif verb == "RCPT":
                addr = line[line.index("<") + 1:line.rindex(">")]
                reply = self.server.replies.get(addr, "250 2.1.5 OK")
                if reply.startswith("2"):
                    rcpts.append(addr)
                self._reply(reply)
            elif verb == "DATA":
                if refuse and self.server.data_reply:
                    self._reply(self.server.data_reply)
                    if self.server.close_after == "DATA":
                        return
                    continue
                self._reply("354 go ahead")
                data = b""
                for chunk in self.rfile:
                    if chunk == b".\r\n":
                        break
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                self.server.received.append((rcpts, data))
                self._reply("250 2.0.0 queued")
            elif verb == "QUIT":
                self._reply("221 2.0.0 bye")
                return
            else:
                self._reply("250 2.0.0 OK")


class Smarthost(socketserver.ThreadingTCPServer):
    """Answers RCPT TO:<addr> with replies[addr] (CR LF between the lines of a
    multi-line reply), 250 otherwise; MAIL and the DATA command of a message with a
    sender (not a DSN) with mail_reply and data_reply when one is set (then closes the
    connection if close_after names that command); greets with `greeting` (and closes
    the connection when it is no 220); keeps each message it takes."""

    daemon_threads = True

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Session)
        self.replies = replies
        self.mail_reply = ""
        self.data_reply = ""
        self.close_after = ""
        self.greeting = "220 smarthost.test ESMTP"
        self.received: list[tuple[list[str], bytes]] = []
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost({})
    yield host
    host.stop()


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          capture_output=True, cwd=conf.parent, timeout=60, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def attempt(cfg: Config, rcpts: tuple[str, ...], *, rewrite: dict[str, str] | None = None,
            until: str = "attempted", sender: str = "") -> tuple[Engine, int]:
    """Queue a message (with its article) to `rcpts` through the outbound pipeline, give
    recipients the queued addresses `rewrite` names (and the message the envelope
    `sender`, if given: as a row queued before `deskgate send` refused such
    addresses), run the sender with the configured relay until the first
    attempt is recorded (or, with until="dsn", the DSN is sent too)."""
    engine = make_engine(cfg.database_url)
    migrate(engine)
    with engine.begin() as conn:
        repo.sync_config(conn, cfg)
    rt = build_runtime(cfg)
    oid = enqueue(engine, rt, rcpts=rcpts)
    with engine.begin() as conn:
        for old, new in (rewrite or {}).items():
            conn.execute(update(OutboundRecipient).where(
                OutboundRecipient.outbound_id == oid, OutboundRecipient.address == old)
                .values(address=new))
        if sender:
            conn.execute(update(OutboundMessage).where(OutboundMessage.id == oid)
                         .values(sender=sender))

    def done() -> bool:
        with engine.connect() as conn:
            rows = conn.execute(select(OutboundMessage.status, OutboundMessage.attempts)
                                .order_by(OutboundMessage.id)).all()
        if until == "dsn":
            return [r.status for r in rows] == ["failed", "sent"]
        return rows[0].attempts >= 1

    run_sender(engine, rt, make_transport(cfg), done)
    assert done(), "the attempt was not recorded"
    return engine, oid


def strings(value: object) -> Iterator[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def unwrapped(text: str) -> list[str]:
    """The lines of a DSN's readable part, each continuation line (indented, as Postfix
    wraps them) joined to the line it continues."""
    lines: list[str] = []
    for ln in text.splitlines():
        if ln.startswith("    ") and lines:
            lines[-1] += " " + ln.strip()
        else:
            lines.append(ln)
    return lines


class TestStoredErrorsAreOneLine:
    def test_last_error_transmission_error_and_outqueue_json_hold_no_control_characters(
            self, smarthost, outbound_config):
        """A recipient with CR LF (553, not sent) and one the smarthost defers with a
        two-line reply holding ESC and DEL: the queue's last_error, the article's
        transmission error and `outqueue list/show --json` name both with every control
        character written as an escape (\\r, \\n, \\x1b, \\x7f), the two reply lines as
        one (450-... 450 ...). Before, last_error and the transmission error held the
        address's raw CR LF and the reply's LF, ESC and DEL, and list --json printed DEL
        raw."""
        smarthost.replies["a@customer.test"] = (
            "450-4.2.0 <a@customer.test>\x1b[31m mailbox busy\r\n450 4.2.0 try\x7f later")
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test", "b@customer.test"),
                              rewrite={"b@customer.test": BAD})
        with engine.connect() as conn:
            m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
            art = conn.execute(select(Article).where(Article.id == m.article_id)).one()
        assert (m.status, m.attempts) == ("queued", 1)
        bad_shown = ("<evil@customer.test>\\r\\nRCPT TO:<victim@elsewhere.test>: "
                     "553 5.1.3 address contains a line break")
        deferred = (f"<a@customer.test>: host {HOST} said: 450-4.2.0 "
                    "<a@customer.test>\\x1b[31m mailbox busy 450 4.2.0 try\\x7f later "
                    "(in reply to RCPT TO command)")
        assert not CONTROL.search(m.last_error), repr(m.last_error)
        assert m.last_error == f"{bad_shown}; {deferred}"
        assert art.transmission_status == "failed"
        assert not CONTROL.search(art.transmission_error), repr(art.transmission_error)
        assert art.transmission_error == bad_shown

        res = cli(cfg.conf_dir, "outqueue", "list", "--json")
        assert res.returncode == 0, res.stderr
        assert not CONTROL_BUT_LF.search(res.stdout), repr(res.stdout)
        (row,) = json.loads(res.stdout)
        assert row["last_error"] == m.last_error
        assert not [s for s in strings(row) if CONTROL.search(s)], row

        res = cli(cfg.conf_dir, "outqueue", "show", str(oid), "--json")
        assert res.returncode == 0, res.stderr
        shown = json.loads(res.stdout)
        shown.pop("headers")        # the message's header block, lines as they are
        assert not CONTROL_BUT_LF.search(json.dumps(shown, ensure_ascii=False, indent=2))
        assert not [s for s in strings(shown) if CONTROL.search(s)], shown
        assert {(r["address"], r["last_code"], r["last_reply"])
                for r in shown["recipient_status"]} == {
            ("a@customer.test", 450, f"host {HOST} said: 450-4.2.0 <a@customer.test>"
             "\\x1b[31m mailbox busy 450 4.2.0 try\\x7f later (in reply to RCPT TO command)"),
            ("evil@customer.test>\\r\\nRCPT TO:<victim@elsewhere.test", 553,
             "553 5.1.3 address contains a line break")}

        text = cli(cfg.conf_dir, "outqueue", "show", str(oid))
        assert "\x1b" not in text.stdout and "\x7f" not in text.stdout
        assert not [ln for ln in text.stdout.splitlines() if ln.startswith("RCPT TO")]
        engine.dispose()


class TestMultiLineReplies:
    def test_the_dsn_carries_every_line_of_a_multiline_refusal(self, smarthost,
                                                               outbound_config):
        """RCPT answered '550-5.1.1 first line' / '550 5.1.1 second line': the DSN's
        Diagnostic-Code is 'smtp; 550-5.1.1 first line 550 5.1.1 second line' (as
        Postfix's bounce writes a multi-line reply) and the readable part says the
        same on one (wrapped) line; the DSN parses without defects. Before, the
        Diagnostic-Code lost the second line's code and the readable part broke the reply
        into two lines, the second starting with '5.1.1 second line'."""
        smarthost.replies["a@customer.test"] = ("550-5.1.1 first line\r\n"
                                                "550 5.1.1 second line")
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, _ = attempt(cfg, ("a@customer.test",), until="dsn")
        engine.dispose()
        dsns = [data for _, data in smarthost.received if b"multipart/report" in data]
        assert len(dsns) == 1
        msg = BytesParser(policy=default_policy).parsebytes(dsns[0])
        assert all(not p.defects for p in msg.walk()), [p.defects for p in msg.walk()]
        info = parse_dsn(BytesParser().parsebytes(dsns[0]))
        assert info is not None and info.status == "5.1.1"
        assert info.diagnostic == "550-5.1.1 first line 550 5.1.1 second line"
        head = dsns[0].split(b"\r\n\r\n", 1)[0]
        assert b"\r\n\r\n" in dsns[0] and not re.search(rb"(?<!\r)\n", head)
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        lines = unwrapped(text.get_content())
        assert (f"<a@customer.test>: host {HOST} said: 550-5.1.1 first line 550 5.1.1 "
                "second line (in reply to RCPT TO command)") in lines
        assert not [ln for ln in text.get_content().splitlines()
                    if ln.startswith("5.1.1")], text.get_content()


def the_dsn(host: Smarthost) -> bytes:
    dsns = [data for _, data in host.received if b"multipart/report" in data]
    assert len(dsns) == 1, host.received
    return dsns[0]


class TestWholeTransactionRefused:
    @pytest.mark.parametrize(("stage", "close_after"), [
        ("DATA", ""), ("DATA", "DATA"), ("MAIL", ""), ("MAIL", "MAIL")])
    def test_the_recipient_and_the_dsn_carry_the_servers_reply_once(
            self, smarthost, outbound_config, stage, close_after):
        """The smarthost refuses the whole transaction with '554 5.7.1 rejected' (to the
        DATA command or to MAIL FROM, keeping the connection or closing it after its
        answer): each recipient's reply, the queue's last_error, the article's
        transmission error, the communication log and the DSN carry the reply once,
        and the DSN's Status is the server's 5.7.1 (Diagnostic-Code 'smtp; 554 5.7.1
        rejected'), as Postfix's bounce. Before, a smarthost closing the connection
        after refusing MAIL FROM left the recipients deferred with the closed
        connection as their reply."""
        if stage == "DATA":
            smarthost.data_reply = "554 5.7.1 rejected"
        else:
            smarthost.mail_reply = "554 5.7.1 rejected"
        smarthost.close_after = close_after
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test", "b@customer.test"), until="dsn")
        with engine.connect() as conn:
            m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
            art = conn.execute(select(Article).where(Article.id == m.article_id)).one()
            rcpts = conn.execute(select(OutboundRecipient.address, OutboundRecipient.status,
                                        OutboundRecipient.last_code,
                                        OutboundRecipient.last_reply)
                                 .where(OutboundRecipient.outbound_id == oid)
                                 .order_by(OutboundRecipient.id)).all()
            logged = [v for (v,) in conn.execute(select(CommEntry.value))]
        engine.dispose()
        command = "DATA" if stage == "DATA" else "MAIL FROM"
        said = f"host {HOST} said: 554 5.7.1 rejected (in reply to {command} command)"
        assert [tuple(r) for r in rcpts] == [
            ("a@customer.test", "failed", 554, said),
            ("b@customer.test", "failed", 554, said)]
        assert "554 554" not in m.last_error and "554 5.7.1 rejected" in m.last_error
        assert art.transmission_error == (f"<a@customer.test>: {said}; "
                                          f"<b@customer.test>: {said}")
        assert not [v for v in logged if "554 554" in v], logged
        assert f"<a@customer.test>: {said} (permanent failure)" in logged
        data = the_dsn(smarthost)
        assert b"554 554" not in data
        msg = BytesParser(policy=default_policy).parsebytes(data)
        report = next(p for p in msg.walk()
                      if p.get_content_type() == "message/delivery-status")
        blocks = report.get_payload()[1:]
        assert [(b["Status"], b["Diagnostic-Code"]) for b in blocks] == [
            ("5.7.1", "smtp; 554 5.7.1 rejected")] * 2
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        assert f"<a@customer.test>: {said}" in unwrapped(text.get_content())

    @pytest.mark.parametrize(("greeting", "code", "text"), [
        ("554 5.7.1 no service here", 554, "5.7.1 no service here"),
        ("421 4.3.2 busy", 421, "4.3.2 busy")])
    def test_a_refused_connection_defers_with_the_servers_reply_once(
            self, smarthost, outbound_config, greeting, code, text):
        """The smarthost greets with a refusal: every recipient is deferred (a refusal of
        the connection is the relay's to fix, retried even when 5xx) with the server's
        reply once, '554 5.7.1 no service here' in the recipient's reply, the queue's
        last_error and the communication log. Before, they read '454 554 5.7.1 no
        service here' and '421 421 4.3.2 busy'."""
        smarthost.greeting = greeting
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test",))
        with engine.connect() as conn:
            m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
            rcpt = conn.execute(select(OutboundRecipient.status, OutboundRecipient.last_code,
                                       OutboundRecipient.last_reply)
                                .where(OutboundRecipient.outbound_id == oid)).one()
            logged = [v for (v,) in conn.execute(select(CommEntry.value))]
        engine.dispose()
        said = f"host {HOST} refused to talk to me: {greeting}"
        assert (m.status, tuple(rcpt)) == ("queued", ("pending", code, said))
        assert m.last_error == said
        deferred = [v for v in logged if v.startswith("<a@customer.test>: ")]
        assert len(deferred) == 1 and deferred[0].startswith(
            f"<a@customer.test>: {said}; next attempt "), deferred

    def test_a_refused_connection_defers_the_others_of_a_refused_address(
            self, smarthost, outbound_config):
        """A queued address with CR LF fails for good (553 5.1.3); the other recipient,
        whose connection the smarthost refused with 554 5.7.1, is deferred with that reply
        once, not failed."""
        smarthost.greeting = "554 5.7.1 no service here"
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test", "b@customer.test"),
                              rewrite={"b@customer.test": BAD})
        with engine.connect() as conn:
            rcpts = conn.execute(select(OutboundRecipient.status, OutboundRecipient.last_code,
                                        OutboundRecipient.last_reply)
                                 .where(OutboundRecipient.outbound_id == oid)
                                 .order_by(OutboundRecipient.id)).all()
        engine.dispose()
        assert [tuple(r) for r in rcpts] == [
            ("pending", 554, f"host {HOST} refused to talk to me: 554 5.7.1 no service here"),
            ("failed", 553, "553 5.1.3 address contains a line break")]


class TestReasonsAsPostfixWritesThem:
    def test_a_refusal_at_rcpt_to_names_the_host_and_the_command_everywhere(
            self, smarthost, outbound_config):
        """RCPT TO refused with 550 5.1.1: the queue's last_error, `outqueue list --json`,
        the communication log and the DSN's readable part say 'host
        127.0.0.1[127.0.0.1] said: 550 5.1.1 ... (in reply to RCPT TO command)', as
        Postfix does; the DSN's Diagnostic-Code is the reply alone, its Remote-MTA the
        smarthost, its per-message fields name the queue id and the sender; `outqueue
        show` gives the recipient's last_reply worded as last_error (it was the server's
        reply alone)."""
        smarthost.replies["a@customer.test"] = "550 5.1.1 <a@customer.test>: unknown user"
        cfg = outbound_config(smarthost.port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test",), until="dsn")
        with engine.connect() as conn:
            m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
            logged = [v for (v,) in conn.execute(select(CommEntry.value))]
        engine.dispose()
        said = (f"host {HOST} said: 550 5.1.1 <a@customer.test>: unknown user "
                "(in reply to RCPT TO command)")
        assert m.last_error == f"<a@customer.test>: {said}"
        assert f"<a@customer.test>: {said} (permanent failure)" in logged
        res = cli(cfg.conf_dir, "outqueue", "list", "--all", "--json")
        assert res.returncode == 0, res.stderr
        row = next(r for r in json.loads(res.stdout) if r["id"] == oid)
        assert row["last_error"] == m.last_error
        res = cli(cfg.conf_dir, "outqueue", "show", str(oid), "--json")
        (rcpt,) = json.loads(res.stdout)["recipient_status"]
        assert (rcpt["last_code"], rcpt["last_reply"]) == (550, said)
        text = cli(cfg.conf_dir, "outqueue", "show", str(oid)).stdout
        assert f"  <a@customer.test> failed after 1 tries: {said}\n" in text

        msg = BytesParser(policy=default_policy).parsebytes(the_dsn(smarthost))
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        assert f"<a@customer.test>: {said}" in unwrapped(text.get_content())
        report = next(p for p in msg.walk()
                      if p.get_content_type() == "message/delivery-status")
        per_msg, block = report.get_payload()
        assert (per_msg["X-Deskgate-Queue-ID"], per_msg["X-Deskgate-Sender"]) == (
            str(oid), f"rfc822; {m.sender}")
        assert (block["Remote-MTA"], block["Diagnostic-Code"]) == (
            "dns; 127.0.0.1", "smtp; 550 5.1.1 <a@customer.test>: unknown user")

    def test_a_smarthost_that_is_down_is_named_with_its_address_and_port(
            self, outbound_config):
        """Nothing listens on the relay's port: the message is deferred and its
        last_error and log say 'connect to 127.0.0.1[127.0.0.1]:PORT: Connection
        refused', as Postfix does."""
        from tests.conftest import free_port

        port = free_port()
        cfg = outbound_config(port, submission=False, retry="1h*5")
        engine, oid = attempt(cfg, ("a@customer.test",))
        with engine.connect() as conn:
            m = conn.execute(select(OutboundMessage).where(OutboundMessage.id == oid)).one()
            logged = [v for (v,) in conn.execute(select(CommEntry.value))]
        engine.dispose()
        said = f"connect to {HOST}:{port}: Connection refused"
        assert (m.status, m.last_error) == ("queued", said)
        assert said in logged
