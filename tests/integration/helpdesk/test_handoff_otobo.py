"""End to end: LMTP → deskgate → hand-off worker → a real OTOBO (PostMaster pipe and REST)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import load_config
from gateway.crypto.keystore import stores_for
from gateway.store.db import make_engine
from tests.integration.helpdesk.test_handoff_webhook import deliver, handoffs, poke, wait_for
from tests.peers.ca import TestCA
from tests.peers.gpg import GpgPeer, kill_agent, short_home
from tests.peers.lmtp import LmtpClient
from tests.peers.otobo import AGENT, AGENT_PASSWORD, HoldingProxy, Otobo
from tests.peers.serve import start_serve

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

pytestmark = [pytest.mark.otobo, pytest.mark.slow]

POLICY = """
[[filter]]
name = "010-urgent"
match = [{ header = "Subject", value = "urgent" }]
[filter.set]
"X-Deskgate-Priority" = "5 very high"
"X-Deskgate-DynamicField-Server" = "print01"
"""


def pipe_conf(otobo: Otobo) -> str:
    return f"""
    [helpdesk]
    type = "otobo-postmaster"
    command = {json.dumps(otobo.postmaster_command())}
    retry = "0.5s*40"
    poll_interval = "0.2s"
    [helpdesk.queues]
    Support = "Misc"
    """


def rest_conf(url: str, lease: str = "30s") -> str:
    return f"""
    [helpdesk]
    type = "otobo-rest"
    url = "{url}"
    user = "{AGENT}"
    password = "{AGENT_PASSWORD}"
    retry = "0.5s*40"
    lease = "{lease}"
    poll_interval = "0.2s"
    timeout = "30s"
    [helpdesk.queues]
    Support = "Misc"
    """


def msg(n: str, subject: str, extra: str = "") -> bytes:
    return (f"From: Alice <alice@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{n}@customer.test>\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nIt is broken ({n}).\r\n").encode()


def delivered(rg: RunningGateway, count: int, timeout: float = 60) -> bool:
    def ok() -> bool:
        rows = handoffs(rg)
        return len(rows) >= count and all(r["status"] == "delivered" for r in rows)
    return wait_for(ok, timeout)


@pytest.fixture
def gateway_for(make_confdir: Callable[..., Path],
                run_gateway: Callable[..., RunningGateway]) -> Callable[[str], RunningGateway]:
    def start(conf: str) -> RunningGateway:
        return run_gateway(load_config(make_confdir({"50-helpdesk.toml": conf},
                                                    policies={"10.toml": POLICY})))
    return start


class TestOtoboEndToEnd:
    """Mail over LMTP becomes OTOBO tickets and articles where deskgate decided."""

    @pytest.mark.parametrize("kind", ["pipe", "rest"])
    def test_new_ticket_and_follow_up(self, kind: str, otobo: Otobo,
                                      gateway_for: Callable[[str], RunningGateway]) -> None:
        """A filter's priority and dynamic field and the mapped queue reach OTOBO; the
        sender's own X-OTOBO-Queue does not; the reply lands on the same OTOBO ticket."""
        rg = gateway_for(pipe_conf(otobo) if kind == "pipe" else rest_conf(otobo.start_rest()))
        assert deliver(rg, msg("e1", "urgent printer", "X-OTOBO-Queue: Junk\r\n")) == 250
        assert delivered(rg, 1), handoffs(rg)
        t = otobo.ticket("urgent printer")
        assert (t["queue"], t["priority"], t["state"]) == ("Misc", "5 very high", "new")
        assert otobo.dynamic_fields(t["id"]) == {"Server": "print01"}
        if kind == "rest":
            h = handoffs(rg)[0]
            assert (h["helpdesk_ticket_id"], h["helpdesk_ticket_number"]) == (str(t["id"]),
                                                                               t["tn"])
        assert deliver(rg, msg("e2", "Re: urgent printer",
                               "In-Reply-To: <e1@customer.test>\r\n")) == 250
        assert delivered(rg, 2), handoffs(rg)
        assert [h["kind"] for h in handoffs(rg)] == ["followup", "create"]
        [t2] = otobo.tickets()
        assert [a["body"].strip() for a in otobo.articles(t2["id"])] == [
            "It is broken (e1).", "It is broken (e2)."]

    def test_smime_encrypted_message_arrives_decrypted(
            self, otobo: Otobo, make_confdir: Callable[..., Path], tmp_path: Path,
            run_gateway: Callable[..., RunningGateway]) -> None:
        """An S/MIME message to support@ is decrypted by deskgate and piped in plain."""
        conf = make_confdir({"50-helpdesk.toml": pipe_conf(otobo), "51-crypto.toml": """
            [crypto]
            smime_dir = "keys/smime"
            smime_ca_file = "keys/smime/ca.pem"
            """})
        ca = TestCA(tmp_path / "ca")
        support = ca.issue("Example Support", emails=("support@example.org",),
                           filename="support")
        sdir = conf.parent / "keys" / "smime"
        sdir.mkdir(parents=True)
        shutil.copy(ca.ca_path, sdir / "ca.pem")
        shutil.copy(support.cert, sdir / "support@example.org.pem")
        shutil.copy(support.key, sdir / "support@example.org.key")
        (sdir / "support@example.org.key").chmod(0o600)
        inner = MIMEMultipart()
        inner.attach(MIMEText("The printer says PC LOAD LETTER.\n"))
        src = tmp_path / "inner.eml"
        src.write_bytes(inner.as_bytes().replace(b"\n", b"\r\n"))
        out = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-in", str(src),
                              str(support.cert)], capture_output=True, check=True,
                             timeout=60).stdout
        raw = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
               b"Subject: encrypted report\r\nMessage-ID: <enc-1@customer.test>\r\n"
               + out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        assert b"LOAD LETTER" not in raw
        rg = run_gateway(load_config(conf))
        assert deliver(rg, raw) == 250
        assert delivered(rg, 1), handoffs(rg)
        [a] = otobo.articles(otobo.ticket("encrypted report")["id"])
        assert "The printer says PC LOAD LETTER." in a["body"]
        plain = otobo.plain(a["id"])
        assert "X-OTOBO-BodyDecrypted: yes" in plain and "pkcs7-mime" not in plain

    def test_pgp_encrypted_signed_message_arrives_decrypted_over_rest(
            self, otobo: Otobo, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """PGP/MIME encrypted and signed: OTOBO gets the plaintext, the history comment
        says decrypted and signature valid."""
        home = short_home("dgo")
        cust, admin = GpgPeer(), GpgPeer()
        try:
            cust.gen_key("Customer <cust@customer.test>")
            admin.gen_key("Example Support <support@example.org>", passphrase="hd-pass")
            cust.import_(admin.export("support@example.org"))
            conf = make_confdir({"50-helpdesk.toml": rest_conf(otobo.start_rest()),
                                 "51-crypto.toml": f"""
                [crypto]
                gnupg_home = "{home}"
                """})
            cfg = load_config(conf)
            stores = stores_for(cfg)
            stores.pgp.import_(admin.export_secret("support@example.org", "hd-pass"), "hd-pass")
            stores.pgp.import_(cust.export("cust@customer.test"))
            inner = (b'Content-Type: text/plain; charset=utf-8\r\n\r\n'
                     b"The VPN drops every 5 minutes.\r\n")
            armored = cust.encrypt(inner, "support@example.org", sign_as="cust@customer.test")
            raw = (b"From: Customer <cust@customer.test>\r\nTo: support@example.org\r\n"
                   b"Subject: vpn broken\r\nMessage-ID: <pgp1@customer.test>\r\n"
                   b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; "
                   b'protocol="application/pgp-encrypted"; boundary="enc"\r\n\r\n'
                   b"--enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
                   b"\r\n--enc\r\nContent-Type: application/octet-stream\r\n\r\n"
                   + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                   + b"\r\n--enc--\r\n")
            rg = run_gateway(cfg)
            assert deliver(rg, raw) == 250
            assert delivered(rg, 1), handoffs(rg)
        finally:
            cust.close()
            admin.close()
            kill_agent(home)
            shutil.rmtree(home, ignore_errors=True)
        t = otobo.ticket("vpn broken")
        [a] = otobo.articles(t["id"])
        assert "The VPN drops every 5 minutes." in a["body"]
        assert any("(decrypted (PGP); signature valid by cust@customer.test)" in h["name"]
                   for h in otobo.history(t["id"]))

    @pytest.mark.parametrize("kind", ["pipe", "rest"])
    def test_otobo_down_then_back_everything_arrives_once(
            self, kind: str, otobo: Otobo,
            gateway_for: Callable[[str], RunningGateway]) -> None:
        """With OTOBO down (REST: its web server; pipe: its database) LMTP still answers
        250; once it is back every message becomes exactly one ticket."""
        if kind == "rest":
            url = otobo.start_rest()
            otobo.stop_rest()
            rg = gateway_for(rest_conf(url))
            error = "cannot reach"
        else:
            otobo.refuse_connections()
            rg = gateway_for(pipe_conf(otobo))
            error = "exited 1: DBI connect("
        for i in range(3):
            assert deliver(rg, msg(f"d{i}", f"while down {i}")) == 250
        assert wait_for(lambda: len(handoffs(rg)) == 3 and all(
            error in h["last_error"] for h in handoffs(rg)), 60), handoffs(rg)
        assert {h["status"] for h in handoffs(rg)} == {"pending"}
        if kind == "rest":
            otobo.start_rest()
        else:
            otobo.refuse_connections(False)
        poke(rg)
        assert delivered(rg, 3), handoffs(rg)
        assert sorted(t["title"] for t in otobo.tickets()) == [f"while down {i}"
                                                               for i in range(3)]


class TestOtoboCheckCli:
    """`deskgate helpdesk check` against a real OTOBO."""

    @pytest.mark.parametrize("kind", ["pipe", "rest"])
    def test_check_ok(self, kind: str, otobo: Otobo,
                      make_confdir: Callable[..., Path]) -> None:
        """Both connectors log in / run the console and report ok (exit 0)."""
        conf = make_confdir({"50-helpdesk.toml": pipe_conf(otobo) if kind == "pipe"
                             else rest_conf(otobo.start_rest())})
        out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), "helpdesk",
                              "check", "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["ok"] is True and doc["type"] == ("otobo-postmaster" if kind == "pipe"
                                                     else "otobo-rest")
        assert AGENT_PASSWORD not in out.stdout


