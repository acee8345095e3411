"""What goes wrong at a door is in the communication log: a communication whose status
says so (Warning, Failed) and entries naming the problem, never a secret."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import time
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway import commlog_views as views
from gateway.inbound.pipeline import Pipeline
from gateway.store.tables import CommEntry
from tests.integration.helpdesk.conftest import SECRET as WEBHOOK_SECRET
from tests.integration.helpdesk.conftest import receiver, webhook_gateway  # noqa: F401
from tests.integration.ops.ops_web import message
from tests.integration.outbound.conftest import (
    outbound_config,  # noqa: F401 - fixture
    submission_port,
    wait_for,
)
from tests.peers.ca import TestCA
from tests.peers.lmtp import LmtpClient
from tests.peers.smarthost import AuthSink

MSG = b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: Hi\r\n\r\nbody\r\n"
SECRET = "Wr0ng-hunter2-pass"


def comms(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [views.get_communication(conn, r["id"]) for r in
                views.list_communications(conn, views.LogFilter(sort="id"))]


def connection_comms(engine: Any, account_type: str) -> list[dict[str, Any]]:
    """The communications of one door with only a Connection object."""
    return [d for d in comms(engine) if d["account_type"] == account_type
            and [o["type"] for o in d["objects"]] == ["Connection"]]


def entries(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["priority"], e["key"], e["value"]) for o in d["objects"] for e in o["entries"]]


def wait_comm(engine: Any, account_type: str, pred: Any = lambda d: True) -> dict[str, Any]:
    return wait_for(lambda: next((d for d in connection_comms(engine, account_type)
                                  if pred(d)), None), what=f"{account_type} communication")


@pytest.fixture
def open_submission(outbound_config):  # noqa: F811 - the imported fixture
    """A submission listener 127.0.0.0/8 may use without AUTH, with small limits."""

    def make(relay_port: int, extra: str = ""):
        return outbound_config(relay_port, extra_submission=f"""
