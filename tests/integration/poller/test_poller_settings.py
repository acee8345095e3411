"""Each documented [[account]] setting against the real Dovecot, and what an
administrator sees when accounts fail: `deskgate fetch`, the log, the
communication log."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.cli import main
from gateway.inbound.poller import state
from gateway.store.tables import CommEntry, CommObject, Communication, Ticket
from tests.integration.poller.poller_helpers import account_toml, message
from tests.peers.ca import TestCA
from tests.peers.ports import free_port

pytestmark = pytest.mark.dovecot


def queues(h) -> dict[str, str]:
    """Ticket title → queue."""
    with h.gw.engine.connect() as conn:
        return dict(conn.execute(select(Ticket.title, Ticket.queue)).all())


def errors_of(h, account: str) -> list[str]:
    with h.gw.engine.connect() as conn:
        return list(conn.execute(
            select(CommEntry.value).join(CommObject, CommEntry.object_id == CommObject.id)
            .join(Communication, CommObject.communication_id == Communication.id)
            .where(Communication.account == account, CommEntry.priority == "Error"))
            .scalars())


class TestSettings:
    def test_folder_is_the_one_fetched(self, mailbox, poller_config, harness):
        """folder: only that folder is fetched and emptied; INBOX is left alone."""
        mailbox.append("helpdesk", [message(1, subject="In the inbox")])
        mailbox.append("helpdesk", [message(2, subject="In Tickets")], folder="Tickets")
        h = harness(poller_config(account_toml(mailbox, "imaps", folder="Tickets")))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert list(queues(h)) == ["In Tickets"]
        assert mailbox.count("helpdesk", "Tickets") == 0
        assert mailbox.count("helpdesk") == 1

    @pytest.mark.parametrize("type_", ["imaps", "pop3s"])
    def test_dispatch_and_trust(self, type_, mailbox, poller_config, harness):
        """dispatch = "queue" puts mail into the account's queue whatever its To; a
        queue X-header counts only for a trusted account."""
        header = "X-OTOBO-Queue: Support\r\n"
        mailbox.append("helpdesk", [message(1, to="sales@example.org", subject="Plain"),
                                    message(2, to="sales@example.org", subject="Header",
                                            extra=header)])
        h = harness(poller_config(account_toml(mailbox, type_, dispatch="queue",
                                               queue="Raw")))
        assert h.poll().new == 2
        assert queues(h) == {"Plain": "Raw", "Header": "Raw"}
        mailbox.append("helpdesk", [message(3, to="sales@example.org", subject="By To"),
                                    message(4, to="sales@example.org", subject="Trusted",
                                            extra=header)])
        h2 = harness(poller_config(account_toml(mailbox, type_, name="t", trusted=True)))
        assert h2.poll("t").new == 2
        assert queues(h2) == {"Plain": "Raw", "Header": "Raw", "By To": "Sales",
                              "Trusted": "Support"}

    @pytest.mark.parametrize(("to", "header", "queue"), [
        ("customer@customer.test", "X-Original-To: sales@example.org", "Sales"),
        ("customer@customer.test", "Delivered-To: sales@example.org", "Sales"),
        ("customer@customer.test", "Envelope-To: sales@example.org", "Sales"),
        ("support@example.org", "Resent-To: sales@example.org", "Sales"),
        ("support@example.org", "Delivered-To: helpdesk@example.org", "Support"),
    ])
    def test_dispatch_to_finds_the_system_address_as_otobo_does(
            self, to, header, queue, mailbox, poller_config, harness):
        """dispatch = "to": a system address only in Bcc (named by the Delivered-To or
        X-Original-To the MTA added) or in Resent-To/Envelope-To picks the queue, as
        OTOBO's dispatching looks at those headers too (in its order: Resent-To,
        Envelope-To, To, Cc, Delivered-To, X-Original-To)."""
        mailbox.append("helpdesk", [message(1, to=to, subject="Bcc",
                                            extra=header + "\r\n")])
        h = harness(poller_config(account_toml(mailbox, "imaps")))
        assert h.poll().new == 1
        assert queues(h) == {"Bcc": queue}

    def test_pop3_oversized_reported_once(self, mailbox, poller_config, harness):
        """POP3: an oversized message stays, with one Error, however many runs see it."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge")])
        h = harness(poller_config(account_toml(mailbox, "pop3s", max_message_size="10KB")))
        r = h.poll()
        assert (r.fetched, r.oversized, r.status) == (1, 1, "Successful"), r.error
        assert (h.poll().oversized, h.poll().oversized) == (1, 1)
        assert mailbox.count("helpdesk") == 1
        errs = [e for e in errors_of(h, "box") if "max_message_size" in e]
        assert len(errs) == 1 and "Huge" in errs[0]