class TestOtoboCrash:
    """kill -9 of deskgate between OTOBO's work and deskgate's record."""

    def test_kill_9_while_otobo_answers_creates_one_ticket(
            self, otobo: Otobo, make_confdir: Callable[..., Path]) -> None:
        """OTOBO created the ticket, the answer is held back, deskgate is killed: after a
        restart the retry finds the ticket (history marker) instead of creating another;
        the interrupted attempt is not counted."""
        otobo.start_rest()
        proxy = HoldingProxy(otobo.port)
        proxy.hold_seconds = 20.0
        conf = make_confdir({"50-helpdesk.toml": rest_conf(proxy.url(), lease="2s")})
        cfg = load_config(conf)
        sock = cfg.root / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(sock.exists, 30), "gateway did not start"
            c = LmtpClient(sock)
            c.lhlo()
            _, replies = c.transaction("alice@customer.test", ["support@example.org"],
                                       msg("k1", "killed mid answer"))
            c.close()
            assert replies[0][0] == 250
            assert wait_for(lambda: len(otobo.tickets()) == 1, 60)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        proxy.hold_seconds = 0.0
        proc = start_serve(conf)
        engine = make_engine(cfg.database_url)
        try:
            def rows() -> list[dict[str, object]]:
                from gateway.helpdesk import outbox
                with engine.connect() as conn:
                    return outbox.list_handoffs(conn, status="all")

            assert wait_for(lambda: rows()[0]["status"] == "delivered", 60), rows()
            h = rows()[0]
        finally:
            engine.dispose()
            proc.terminate()
            proc.wait(30)
            proxy.stop()
        [t] = otobo.tickets()
        assert t["title"] == "killed mid answer"
        assert (h["helpdesk_ticket_id"], h["attempts"]) == (str(t["id"]), 1)
        assert proxy.creates == 1