allow_networks = ["127.0.0.0/8"]
max_recipients = 1
max_message_size = "1KiB"
{extra}
""")

    return make


@pytest.fixture
def tls_submission(tmp_path, outbound_config):  # noqa: F811 - the imported fixture
    """STARTTLS, one user 'app' (password s3cret), no allowed network."""
    from gateway.passwords import hash_password

    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("submission", hosts=("127.0.0.1", "localhost"))
    pw_hash = hash_password("s3cret", ln=10)

    def make(relay_port: int):
        import ssl

        cfg = outbound_config(relay_port, extra_submission=f"""
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
max_auth_failures = 10
[[submission.user]]
name = "app"
password_hash = "{pw_hash}"
""")
        return cfg, ssl.create_default_context(cafile=str(ca.ca_path))

    return make


class TestSubmission:
    def test_refused_sender_is_a_warning_naming_it(self, outbound_config,  # noqa: F811
                                                   run_gateway):
        """MAIL from a client that may not submit (no AUTH, outside allow_networks): 530,
        and a Warning communication with a Notice naming the sender and the reply."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port, extra_submission="allow_networks = []")
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 530
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert (d["direction"], d["status"]) == ("Outgoing", "Warning")
        assert d["account"].startswith("127.0.0.1:")
        assert any(p == "Notice" and k == "MAIL" and "<app@internal.test>" in v and "530" in v
                   for p, k, v in entries(d)), entries(d)

    def test_refused_recipients_are_notices(self, open_submission, run_gateway):
        """Over max_recipients (452) and an address without a domain (553): each a Notice
        naming the recipient; the message of the good recipient is queued all the same."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                assert s.mail("app@internal.test")[0] == 250
                assert s.docmd("RCPT TO:<nobody>")[0] == 553
                assert s.rcpt("cust@customer.test")[0] == 250
                assert s.rcpt("other@customer.test")[0] == 452
                assert s.data(MSG)[0] == 250
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert d["status"] == "Warning"
        rcpt = [v for p, k, v in entries(d) if (p, k) == ("Notice", "RCPT")]
        assert len(rcpt) == 2
        assert "<nobody>" in rcpt[0] and "553" in rcpt[0]
        assert "<other@customer.test>" in rcpt[1] and "452" in rcpt[1]

    def test_message_over_the_size_limit_is_a_notice(self, open_submission, run_gateway):
        """DATA over max_message_size: 552, a Notice naming the sender and the reply."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.ehlo()
                s.mail("app@internal.test")
                s.rcpt("cust@customer.test")
                assert s.data(MSG + b"x" * 4000 + b"\r\n")[0] == 552
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert d["status"] == "Warning"
        assert any(p == "Notice" and k == "DATA" and "<app@internal.test>" in v and "552" in v
                   for p, k, v in entries(d)), entries(d)

    def test_client_gone_during_data_is_failed(self, open_submission, run_gateway):
        """The client disconnects in the middle of DATA: a Failed communication whose
        Error says where the transaction was lost, with its sender."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port)
            rg = run_gateway(cfg)
            with socket.create_connection(("127.0.0.1", submission_port(cfg)), 10) as sock:
                f = sock.makefile("rb")
                f.readline()
                for cmd in (b"HELO app\r\n", b"MAIL FROM:<app@internal.test>\r\n",
                            b"RCPT TO:<cust@customer.test>\r\n", b"DATA\r\n"):
                    sock.sendall(cmd)
                    assert f.readline()[:1] in (b"2", b"3")
                sock.sendall(b"Subject: half\r\n\r\nhalf a mes")
                f.close()
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert d["status"] == "Failed"
        assert any(p == "Error" and k == "Connection" and "during DATA" in v
                   and "<app@internal.test>" in v for p, k, v in entries(d)), entries(d)

    def test_timeout_in_a_transaction_is_failed(self, open_submission, run_gateway):
        """The idle timeout ends an open transaction: Failed, "timed out"."""
        with AuthSink() as sink:
            cfg = open_submission(sink.port, extra='timeout = "1s"')
            rg = run_gateway(cfg)
            s = smtplib.SMTP("127.0.0.1", submission_port(cfg))
            s.ehlo()
            s.mail("app@internal.test")
            s.rcpt("cust@customer.test")
            time.sleep(1.8)
            s.close()
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert d["status"] == "Failed"
        assert any(p == "Error" and "timed out" in v and "<app@internal.test>" in v
                   for p, k, v in entries(d)), entries(d)

    def test_failed_starttls_handshake_is_logged(self, tls_submission, run_gateway):
        """STARTTLS whose handshake fails (plain text after 220): a Warning naming it."""
        with AuthSink() as sink:
            cfg, _ = tls_submission(sink.port)
            rg = run_gateway(cfg)
            with socket.create_connection(("127.0.0.1", submission_port(cfg)), 10) as sock:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"HELO app\r\n")
                f.readline()
                sock.sendall(b"STARTTLS\r\n")
                assert f.readline().startswith(b"220")
                sock.sendall(b"this is not a TLS record\r\n" * 20)
                sock.settimeout(5)
                with contextlib.suppress(OSError):
                    f.read()
                f.close()
            d = wait_comm(rg.gateway.engine, "SMTP",
                          lambda d: any(k == "STARTTLS" for _, k, _ in entries(d)))
        assert d["status"] in ("Warning", "Failed")
        assert any(p in ("Warn", "Error") and k == "STARTTLS" and "handshake failed" in v
                   for p, k, v in entries(d)), entries(d)

    def test_failed_implicit_tls_handshake_is_logged(self, tmp_path, outbound_config,  # noqa: F811
                                                     run_gateway):
        """A client speaking plain text to tls_listen: a Warning naming the TLS error."""
        from tests.conftest import free_port

        ca = TestCA(tmp_path / "ca")
        leaf = ca.issue("submission", hosts=("127.0.0.1", "localhost"))
        port = free_port()
        with AuthSink() as sink:
            cfg = outbound_config(sink.port, extra_submission=f"""
