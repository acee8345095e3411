"""deskgate send / outqueue, and the example conf.d writing into the var/outbox Maildir."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from gateway.config import load_config
from gateway.store.tables import Article, CommEntry, OutboundMessage
from tests.conftest import free_port
from tests.integration.outbound.conftest import submission_port, wait_for
from tests.peers.smarthost import AuthSink

REPO = Path(__file__).resolve().parents[3]
MSG = b"From: agent@internal.test\nTo: cust@customer.test\nSubject: From the shell\n\nhello\n"


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin, capture_output=True, cwd=conf.parent, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


class TestOutqueueCli:
    def test_send_then_list_show_retry_delete_flush(self, make_confdir):
        """send queues with --queue; outqueue lists it (--json fields), retries, deletes."""
        conf = make_confdir({"40-relay.toml": '[relay]\nhost = "127.0.0.1"\nport = 9\n'})
        res = cli(conf, "send", "--queue", "Support", "--json", stdin=MSG)
        assert res.returncode == 0, res.stderr
        sent = json.loads(res.stdout)
        assert sent["reply"].startswith("250") and sent["ticket"]
        listed = json.loads(cli(conf, "outqueue", "list", "--json").stdout)
        assert [set(m) for m in listed] == [{"id", "queue", "sender", "recipients", "attempts",
                                             "next_attempt", "last_error"}]
        m = listed[0]
        assert (m["id"], m["queue"], m["sender"], m["recipients"], m["attempts"]) == \
            (sent["id"], "Support", "support@example.org", ["cust@customer.test"], 0)
        shown = json.loads(cli(conf, "outqueue", "show", str(m["id"]), "--json").stdout)
        assert "From: Example Support <support@example.org>" in shown["headers"]
        assert f"[Ticket#{sent['ticket']}]" in shown["headers"]
        assert cli(conf, "outqueue", "retry", str(m["id"])).returncode == 0
        assert cli(conf, "outqueue", "retry", "999").returncode == 1
        assert b"1 queued" in cli(conf, "outqueue", "flush").stdout
        assert cli(conf, "outqueue", "delete", str(m["id"])).returncode == 0
        assert json.loads(cli(conf, "outqueue", "list", "--json").stdout) == []

    def test_send_adds_the_local_received_header(self, make_confdir):
        """The queued message of `deskgate send` begins with the Received header of
        Postfix's pickup: by the gateway's host name, from the user id that ran it,
        with its queue id and the date; `outqueue show --json` has the DSN fields
        (empty for mail from send)."""
        conf = make_confdir({"40-relay.toml": '[relay]\nhost = "127.0.0.1"\nport = 9\n'})
        sent = json.loads(cli(conf, "send", "--json", stdin=MSG).stdout)
        shown = json.loads(cli(conf, "outqueue", "show", str(sent["id"]), "--json").stdout)
        host = load_config(conf).gateway.hostname
        first, second = shown["headers"].split("\r\n")[:2]
        assert first == f"Received: by {host} (deskgate, from userid {os.getuid()})"
        assert second.startswith(f"\tid {sent['id']}; ")
        assert shown["headers"].count("Received:") == 1
        assert (shown["dsn_ret"], shown["dsn_envid"]) == ("", "")
        assert [(r["dsn_notify"], r["dsn_orcpt"]) for r in shown["recipient_status"]] == [
            ("", "")]

    def test_show_names_an_attempt_that_did_not_finish(self, make_confdir):
        """A message whose lease ran out without an outcome (its node was killed) is shown
        as a lost attempt with the node that held it."""
        from sqlalchemy import create_engine

        from gateway.outbound import queue as oq

        conf = make_confdir({"40-relay.toml": '[relay]\nhost = "127.0.0.1"\nport = 9\n'})
        sent = json.loads(cli(conf, "send", "--json", stdin=MSG).stdout)
        engine = create_engine(load_config(conf).database_url)
        try:
            with engine.begin() as conn:
                assert len(oq.claim(conn, "dead-node", limit=1, lease=0.1)) == 1
        finally:
            engine.dispose()
        time.sleep(0.2)
        out = cli(conf, "outqueue", "show", str(sent["id"])).stdout.decode()
        assert "lost attempt" in out and "dead-node did not finish" in out

    def test_send_refuses_unknown_queue_and_empty_input(self, make_confdir):
        """An unknown --queue or an empty message is a data error (65)."""
        conf = make_confdir()
        assert cli(conf, "send", "--queue", "Nope", stdin=MSG).returncode == 65
        assert cli(conf, "send", stdin=b"").returncode == 65


def _fill_queue(conf: Path, n: int, *, status: str = "queued") -> None:
    """Insert n messages straight into the outbound queue (as many sends would)."""
    from datetime import UTC, datetime

    from gateway.store.db import ensure_schema, make_engine

    now = datetime.now(UTC)
    engine = make_engine(load_config(conf).database_url)
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            conn.execute(OutboundMessage.__table__.insert(), [
                {"queue": "Support", "sender": "support@example.org", "data": b"x",
                 "status": status, "next_attempt": now, "created": now, "updated": now}
                for _ in range(n)])
    finally:
        engine.dispose()


class TestOutqueueListLimit:
    def test_text_list_says_when_it_is_cut(self, make_confdir):
        """A queue longer than the default 1000 rows lists 1000 and says "showing 1000 of
        1005"; --limit N lists N and says so; a list that is not cut says nothing."""
        conf = make_confdir()
        _fill_queue(conf, 1005)
        _fill_queue(conf, 3, status="sent")
        res = cli(conf, "outqueue", "list")
        assert res.returncode == 0, res.stderr
        lines = res.stdout.decode().splitlines()
        assert lines[-1] == "showing 1000 of 1005 (use --limit to see more)"
        assert len([x for x in lines if x.split()[:1] and x.split()[0].isdigit()]) == 1000
        lines = cli(conf, "outqueue", "list", "--limit", "2").stdout.decode().splitlines()
        assert lines[-1] == "showing 2 of 1005 (use --limit to see more)"
        assert len(lines) == 1 + 2 + 1     # header, two rows, the note
        res = cli(conf, "outqueue", "list", "--all", "--limit", "2000")
        assert "showing" not in res.stdout.decode()
        lines = cli(conf, "outqueue", "list", "--all", "--limit", "1007").stdout.decode()
        assert lines.splitlines()[-1] == "showing 1007 of 1008 (use --limit to see more)"

    def test_json_stays_a_list(self, make_confdir):
        """--json prints the documented list (at most --limit rows); the cut is noted on
        stderr only, so the output still parses as the list it was."""
        conf = make_confdir()
        _fill_queue(conf, 5)
        res = cli(conf, "outqueue", "list", "--json", "--limit", "3")
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        assert isinstance(rows, list) and len(rows) == 3
        assert "showing 3 of 5" in res.stderr.decode()
        res = cli(conf, "outqueue", "list", "--json")
        assert len(json.loads(res.stdout)) == 5 and b"showing" not in res.stderr

    def test_limit_out_of_range_is_a_usage_error(self, make_confdir):
        """--limit below 1 or beyond a row id is refused with exit 2 and a message."""
        conf = make_confdir()
        for bad in ("0", "-1", str(2**63)):
            res = cli(conf, "outqueue", "list", "--limit", bad)
            assert res.returncode == 2, (bad, res.stderr)
            assert b"--limit must be between 1 and" in res.stderr
            assert res.stdout == b""


