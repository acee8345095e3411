"""A mailbox shared with other IMAP clients: what they flagged \\Deleted is theirs.

No mode fetches such a message. Delete mode removes only the messages deskgate
committed: UID EXPUNGE with UIDPLUS; without it no EXPUNGE while another client's
message carries \\Deleted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from gateway.config import load_config
from gateway.inbound.poller import state
from gateway.store.tables import CommEntry, PollerRetry, Ticket
from tests.integration.poller.poller_helpers import USERS, account_toml, message
from tests.peers import dovecot as dv

pytestmark = pytest.mark.dovecot

# Dovecot's capabilities after login, less UIDPLUS and MOVE.
NO_UIDPLUS = ("imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
              "LITERAL+ NAMESPACE CHILDREN UNSELECT")


def flag_deleted(server: dv.Dovecot, subject: str, *, on: bool = True) -> None:
    """Another client sets (or clears) \\Deleted on one message and does not expunge."""
    c = server.imap("helpdesk")
    try:
        c.select("INBOX")
        _, data = c.uid("SEARCH", None, "SUBJECT", f'"{subject}"')
        uids = data[0].split()
        assert len(uids) == 1, data
        typ, _ = c.uid("STORE", uids[0].decode(), "+FLAGS.SILENT" if on else "-FLAGS.SILENT",
                       "(\\Deleted)")
        assert typ == "OK"
    finally:
        c.logout()      # LOGOUT, not CLOSE: nothing is expunged


def mailbox_state(server: dv.Dovecot) -> dict[str, bool]:
    """Subject → flagged \\Deleted, for every message still in INBOX."""
    c = server.imap("helpdesk")
    try:
        _, exists = c.select("INBOX", readonly=True)
        if not int(exists[0] or 0):
            return {}
        _, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out: dict[str, bool] = {}
        for item in data:
            if isinstance(item, tuple):
                subject = item[1].decode().split(":", 1)[1].strip()
                out[subject] = b"\\Deleted" in item[0]
        return out
    finally:
        c.logout()


def notes(h, key: str) -> list[str]:
    with h.gw.engine.connect() as conn:
        return list(conn.execute(select(CommEntry.value).where(CommEntry.key == key))
                    .scalars())


def titles(h) -> list[str]:
    with h.gw.engine.connect() as conn:
        return sorted(conn.execute(select(Ticket.title)).scalars())


@pytest.fixture(scope="class")
def plain_dovecot() -> Iterator[dv.Dovecot]:
    """A Dovecot of its own that announces neither UIDPLUS nor MOVE."""
    with dv.own_dovecot(USERS, NO_UIDPLUS) as server:
        yield server


class TestWithUidplus:
    def test_another_clients_deleted_message_survives(self, mailbox, poller_config, harness):
        """UID EXPUNGE removes ours; the message another client flagged stays, unfetched."""
        mailbox.append("helpdesk", [message(1), message(2, subject="Theirs"), message(3)])
        flag_deleted(mailbox, "Theirs")
        h = harness(poller_config(account_toml(mailbox, "imaps")))
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 2, 2), r.error
        assert mailbox_state(mailbox) == {"Theirs": True}
        assert h.poll().fetched == 0
        assert mailbox_state(mailbox) == {"Theirs": True}

    def test_move_without_copying_another_clients_deleted_message(
            self, mailbox, poller_config, harness):
        """move: the message another client flagged is neither fetched nor moved."""
        mailbox.append("helpdesk", [message(1), message(2, subject="Theirs")])
        flag_deleted(mailbox, "Theirs")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="move:Done")))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 1), r.error
        assert mailbox_state(mailbox) == {"Theirs": True}
        assert mailbox.count("helpdesk", "Done") == 1


class TestWithoutUidplus:
    def test_no_expunge_while_another_client_has_deleted_mail(
            self, plain_dovecot, poller_config, harness):
        """Without UIDPLUS ours stay flagged until no other message is; never fetched twice."""
        server = plain_dovecot
        server.clear("helpdesk")
        server.append("helpdesk", [message(1), message(2, subject="Theirs"), message(3)])
        flag_deleted(server, "Theirs")
        h = harness(poller_config(account_toml(server, "imaps")))
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 2, 2), r.error
        assert mailbox_state(server) == {"Problem 1": True, "Theirs": True, "Problem 3": True}
        held = notes(h, "Remove")
        assert any("not expunged" in n and "another client" in n for n in held), held

        r = h.poll()                                   # ours are not fetched again
        assert (r.status, r.fetched, r.duplicate) == ("Successful", 0, 0), r.error
        assert mailbox_state(server) == {"Problem 1": True, "Theirs": True, "Problem 3": True}

        flag_deleted(server, "Theirs", on=False)       # the other client changed its mind
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 1, 1), r.error
        assert mailbox_state(server) == {}

    def test_expunge_when_nothing_else_is_deleted(self, plain_dovecot, poller_config,
                                                  harness):
        """Without UIDPLUS and without another client's \\Deleted mail, EXPUNGE runs."""
        server = plain_dovecot
        server.clear("helpdesk")
        server.append("helpdesk", [message(1), message(2)])
        h = harness(poller_config(account_toml(server, "imaptls")))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 2), r.error
        assert mailbox_state(server) == {}