tls_listen = ["127.0.0.1:{port}"]
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
""")
            rg = run_gateway(cfg)
            with socket.create_connection(("127.0.0.1", port), 10) as sock:
                sock.sendall(b"EHLO plain.example\r\n")
                sock.settimeout(5)
                with contextlib.suppress(OSError):
                    sock.recv(100)
            d = wait_comm(rg.gateway.engine, "SMTP")
        assert d["status"] == "Warning" and d["account"].startswith("127.0.0.1:")
        assert any(p == "Warn" and k == "TLS" and "handshake failed" in v
                   for p, k, v in entries(d)), entries(d)

    def test_auth_failures_never_log_the_password(self, tls_submission, run_gateway):
        """Wrong passwords (PLAIN, LOGIN) and a PLAIN response that cannot be split: the
        failures are logged with the login name, and no entry holds the password or the
        base64 AUTH data."""
        with AuthSink() as sink:
            cfg, ctx = tls_submission(sink.port)
            rg = run_gateway(cfg)
            plain = base64.b64encode(f"\0app\0{SECRET}".encode()).decode()
            broken = base64.b64encode(f"app\0{SECRET}".encode()).decode()
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.starttls(context=ctx)
                s.ehlo()
                assert s.docmd("AUTH", f"PLAIN {plain}")[0] == 535
                assert s.docmd("AUTH", f"PLAIN {broken}")[0] == 501
                assert s.docmd("AUTH", "LOGIN " + base64.b64encode(b"app").decode())[0] == 334
                assert s.docmd(base64.b64encode(SECRET.encode()).decode())[0] == 535
                # A client out of step sends the password as a command: 500, word unlogged.
                assert s.docmd(base64.b64encode(SECRET.encode()).decode())[0] == 500
            d = wait_comm(rg.gateway.engine, "SMTP", lambda d: any(
                k == "AUTH" for _, k, _ in entries(d)))
            wait_for(lambda: sum(1 for d in comms(rg.gateway.engine) for _, k, _ in entries(d)
                                 if k == "Auth") == 2, what="two Auth entries")
            with rg.gateway.engine.connect() as conn:
                values = list(conn.execute(select(CommEntry.value)).scalars())
        assert any(k == "SMTP" and "not recognized" in v for _, k, v in entries(d))
        auth = [v for v in values if "AUTH failed for 'app'" in v]
        assert len(auth) == 2
        secrets = (SECRET, plain, broken, base64.b64encode(SECRET.encode()).decode())
        leaked = [v for v in values if any(x.upper() in v.upper() for x in secrets)]
        assert leaked == []


class TestLmtp:
    def test_database_down_names_the_temporary_failure(self, config, run_gateway,
                                                       monkeypatch):
        """The commit fails because the database is unavailable: 451 to the MTA, and the
        connection's communication is a Warning with an entry naming the message, the
        reply and the cause, not only a count."""
        async def down(self, *a, **kw):
            raise OperationalError("INSERT", {}, Exception("connection refused"))

        monkeypatch.setattr(Pipeline, "_commit", down)
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("cust1@customer.test", ["support@example.org"], message(1))
        assert [d[0] for d in data] == [451]
        c.close()
        d = wait_comm(rg.gateway.engine, "LMTP")
        assert d["status"] == "Warning"
        warn = [v for p, k, v in entries(d) if p == "Warn" and k == "Message"]
        assert len(warn) == 1, entries(d)
        assert "<cust1@customer.test>" in warn[0] and "451" in warn[0]
        assert "database" in warn[0] and "OperationalError" in warn[0]

    def test_limits_and_xforward_refusals_are_named(self, config, run_gateway):
        """Over max_recipients, every recipient refused (DATA then refused), a message
        over max_message_size and a malformed XFORWARD: each a Notice naming what was
        refused and the reply; the connection is a Warning counting the message too big."""
        import dataclasses

        cfg = dataclasses.replace(config, lmtp=dataclasses.replace(
            config.lmtp, max_recipients=1, max_message_size=2000))
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("XFORWARD NOSUCH=1")[0] == 501
        assert c.cmd("MAIL FROM:<a@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<nobody@example.org>")[0] == 550
        assert c.cmd("DATA")[0] == 503
        assert c.cmd("RSET")[0] == 250
        rcpt, data = c.transaction("b@customer.test", ["support@example.org",
                                                       "sales@example.org"],
                                   message(1, extra="X-Pad: " + "x" * 3000 + "\r\n"))
        assert [r[0] for r in rcpt] == [250, 452] and [d[0] for d in data] == [552]
        c.close()
        d = wait_comm(rg.gateway.engine, "LMTP")
        assert d["status"] == "Warning"
        notices = {k: v for p, k, v in entries(d) if p == "Notice"}
        assert "XFORWARD" in notices and "501" in notices["XFORWARD"], notices
        assert "<sales@example.org>" in notices["RCPT"] and "452" in notices["RCPT"]
        assert "503" in notices["DATA"] or "552" in notices["DATA"]
        got = entries(d)
        assert any(k == "DATA" and "<b@customer.test>" in v and "552" in v
                   for _, k, v in got), got
        assert "1 too big" in got[-1][2] and "2 recipient(s) refused" in got[-1][2]

    def test_delivery_that_raised_names_the_exception(self, config, run_gateway,
                                                      monkeypatch):
        """A delivery that raised (a bug): 451, and an entry naming the exception."""
        async def broken(self, *a, **kw):
            raise RuntimeError("stage exploded")

        monkeypatch.setattr(Pipeline, "deliver", broken)
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("cust1@customer.test", ["support@example.org"], message(1))
        assert [d[0] for d in data] == [451]
        c.close()
        d = wait_comm(rg.gateway.engine, "LMTP")
        assert d["status"] == "Warning"
        warn = [v for p, k, v in entries(d) if p == "Warn" and k == "Message"]
        assert len(warn) == 1 and "RuntimeError: stage exploded" in warn[0], entries(d)
        assert "<cust1@customer.test>" in warn[0] and "451" in warn[0]


def attempts(engine: Any) -> list[dict[str, Any]]:
    """The outbound delivery attempts' communications (their Message has an Attempt)."""
    return [d for d in comms(engine) if any(
        o["type"] == "Message" and any(e["key"] == "Attempt" for e in o["entries"])
        for o in d["objects"])]