# A web form's mail: the subject and the customer come from filters (OTOBO's classic
# case); a message naming a ticket only in its body is threaded by a set Subject.
SET_POLICY = r"""
[[filter]]
name = "020-webform"
match = [{ header = "Subject", value = "^web form$" },
         { header = "Body", value = "email:\\s*(?P<who>\\S+@\\S+)" }]
[filter.set]
"Subject" = "Printer order from the web form"
"From" = "Web Customer <[**\\who**]>"
"Body" = "The customer wants a printer."

[[filter]]
name = "030-reference"
match = [{ header = "Body", value = "our reference:\\s*(\\d+)" }]
set = { "Subject" = "Re: [Ticket#[***]] printer" }
"""


def plain_msg(n: str, subject: str, body: str, frm: str = "Alice <alice@customer.test>"
              ) -> bytes:
    return (f"From: {frm}\r\nTo: support@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{n}@customer.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"\r\n{body}").encode()


class TestOtoboGetsFilterSetValues:
    """What a postmaster filter set (Subject, From, Body) is what the helpdesk gets."""

    @pytest.mark.parametrize("kind", ["pipe", "rest"])
    def test_set_subject_from_and_body_are_the_articles(
            self, kind: str, otobo: Otobo, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """OTOBO's article has the set Subject, From and Body, not the original ones."""
        conf = pipe_conf(otobo) if kind == "pipe" else rest_conf(otobo.start_rest())
        rg = run_gateway(load_config(make_confdir({"50-helpdesk.toml": conf},
                                                  policies={"10.toml": SET_POLICY})))
        raw = plain_msg("w1", "web form", "email: dora@customer.test\r\nplease call\r\n",
                        frm="Web form <noreply@web.example.org>")
        assert deliver(rg, raw) == 250
        assert delivered(rg, 1), handoffs(rg)
        t = otobo.ticket("Printer order from the web form")
        assert t["customer_user"] == "dora@customer.test"
        [a] = otobo.articles(t["id"])
        assert a["subject"] == "Printer order from the web form"
        assert "dora@customer.test" in a["from"] and "noreply" not in a["from"]
        assert a["body"].strip() == "The customer wants a printer."

    def test_set_subject_with_ticket_number_is_a_follow_up_in_otobo(
            self, otobo: Otobo, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """A message deskgate threads because a filter set Subject to carry the ticket
        number becomes an article of that ticket in OTOBO, not a new ticket."""
        from sqlalchemy import update

        from gateway.store.tables import Ticket

        rg = run_gateway(load_config(make_confdir({"50-helpdesk.toml": pipe_conf(otobo)},
                                                  policies={"10.toml": SET_POLICY})))
        assert deliver(rg, plain_msg("f1", "printer jammed", "It is jammed.\r\n")) == 250
        assert delivered(rg, 1), handoffs(rg)
        t = otobo.ticket("printer jammed")
        # The pipe cannot report OTOBO's number; deskgate learns it from the helpdesk's
        # first reply through its relay. Here it is told directly.
        with rg.gateway.engine.begin() as conn:
            conn.execute(update(Ticket).values(helpdesk_ticket_number=t["tn"]))
        assert deliver(rg, plain_msg("f2", "no number here",
                                     f"Hello,\r\nour reference: {t['tn']}\r\n")) == 250
        assert delivered(rg, 2), handoffs(rg)
        assert [h["kind"] for h in handoffs(rg)] == ["followup", "create"]
        assert [x["id"] for x in otobo.tickets()] == [t["id"]]
        arts = otobo.articles(t["id"])
        assert [x["subject"] for x in arts] == ["printer jammed",
                                               f"Re: [Ticket#{t['tn']}] printer"]