class TestKeep:
    def test_keep_does_not_fetch_another_clients_deleted_message(
            self, mailbox, poller_config, harness):
        """keep: a message flagged \\Deleted is not fetched, the others after it are."""
        mailbox.append("helpdesk", [message(1), message(2, subject="Theirs"), message(3)])
        flag_deleted(mailbox, "Theirs")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep")))
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 2, 2), r.error
        assert titles(h) == ["Problem 1", "Problem 3"]
        assert any("another client" in n for n in notes(h, "Deleted")), notes(h, "Deleted")
        r = h.poll()
        assert (r.status, r.fetched, r.duplicate) == ("Successful", 0, 0), r.error
        assert mailbox_state(mailbox) == {"Problem 1": False, "Theirs": True,
                                          "Problem 3": False}

    def test_keep_fetches_it_once_the_flag_is_taken_back(self, mailbox, poller_config,
                                                         harness):
        """keep: as in delete mode, a message no longer flagged is fetched, once."""
        mailbox.append("helpdesk", [message(1, subject="Theirs"), message(2)])
        flag_deleted(mailbox, "Theirs")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep")))
        assert h.poll().fetched == 1
        mailbox.append("helpdesk", [message(3)])
        r = h.poll()                                   # still flagged: only the new one
        assert (r.status, r.fetched, r.duplicate) == ("Successful", 1, 0), r.error
        flag_deleted(mailbox, "Theirs", on=False)
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.duplicate) == ("Successful", 1, 1, 0), r.error
        assert titles(h) == ["Problem 2", "Problem 3", "Theirs"]
        assert h.poll().fetched == 0

    def test_keep_leaves_an_oversized_message_taken_back(self, mailbox, poller_config,
                                                         harness):
        """keep: a message too big when its flag is taken back is left as oversized."""
        mailbox.append("helpdesk", [message(1, size=30_000, subject="Theirs"), message(2)])
        flag_deleted(mailbox, "Theirs")
        h = harness(poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                               max_message_size="10KB")))
        r = h.poll()
        assert (r.fetched, r.oversized) == (1, 0), r.error
        flag_deleted(mailbox, "Theirs", on=False)
        r = h.poll()
        assert (r.status, r.fetched, r.oversized) == ("Successful", 0, 1), r.error
        assert titles(h) == ["Problem 2"]
        with h.gw.engine.connect() as conn:
            assert [o.subject for o in state.list_oversized(conn, "box")] == ["Theirs"]
        h.gw.config = poller_config(account_toml(mailbox, "imaps", after_fetch="keep",
                                                 max_message_size="1MB"))
        assert h.poll().fetched == 1
        assert titles(h) == ["Problem 2", "Theirs"]

    @pytest.mark.postgres
    def test_keep_holds_thousands_of_deleted_messages_on_postgresql(
            self, mailbox, make_confdir, pg_url, harness):
        """keep: a folder whose messages another client all flagged \\Deleted (a
        mail client that marks deleted messages and does not expunge) is held whole,
        more messages than one statement takes parameters for (PostgreSQL: 65535)."""
        n = 8300
        mailbox.drop_into_maildir("helpdesk", [message(i) for i in range(n)])
        c = mailbox.imap("helpdesk")
        try:
            c.select("INBOX")
            typ, _ = c.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")
            assert typ == "OK"
        finally:
            c.logout()
        conf = make_confdir({"40-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n',
                             "50-accounts.toml": account_toml(mailbox, "imaps",
                                                              after_fetch="keep")})
        h = harness(load_config(conf))
        r = h.poll()
        assert (r.status, r.fetched) == ("Successful", 0), r.error
        with h.gw.engine.connect() as conn:
            held = conn.execute(select(func.count()).select_from(PollerRetry)).scalar()
        assert held == n
        mailbox.append("helpdesk", [message(n, subject="After them")])
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 1, 1), r.error
        assert titles(h) == ["After them"]