def submit(cfg: Any, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        s.ehlo()
        assert s.sendmail("app@internal.test", rcpts, MSG) == {}


class TestOutbound:
    def test_deferral_bounce_and_dsn_are_named(self, outbound_config, run_gateway):  # noqa: F811
        """The smarthost answers 451 to one recipient and 550 to the other: the attempt
        is Failed, with a Warn Deferred and an Error Failed naming each recipient and the
        reply, and a Notice that the failure DSN was queued."""
        with AuthSink() as sink:
            sink.set_script(lambda stage, a: "451 4.7.1 greylisted" if a == "a@customer.test"
                            else "550 5.1.1 no such user" if a == "b@customer.test" else None)
            cfg = outbound_config(sink.port, retry="1h", extra_submission=(
                'allow_networks = ["127.0.0.0/8"]'))
            rg = run_gateway(cfg)
            submit(cfg, ["a@customer.test", "b@customer.test"])
            d = wait_for(lambda: next(iter(attempts(rg.gateway.engine)), None),
                         what="attempt")
        assert (d["direction"], d["status"]) == ("Outgoing", "Failed")
        got = entries(d)
        assert any(p == "Warn" and k == "Deferred" and "<a@customer.test>" in v and "451" in v
                   and "greylisted" in v for p, k, v in got), got
        assert any(p == "Error" and k == "Failed" and "<b@customer.test>" in v and "550" in v
                   for p, k, v in got), got
        assert any(p == "Notice" and k == "DSN" and "<app@internal.test>" in v
                   and "queued as #" in v for p, k, v in got), got

    def test_connect_refused_is_a_failed_connection(self, outbound_config,  # noqa: F811
                                                    run_gateway):
        """Nothing listens on the smarthost's port: the Connection is Failed with an
        Error naming the address and the cause; the message is deferred (Warn)."""
        from tests.conftest import free_port

        port = free_port()
        cfg = outbound_config(port, retry="1h",
                              extra_submission='allow_networks = ["127.0.0.0/8"]')
        rg = run_gateway(cfg)
        submit(cfg, ["a@customer.test"])
        d = wait_for(lambda: next(iter(attempts(rg.gateway.engine)), None), what="attempt")
        conn_obj, msg_obj = d["objects"]
        assert (conn_obj["type"], conn_obj["status"]) == ("Connection", "Failed")
        assert any(e["priority"] == "Error" and e["key"] == "Connect"
                   and f"connect to 127.0.0.1[127.0.0.1]:{port}" in e["value"]
                   and "refused" in e["value"].lower() for e in conn_obj["entries"]), entries(d)
        assert msg_obj["status"] == "Warning"
        assert any(e["key"] == "Deferred" for e in msg_obj["entries"])

    @pytest.mark.parametrize("pinned", [False, True], ids=["unverified", "wrong-password"])
    def test_tls_and_auth_failures_keep_the_password_out(
            self, tmp_path, outbound_config, run_gateway, pinned):  # noqa: F811
        """STARTTLS to a smarthost whose certificate does not verify, and (its CA pinned)
        one that refuses the relay password: the Connection is Failed naming the
        certificate problem or the SASL failure; the password is in no entry."""
        ca = TestCA(tmp_path / "ca")
        leaf = ca.issue("smarthost", hosts=("127.0.0.1", "localhost"))
        pin = f'\ntls_ca_file = "{ca.ca_path}"' if pinned else ""
        with AuthSink(leaf.cert, leaf.key, users={"relay": "other"}) as sink:
            cfg = outbound_config(sink.port, retry="1h", security="starttls",
                                  extra_relay=f'user = "relay"\npassword = "{SECRET}"{pin}',
                                  extra_submission='allow_networks = ["127.0.0.0/8"]')
            rg = run_gateway(cfg)
            submit(cfg, ["a@customer.test"])
            d = wait_for(lambda: next(iter(attempts(rg.gateway.engine)), None),
                         what="attempt")
            with rg.gateway.engine.connect() as conn:
                values = list(conn.execute(select(CommEntry.value)).scalars())
        conn_obj = d["objects"][0]
        assert conn_obj["status"] == "Failed"
        want = "sasl authentication failed" if pinned else "certificate"
        assert any(e["key"] == "Connect" and want in e["value"].lower()
                   for e in conn_obj["entries"]), conn_obj["entries"]
        assert [v for v in values if SECRET in v] == []


class TestHandoff:
    def test_down_failing_and_retried_by_hand(self, webhook_gateway,  # noqa: F811
                                             receiver):  # noqa: F811
        """The helpdesk is down, then answers 500 until the schedule is over: each attempt
        is a Failed Handoff communication naming the cause and the next attempt, the last
        an Error "Failed"; `handoff retry` logs who retried what; the webhook secret is
        in no entry."""
        import json
        import subprocess
        import sys

        rg = webhook_gateway(retry="0.3s")
        receiver.stop()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("alice@customer.test", ["support@example.org"], message(1))
        c.close()
        assert [d[0] for d in data] == [250]

        def handoff_comms() -> list[dict[str, Any]]:
            return [d for d in comms(rg.gateway.engine) if d["account_type"] == "Handoff"]

        first = wait_for(lambda: next(iter(handoff_comms()), None), what="hand-off attempt")
        got = entries(first)
        assert first["status"] == "Failed"
        assert any(k == "Helpdesk" and "cannot reach" in v for _, k, v in got), got
        assert any(p == "Warn" and k == "Deferred" and "next attempt" in v
                   for p, k, v in got), got
        receiver.fail_next = 100
        receiver.start()
        last = wait_for(lambda: next((d for d in handoff_comms() if any(
            p == "Error" and k == "Failed" for p, k, _ in entries(d))), None),
            what="the failed hand-off")
        assert any(k == "Helpdesk" and "HTTP 500" in v for _, k, v in entries(last))
        out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(rg.config.conf_dir),
                              "handoff", "list", "--json"], capture_output=True, text=True,
                             timeout=60)
        hid = json.loads(out.stdout)[0]["id"]
        out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(rg.config.conf_dir),
                              "handoff", "retry", str(hid)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        retry = wait_for(lambda: next((d for d in handoff_comms()
                                       if d["account"] == "deskgate handoff retry"), None),
                         what="the retry by hand")
        assert any(k == "Retry" and f"hand-off #{hid} retried by hand" in v
                   for _, k, v in entries(retry))
        with rg.gateway.engine.connect() as conn:
            values = list(conn.execute(select(CommEntry.value)).scalars())
        assert [v for v in values if WEBHOOK_SECRET in v] == []


