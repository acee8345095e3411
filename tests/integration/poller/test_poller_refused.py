"""A message the server will not hand over (IMAP NO or BYE on its UID FETCH, POP3
-ERR on its RETR) stays on the server and is tried again by the next run; it
does not hold up the other mail of the mailbox."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway import metrics
from gateway.store.tables import Article, CommEntry
from tests.integration.poller.poller_helpers import USERS, account_toml, message
from tests.peers import dovecot as dv

pytestmark = pytest.mark.dovecot


def failures(account: str) -> float:
    return metrics.REGISTRY.get_sample_value("deskgate_poller_message_failures_total",
                                             {"account": account}) or 0.0


def articles(h) -> int:
    with h.gw.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Article)).scalar() or 0)


def fetch_errors(h, comm_id: int | None) -> list[str]:
    from gateway.store.tables import CommObject

    with h.gw.engine.connect() as conn:
        return list(conn.execute(select(CommEntry.value).join(
            CommObject, CommEntry.object_id == CommObject.id).where(
            CommObject.communication_id == comm_id, CommEntry.key == "Fetch",
            CommEntry.priority == "Error")).scalars())


@contextlib.contextmanager
def unreadable(server: dv.Dovecot, subject: str) -> Iterator[Path]:
    """The message's Maildir file is unreadable for Dovecot (it runs as `mail`)."""
    needle = f"Subject: {subject}".encode()
    path = server.message_file("helpdesk", needle)
    path.chmod(0)
    try:
        yield path
    finally:      # Dovecot may have renamed it meanwhile (new/ → cur/, flags)
        with contextlib.suppress(LookupError):
            server.message_file("helpdesk", needle).chmod(0o600)


@pytest.fixture(scope="module")
def dovecot_no_after(dovecot: dv.Dovecot) -> Iterator[dv.Dovecot]:
    """A second Dovecot that answers a FETCH it cannot complete with a tagged NO
    (imap_fetch_failure = no-after) instead of BYE."""
    with dv.own_dovecot(USERS, "imap_fetch_failure = no-after\n") as server:
        yield server


class TestRefusedMessage:
    @pytest.mark.parametrize(("type_", "after_fetch"), [
        ("imaps", "delete"), ("imaps", "keep"), ("imaps", "move:Done"),
        ("pop3s", "delete"), ("pop3s", "keep")])
    def test_unreadable_message_is_left_and_the_run_goes_on(
            self, type_, after_fetch, mailbox, poller_config, harness):
        """An unreadable message stays and is logged; the others are fetched, every run."""
        mailbox.append("helpdesk", [message(1), message(2, subject="Unreadable"),
                                    message(3)])
        h = harness(poller_config(account_toml(mailbox, type_, after_fetch=after_fetch)))
        kept = after_fetch == "keep"
        with unreadable(mailbox, "Unreadable"):
            before = failures("box")
            r = h.poll()
            assert (r.status, r.fetched, r.new, r.duplicate, r.failed) == (
                "Warning", 2, 2, 0, 1), r.error
            assert "Fetch" in r.error
            assert failures("box") == before + 1
            errs = fetch_errors(h, r.communication_id)
            assert len(errs) == 1
            if type_.startswith("imap"):
                assert "(UID " in errs[0] and "FETCH failed" in errs[0]
            else:
                assert "RETR 2" in errs[0] and "-ERR" in errs[0]
            assert "left on the server" in errs[0]
            assert mailbox.count("helpdesk") == (3 if kept else 1)

            mailbox.append("helpdesk", [message(4)])
            r = h.poll()              # still unreadable: tried again, the rest not held up
            assert (r.status, r.fetched, r.new, r.duplicate, r.failed) == (
                "Warning", 1, 1, 0, 1), r.error
        r = h.poll()                  # readable again: fetched, nothing else again
        assert (r.status, r.fetched, r.new, r.duplicate) == ("Successful", 1, 1, 0), r.error
        assert h.poll().fetched == 0
        assert articles(h) == 4
        assert mailbox.count("helpdesk") == (4 if kept else 0)

    def test_unreadable_message_among_many_batches(self, mailbox, poller_config, harness):
        """A BYE within a batch costs reconnects only; every other message is fetched once."""
        mailbox.append("helpdesk", [message(i, subject="Unreadable" if i == 25 else None)
                                    for i in range(45)])
        h = harness(poller_config(account_toml(mailbox, "imaps")))
        with unreadable(mailbox, "Unreadable"):
            r = h.poll()
        assert (r.status, r.fetched, r.new, r.duplicate, r.failed) == (
            "Warning", 44, 44, 0, 1), r.error
        assert mailbox.count("helpdesk") == 1

    @pytest.mark.parametrize("after_fetch", ["delete", "keep"])
    def test_tagged_no_leaves_only_that_message(self, after_fetch, dovecot_no_after,
                                                poller_config, harness):
        """A NO for one message: the rest of its batch is used, on the same connection."""
        server = dovecot_no_after
        server.clear("helpdesk")
        server.append("helpdesk", [message(1), message(2, subject="Unreadable"), message(3)])
        h = harness(poller_config(account_toml(server, "imaps", after_fetch=after_fetch)))
        with unreadable(server, "Unreadable"):
            r = h.poll()
            assert (r.status, r.fetched, r.new, r.failed, r.connections) == (
                "Warning", 2, 2, 1, 1), r.error
            errs = fetch_errors(h, r.communication_id)
            assert len(errs) == 1 and "(UID " in errs[0] and "NO [SERVERBUG]" in errs[0]
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.duplicate) == ("Successful", 1, 1, 0), r.error
        assert server.count("helpdesk") == (3 if after_fetch == "keep" else 0)