class TestExampleConfig:
    def test_example_conf_delivers_into_var_outbox(self, tmp_path, run_gateway):
        """The shipped conf.d accepts submission from localhost and writes var/outbox/new."""
        root = tmp_path / "checkout"
        shutil.copytree(REPO / "conf.d", root / "conf.d")
        if (REPO / "policies").is_dir():
            shutil.copytree(REPO / "policies", root / "policies")
        cfg = load_config(root / "conf.d")
        assert cfg.relay.mode == "maildir" and cfg.submission.listen == ("127.0.0.1:8587",)
        port = free_port()
        cfg = dataclasses.replace(
            cfg, submission=dataclasses.replace(cfg.submission, listen=(f"127.0.0.1:{port}",)),
            dashboard=dataclasses.replace(cfg.dashboard, listen=""))
        rg = run_gateway(cfg, tcp=False)
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("agent@internal.test", ["cust@customer.test"],
                       MSG.replace(b"\n", b"\r\n"))
        outbox = root / "var" / "outbox" / "new"
        files = wait_for(lambda: list(outbox.glob("*")) if outbox.is_dir() else [], 20,
                         "a file in var/outbox/new")
        data = files[0].read_bytes()
        assert data.startswith(b"Return-Path: <helpdesk@example.org>")
        assert b"From: Example Helpdesk <helpdesk@example.org>" in data
        with rg.gateway.engine.connect() as conn:
            wait_for(lambda: conn.execute(select(Article.transmission_status)).scalar()
                     == "sent", 10, "article marked sent")