def cli_comms(conf: Any) -> list[dict[str, Any]]:
    import json

    from tests.integration.cli.test_cli_contract import cli

    listed = json.loads(cli(conf, "log", "list", "--json").stdout)
    return [json.loads(cli(conf, "log", "show", str(c["id"]), "--json").stdout)
            for c in listed]


def stdin_mail(to: str, n: int) -> bytes:
    return (f"From: alice@customer.test\nTo: {to}\nSubject: printer\n"
            f"Message-ID: <deliver{n}@customer.test>\n\nThe printer is broken.\n").encode()


class TestDeliver:
    LMTP = {"50-lmtp.toml": '[lmtp]\nunknown_recipient = "reject"\n'}

    def test_every_recipient_refused_is_a_failed_communication(self, make_confdir):
        """deliver -r for no system address: exit 67, and a Failed STDIN communication
        naming the refused recipient, its reply and the exit code."""
        from tests.integration.cli.test_cli_contract import cli

        conf = make_confdir(self.LMTP)
        r = cli(conf, "deliver", "-f", "alice@customer.test", "-r", "nobody@example.org",
                stdin=stdin_mail("nobody@example.org", 1))
        assert r.returncode == 67, r.stderr
        (d,) = cli_comms(conf)
        assert (d["direction"], d["account_type"], d["status"]) == ("Incoming", "STDIN",
                                                                  "Failed")
        got = entries(d)
        assert any(p == "Notice" and k == "RCPT" and "<nobody@example.org>" in v
                   and "550" in v for p, k, v in got), got
        assert any(p == "Error" and k == "Deliver" and "exit 67" in v
                   for p, k, v in got), got

    def test_one_recipient_refused_is_named_beside_the_delivery(self, make_confdir):
        """One -r delivered, one refused for good: the MTA gets one exit code for both
        (0), so the refusal is in the log, a Warning naming the recipient."""
        from tests.integration.cli.test_cli_contract import cli

        conf = make_confdir(self.LMTP)
        r = cli(conf, "deliver", "-f", "alice@customer.test", "-r", "support@example.org",
                "-r", "nobody@example.org", stdin=stdin_mail("support@example.org", 2))
        assert r.returncode == 0, r.stderr
        refused = [d for d in cli_comms(conf) if any(k == "RCPT" for _, k, _ in entries(d))]
        assert len(refused) == 1 and refused[0]["status"] == "Warning"
        assert any(p == "Notice" and "<nobody@example.org>" in v
                   for p, _, v in entries(refused[0]))

    def test_no_system_address_in_to_is_a_failed_communication(self, make_confdir):
        """Without -r and no system address in To/Cc: exit 67, a Failed communication
        naming the addresses that were looked at."""
        from tests.integration.cli.test_cli_contract import cli

        conf = make_confdir(self.LMTP)
        r = cli(conf, "deliver", stdin=stdin_mail("nobody@example.org", 3))
        assert r.returncode == 67, r.stderr
        (d,) = cli_comms(conf)
        assert d["status"] == "Failed"
        assert any(k == "RCPT" and "nobody@example.org" in v for _, k, v in entries(d))
