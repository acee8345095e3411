"""Never lose, never duplicate: after_fetch modes, failures that leave mail in place,
oversized messages, and a process killed between the commit and the removal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.cli import main
from gateway.inbound.poller import state
from gateway.inbound.poller.check import check_account
from gateway.inbound.poller.imap import quote
from gateway.store.tables import Article, CommEntry, CommObject, Communication
from tests.integration.poller.poller_helpers import account_toml, message
from tests.peers.ca import TestCA

pytestmark = pytest.mark.dovecot
ROOT = Path(__file__).resolve().parents[3]


def articles(h) -> int:
    with h.gw.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Article)).scalar() or 0)


class TestAfterFetch:
    def test_imap_keep_tracks_uids_not_flags(self, mailbox, poller_config, harness):
        """keep: messages stay unread on the server and each is fetched exactly once."""
        mailbox.append("helpdesk", [message(1), message(2)])
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep")))
        assert h.poll().fetched == 2
        assert h.poll().fetched == 0
        mailbox.append("helpdesk", [message(3)])
        r = h.poll()
        assert (r.fetched, r.new, r.duplicate) == (1, 1, 0)
        assert mailbox.count("helpdesk") == 3
        c = mailbox.imap("helpdesk")
        c.select("INBOX", readonly=True)
        assert len(c.search(None, "UNSEEN")[1][0].split()) == 3
        c.logout()
        with h.gw.engine.connect() as conn:
            uv, last = state.folder_position(conn, "box", "INBOX")
        assert last >= 3 and uv > 0
        assert articles(h) == 3

    def test_imap_keep_uidvalidity_change_refetches_without_duplicates(
            self, mailbox, poller_config, harness):
        """A recreated folder (new UIDVALIDITY) is read again; known messages are duplicates."""
        m1, m2 = message(1), message(2)
        mailbox.append("helpdesk", [m1], folder="Tickets")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               folder="Tickets")))
        assert h.poll().new == 1
        c = mailbox.imap("helpdesk")
        c.delete("Tickets")
        c.logout()
        mailbox.append("helpdesk", [m1, m2], folder="Tickets")
        r = h.poll()
        assert (r.new, r.duplicate) == (1, 1)
        with h.gw.engine.connect() as conn:
            notes = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "UIDVALIDITY")).scalars().all()
        assert notes and "changed" in notes[0]
        assert articles(h) == 2

    def test_imap_keep_uidvalidity_changed_by_doveadm_stores_nothing_twice(
            self, mailbox, poller_config, harness):
        """The folder's UIDVALIDITY changes under the same messages (doveadm mailbox
        update): every message is seen again and dropped as a duplicate, no ticket or
        article is made twice, and one Notice says so with the counts."""
        mailbox.append("helpdesk", [message(1), message(2), message(3)])
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               reconnect_every=2)))
        assert h.poll().new == 3
        with h.gw.engine.connect() as conn:
            old, _ = state.folder_position(conn, "box", "INBOX")
        subprocess.run(["doveadm", "-c", str(mailbox.conf), "mailbox", "update", "-u",
                        "helpdesk", "--uid-validity", str(old + 1000), "INBOX"],
                       check=True, timeout=30, capture_output=True)
        mailbox.append("helpdesk", [message(4)])
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.duplicate) == ("Successful", 4, 1, 3), r.error
        assert articles(h) == 4
        with h.gw.engine.connect() as conn:
            notes = conn.execute(select(CommEntry.priority, CommEntry.value).where(
                CommEntry.key == "UIDVALIDITY")).all()
            new, last = state.folder_position(conn, "box", "INBOX")
        assert [tuple(n) for n in notes] == [(
            "Notice", f"INBOX: UIDVALIDITY changed from {old} to {old + 1000}; 4 messages "
            "seen again, duplicates are dropped")]
        c = mailbox.imap("helpdesk")
        c.select("INBOX", readonly=True)
        uids = [int(u) for u in c.uid("SEARCH", None, "ALL")[1][0].split()]
        c.logout()
        assert (new, last) == (old + 1000, max(uids)) and len(uids) == 4
        assert h.poll().fetched == 0       # read once under the new UIDVALIDITY

    def test_pop3_keep_remembers_uidls(self, mailbox, poller_config, harness):
        """POP3 keep: the second run fetches nothing, a new message is fetched once."""
        mailbox.append("helpdesk", [message(1), message(2)])
        h = harness(poller_config(account_toml(mailbox, "pop3s", after_fetch="keep")))
        assert h.poll().fetched == 2
        assert h.poll().fetched == 0
        mailbox.append("helpdesk", [message(3)])
        assert h.poll().fetched == 1
        assert mailbox.count("helpdesk") == 3
        assert articles(h) == 3

    def test_imap_move_to_folder_created_on_demand(self, mailbox, poller_config, harness):
        """move:<folder> moves fetched mail into a folder the server creates (TRYCREATE)."""
        mailbox.append("helpdesk", [message(1), message(2)])
        h = harness(poller_config(account_toml(mailbox, "imaptls",
                                               after_fetch="move:Archiv Geprüft")))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 2)
        assert mailbox.count("helpdesk") == 0
        assert mailbox.count("helpdesk", quote("Archiv Geprüft")) == 2

    def test_reconnect_every_and_cap_per_run(self, mailbox, poller_config, harness):
        """reconnect_every splits a run into connections; the cap leaves the rest for later."""
        mailbox.append("helpdesk", [message(i) for i in range(7)])
        h = harness(poller_config(account_toml(mailbox, "imaps", reconnect_every=2,
                                               max_messages_per_run=5)))
        r = h.poll()
        assert (r.fetched, r.connections, r.more) == (5, 3, True)
        assert mailbox.count("helpdesk") == 2
        r = h.poll()
        assert (r.fetched, r.more) == (2, False)
        assert articles(h) == 7


    def test_pop3_without_uidl_drains_across_reconnects(self, mailbox, poller_config, harness,
                                                         monkeypatch):
        """Without UIDL, message numbers of one connection do not hide mail on the next."""
        import poplib

        def no_uidl(self, which=None):
            raise poplib.error_proto(b"-ERR Unknown command: UIDL")

        monkeypatch.setattr(poplib.POP3, "uidl", no_uidl)
        mailbox.append("helpdesk", [message(i) for i in range(5)])
        h = harness(poller_config(account_toml(mailbox, "pop3s", reconnect_every=2)))
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.more) == ("Successful", 5, 5, False), r.error
        assert mailbox.count("helpdesk") == 0
        assert articles(h) == 5


    def test_pop3_line_longer_than_a_mebibyte(self, mailbox, poller_config, harness):
        """A message with a 1.5 MB line (base64 without line breaks) is fetched over POP3."""
        long_line = "A" * 1_500_000
        mailbox.append("helpdesk", [message(1, extra=f"X-Blob: {long_line}\r\n"), message(2)])
        h = harness(poller_config(account_toml(mailbox, "pop3s")))
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 2, 2), r.error
        assert mailbox.count("helpdesk") == 0


class TestFailures:
    def test_wrong_password_fails_loudly_and_keeps_mail(self, mailbox, poller_config, harness):
        """A refused login is an Error naming the account; the run and account are Failed."""
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(account_toml(mailbox, "imaps", password="wrong")))
        r = h.poll()
        assert r.status == "Failed" and "Authentication" in r.error
        assert mailbox.count("helpdesk") == 1
        with h.gw.engine.connect() as conn:
            comm = conn.execute(select(Communication)).one()
            assert comm.status == "Failed"
            obj = conn.execute(select(CommObject)).one()
            assert (obj.type, obj.status) == ("Connection", "Failed")
            err = conn.execute(select(CommEntry.value).where(
                CommEntry.priority == "Error")).scalar()
            assert "account box" in err and "refused" in err
            st = state.account_status(conn, "box")[0]
            assert st.status == "Failed" and "refused" in st.last_error

    @pytest.mark.parametrize("type_", ["imaps", "pop3tls"])
    def test_unknown_ca_is_refused(self, type_, mailbox, poller_config, harness, tmp_path):
        """A certificate from a CA the account does not trust fails at TLS; nothing is read."""
        other = TestCA(tmp_path / "other-ca", name="someone else")
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(account_toml(mailbox, type_, tls_ca_file=str(other.ca_path))))
        r = h.poll()
        assert r.status == "Failed" and "TLS" in r.error and "not trusted" in r.error
        assert mailbox.count("helpdesk") == 1
        system = harness(poller_config(account_toml(mailbox, type_, name="sys",
                                                    tls_ca_file="")))
        assert "not trusted" in system.poll("sys").error

    def test_check_account_verdicts(self, mailbox, poller_config, tmp_path):
        """check_account reports each step; a wrong CA stops at TLS, a good one counts."""
        mailbox.append("helpdesk", [message(1), message(2)])
        cfg = poller_config(account_toml(mailbox, "imaps"),
                            account_toml(mailbox, "pop3s", name="badca",
                                         tls_ca_file=str(TestCA(tmp_path / "x").ca_path)),
                            account_toml(mailbox, "imaptls", name="badpw", password="nope"),
                            account_toml(mailbox, "imaps", name="nofolder", folder="Missing"))
        good = check_account(cfg.account_by_name("box"), cfg)
        assert good.ok and good.messages == 2
        assert [s.ok for s in good.steps] == [True] * 5
        bad = check_account(cfg.account_by_name("badca"), cfg)
        assert [s.ok for s in bad.steps] == [True, True, False, None, None]
        assert "not trusted" in bad.step("tls").detail
        pw = check_account(cfg.account_by_name("badpw"), cfg)
        assert [s.ok for s in pw.steps] == [True, True, True, False, None]
        nf = check_account(cfg.account_by_name("nofolder"), cfg)
        assert nf.step("folder").ok is False and "Missing" in nf.step("folder").detail
        assert mailbox.count("helpdesk") == 2

    def test_oversized_left_on_server_logged_once_and_listed(self, mailbox, poller_config,
                                                             harness, capsys):
        """An oversized message stays on the server, is logged once and listed by the CLI."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge"),
                                    message(3)])
        cfg = poller_config(account_toml(mailbox, "imaps", max_message_size="10KB"))
        h = harness(cfg)
        r = h.poll()
        assert (r.fetched, r.oversized, r.status) == (2, 1, "Successful")
        assert h.poll().oversized == 1
        assert mailbox.count("helpdesk") == 1
        with h.gw.engine.connect() as conn:
            errs = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "Oversized")).scalars().all()
        assert len(errs) == 1 and "Huge" in errs[0]
        capsys.readouterr()
        assert main(["--config", str(cfg.conf_dir), "fetch", "--list-oversized", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(x["account"], x["subject"]) for x in listed] == [("box", "Huge")]
        assert listed[0]["size"] > 30_000
        assert listed[0]["limit"] == 10_000

    def test_imap_keep_fetches_oversized_once_the_limit_allows(self, mailbox, poller_config,
                                                                harness, capsys):
        """keep: a message left as oversized is fetched after max_message_size is raised."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge"),
                                    message(3)])
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               max_message_size="10KB")))
        r = h.poll()
        assert (r.fetched, r.oversized) == (2, 1)
        mailbox.append("helpdesk", [message(4)])
        h.gw.config = poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                                 max_message_size="20KB"))
        r = h.poll()                     # raised, but still too small: still left
        assert (r.status, r.fetched, r.new) == ("Successful", 1, 1), r.error
        capsys.readouterr()
        assert main(["--config", str(h.gw.config.conf_dir), "fetch", "--list-oversized",
                     "--json"]) == 0
        assert [x["limit"] for x in json.loads(capsys.readouterr().out)] == [20_000]
        h.gw.config = poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                                 max_message_size="1MB"))
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.oversized) == ("Successful", 1, 1, 0), r.error
        assert h.poll().fetched == 0
        assert articles(h) == 4
        assert mailbox.count("helpdesk") == 4
        with h.gw.engine.connect() as conn:
            assert state.list_oversized(conn, "box") == []


KILLER = """
import os, signal, sys
from gateway.inbound.poller import imap, pop3
real = {"imap": imap.ImapSession.done, "pop3": pop3.Pop3Session.done}
def die_imap(self, msg):
    os.kill(os.getpid(), signal.SIGKILL)
def die_pop3(self, msg):
    real["pop3"](self, msg)          # DELE sent; killed before QUIT
    os.kill(os.getpid(), signal.SIGKILL)
imap.ImapSession.done = die_imap
pop3.Pop3Session.done = die_pop3
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


class TestCrash:
    @pytest.mark.parametrize("type_", ["imaps", "pop3s"])
    def test_kill_between_commit_and_removal_gives_no_duplicate(
            self, type_, mailbox, poller_config, harness, capsys):
        """SIGKILL after the first commit: the message stays and is not stored twice."""
        mailbox.append("helpdesk", [message(1), message(2)])
        cfg = poller_config(account_toml(mailbox, type_))
        proc = subprocess.run([sys.executable, "-c", KILLER, "--config", str(cfg.conf_dir),
                               "fetch", "box"], cwd=ROOT, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        assert mailbox.count("helpdesk") == 2
        h = harness(cfg)
        assert articles(h) == 1
        r = h.poll()
        assert (r.fetched, r.new, r.duplicate) == (2, 1, 1)
        assert mailbox.count("helpdesk") == 0
        assert articles(h) == 2
        with h.gw.engine.connect() as conn:
            statuses = conn.execute(select(Communication.status).order_by(
                Communication.id)).scalars().all()
        assert statuses == ["Failed", "Successful"]     # the killed run is closed, not left


class TestHostname:
    def test_certificate_for_another_name_is_refused(self, mailbox, poller_config, harness,
                                                     tmp_path):
        """A trusted CA is not enough: the certificate must name the host (IMAPS greeting)."""
        import socket
        import ssl
        import threading

        cert = mailbox.ca.issue("elsewhere", hosts=("mail.elsewhere.test",), filename="else")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        srv = socket.create_server(("127.0.0.1", 0))
        port = srv.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"* OK IMAP4rev1 ready\r\n")
                    tls.recv(100)
            except (OSError, ssl.SSLError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            h = harness(poller_config(account_toml(mailbox, "imaps", port=port)))
            r = h.poll()
        finally:
            srv.close()
            t.join(5)
        assert r.status == "Failed" and "TLS" in r.error
        assert "mismatch" in r.error and "127.0.0.1" in r.error