class TestDkimConfig:
    def test_check_names_an_unreadable_dkim_key(self, make_confdir):
        """`deskgate check` refuses a [[dkim]] whose key file cannot be loaded."""
        conf = make_confdir({"45-dkim.toml": '[[dkim]]\ndomain = "example.org"\n'
                                             'selector = "s1"\nkey_file = "keys/missing.pem"\n'})
        res = cli(conf, "check")
        assert res.returncode == 1
        assert b"dkim[0].key_file" in res.stderr and b"missing.pem" in res.stderr

    def test_check_refuses_relay_auth_without_tls(self, make_confdir):
        """AUTH at the relay with security = "none" needs allow_plaintext = true."""
        relay = '[relay]\nhost = "127.0.0.1"\nsecurity = "none"\nuser = "gw"\npassword = "x"\n'
        res = cli(make_confdir({"40-relay.toml": relay}), "check")
        assert res.returncode == 1 and b"relay.security" in res.stderr
        res = cli(make_confdir({"40-relay.toml": relay + "allow_plaintext = true\n"}), "check")
        assert res.returncode == 0, res.stderr


class TestSendTicketNumbers:
    def test_each_send_uses_one_number(self, make_confdir):
        """Three `deskgate send` processes get three consecutive ticket numbers: a one-shot
        process reserves only the number it uses."""
        conf = make_confdir()
        numbers = []
        for _ in range(3):
            res = cli(conf, "send", "--queue", "Support", "--json", stdin=MSG)
            assert res.returncode == 0, res.stderr
            numbers.append(json.loads(res.stdout)["ticket"])
        counters = [int(n[10:]) for n in numbers]
        assert counters == [counters[0], counters[0] + 1, counters[0] + 2], numbers


class TestSendControlCharacters:
    def test_subject_with_control_characters_is_queued(self, make_confdir):
        """`deskgate send` of a Subject with VT/FS (with and without a ticket number in
        it) queues the message with the control characters replaced, no injected header."""
        conf = make_confdir()
        for subject in (b"hello\x0bBcc: victim@evil.test", b"[Ticket#202612011000001] a\x1cb"):
            msg = MSG.replace(b"Subject: From the shell", b"Subject: " + subject)
            res = cli(conf, "send", "--queue", "Support", "--json", stdin=msg)
            assert res.returncode == 0, res.stderr
            shown = json.loads(cli(conf, "outqueue", "show",
                                   str(json.loads(res.stdout)["id"]), "--json").stdout)
            headers = shown["headers"]
            assert "\x0b" not in headers and "\x1c" not in headers
            assert "\nBcc:" not in headers.replace("\r\n", "\n")


class TestDeleteWhileDelivering:
    def test_delete_wins_over_the_attempt_under_way(self, outbound_config, run_gateway):
        """`outqueue delete --json` on a message the sender is delivering says so; the
        attempt's 4xx then neither brings the row back nor leads to another try, and the
        communication log says the outcome was not recorded because of the delete."""
        with AuthSink() as sink:
            gate = sink.handler.data_gate = threading.Event()   # DATA waits for the delete
            sink.set_script(lambda stage, _: "451 4.3.0 try later" if stage == "DATA"
                            else None)
            cfg = outbound_config(sink.port, retry="1s*5")
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"],
                           MSG.replace(b"\n", b"\r\n"))
            wait_for(lambda: sink.handler.rcpt_seen, what="a delivery under way")
            with rg.gateway.engine.connect() as conn:
                oid = conn.execute(select(OutboundMessage.id)).scalar_one()
            res = cli(cfg.conf_dir, "outqueue", "delete", str(oid), "--json")
            assert res.returncode == 0, res.stderr
            out = json.loads(res.stdout)
            assert out["id"] == oid and out["deleted"] is True
            assert out["status"] == "queued" and out["in_delivery"] is True
            assert out["claimed_by"]
            gate.set()

            def deleted_entry():
                with rg.gateway.engine.connect() as conn:
                    return conn.execute(select(CommEntry.value)
                                        .where(CommEntry.key == "Deleted")).scalars().all()
            (entry,) = wait_for(deleted_entry, what="the attempt's end")
            assert "451 4.3.0 try later" in entry
            time.sleep(2.5)                  # retry = 1s: a second attempt would be under way
            assert sink.handler.rcpt_seen == 1
            with rg.gateway.engine.connect() as conn:
                assert conn.execute(select(OutboundMessage.id)).all() == []