class TestNoSizeLimit:
    @pytest.mark.parametrize(("type_", "after_fetch"), [
        ("imaps", "delete"), ("imaps", "keep"), ("pop3s", "delete"), ("pop3s", "keep")])
    def test_max_message_size_0_fetches_every_message(self, type_, after_fetch, mailbox,
                                                      poller_config, harness):
        """max_message_size = 0 means no limit, as for lmtp and submission: a large
        message is fetched, none is left as oversized."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge")])
        h = harness(poller_config(account_toml(mailbox, type_, after_fetch=after_fetch,
                                               max_message_size=0)))
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.oversized) == ("Successful", 2, 2, 0), r.error
        assert set(queues(h)) == {"Problem 1", "Huge"}
        assert errors_of(h, "box") == []
        with h.gw.engine.connect() as conn:
            assert state.list_oversized(conn, "box") == []


class TestUidvalidity:
    def test_keep_oversized_listed_once_after_a_uidvalidity_change(
            self, mailbox, poller_config, harness):
        """A recreated folder: the oversized message it had is listed once, not under
        both UIDVALIDITYs; nothing is stored twice."""
        big = message(2, size=30_000, subject="Huge")
        mailbox.append("helpdesk", [message(1), big], folder="Tickets")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               folder="Tickets", max_message_size="10KB")))
        assert (h.poll().new, h.poll().fetched) == (1, 0)
        c = mailbox.imap("helpdesk")
        c.delete("Tickets")
        c.logout()
        mailbox.append("helpdesk", [big], folder="Tickets")
        r = h.poll()
        assert (r.fetched, r.oversized) == (0, 1), r.error
        with h.gw.engine.connect() as conn:
            listed = state.list_oversized(conn, "box")
            position = state.folder_position(conn, "box", "Tickets")
        assert [o.subject for o in listed] == ["Huge"]
        assert position is not None and listed[0].key.startswith(f"{position[0]}:")


class TestFailingAccounts:
    def accounts(self, mailbox, tmp_path) -> list[str]:
        other = TestCA(tmp_path / "other-ca", name="someone else")
        return [account_toml(mailbox, "imaps", name="good"),
                account_toml(mailbox, "pop3s", name="badpw", password="wrong"),
                account_toml(mailbox, "imaps", name="down", port=free_port()),
                account_toml(mailbox, "imaptls", name="badcert",
                             tls_ca_file=str(other.ca_path))]

    def test_fetch_names_each_failing_account_on_one_line(self, mailbox, poller_config,
                                                         tmp_path, capsys):
        """`deskgate fetch`: one line per failing account naming it and the cause, exit
        75; the good account is fetched all the same."""
        mailbox.append("helpdesk", [message(1)])
        cfg = poller_config(*self.accounts(mailbox, tmp_path))
        capsys.readouterr()
        assert main(["--config", str(cfg.conf_dir), "fetch"]) == 75
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4, lines
        by_name = {line.split(" ", 1)[0]: line for line in lines}
        assert "Successful: 1 fetched" in by_name["good"]
        assert "Failed" in by_name["badpw"] and "Authentication" in by_name["badpw"]
        assert "Failed" in by_name["down"] and "refused the connection" in by_name["down"]
        assert "Failed" in by_name["badcert"] and "not trusted" in by_name["badcert"]
        assert main(["--config", str(cfg.conf_dir), "fetch", "--json", "down"]) == 75
        (row,) = json.loads(capsys.readouterr().out)
        assert row["status"] == "Failed" and "refused the connection" in row["error"]

    def test_failed_run_is_an_error_in_the_log_and_communication_log(
            self, mailbox, poller_config, harness, tmp_path):
        """A failed run is logged as an error naming the account and the cause (seen with
        log_level = "warning" too), and an Error in its communication."""
        mailbox.append("helpdesk", [message(1)])
        h = harness(poller_config(*self.accounts(mailbox, tmp_path)))
        causes = {"badpw": "refused", "down": "refused the connection",
                  "badcert": "not trusted"}
        with capture_logs() as logs:
            assert h.poll("good").status == "Successful"
            for name in causes:
                assert h.poll(name).status == "Failed"
        for name, cause in causes.items():
            bad = [e for e in logs if e.get("account") == name
                   and e["log_level"] in ("error", "warning")]
            assert len(bad) == 1, (name, logs)
            assert cause in bad[0]["error"]
            errs = errors_of(h, name)
            assert len(errs) == 1 and f"account {name}" in errs[0] and cause in errs[0]
        assert not [e for e in logs if e.get("account") == "good"
                    and e["log_level"] in ("error", "warning")]


class TestKeepOversizedGone:
    def test_keep_forgets_an_oversized_message_removed_from_the_server(
            self, mailbox, poller_config, harness):
        """keep: an oversized message someone deleted on the server leaves
        --list-oversized, as in the other modes."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge"),
                                    message(3)])
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               max_message_size="10KB")))
        assert (h.poll().oversized, h.poll().oversized) == (1, 1)
        c = mailbox.imap("helpdesk")
        c.select("INBOX")
        _, data = c.search(None, "LARGER", "20000")
        c.store(data[0].decode(), "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
        c.logout()
        r = h.poll()
        assert (r.status, r.fetched, r.oversized) == ("Successful", 0, 0), r.error
        with h.gw.engine.connect() as conn:
            assert state.list_oversized(conn, "box") == []

    @pytest.mark.parametrize("after_fetch", ["delete", "keep"])
    def test_oversized_counted_once_per_run_across_connections(
            self, after_fetch, mailbox, poller_config, harness):
        """A run of several connections (reconnect_every) counts an oversized message once."""
        mailbox.append("helpdesk", [message(1), message(2, size=30_000, subject="Huge"),
                                    *[message(i) for i in range(3, 8)]])
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch=after_fetch,
                                               max_message_size="10KB", reconnect_every=2)))
        r = h.poll()
        assert (r.fetched, r.oversized, r.connections) == (6, 1, 3), r.error
        r = h.poll()
        assert (r.fetched, r.oversized) == (0, 1), r.error


class TestIdleLogin:
    def test_refused_login_is_not_retried_within_seconds(self, mailbox, poller_config,
                                                          monkeypatch):
        """The IDLE watcher of an account with a wrong password does not log in again
        after its reconnect delay (poll runs already report it; repeated failures get
        the gateway's address banned by fail2ban): it waits the account's interval."""
        import time

        from gateway.inbound.poller import idle
        from gateway.inbound.poller.idle import IdleWatcher

        monkeypatch.setattr(idle, "BACKOFF", (0.2, 0.2, 0.2, 0.2))   # a lost connection

        cfg = poller_config(account_toml(mailbox, "imaps", password="wrong", interval="10m"))
        acc = cfg.account_by_name("box")
        watcher = IdleWatcher(acc, cfg.root, lambda: None)
        with capture_logs() as logs:
            watcher.start()
            time.sleep(3)
            watcher.stop()
        refused = [e for e in logs if e.get("account") == "box"
                   and e["log_level"] == "warning"]
        assert len(refused) == 1, refused
        assert "refused" in refused[0]["error"]
