"""Every account type against the real Dovecot: connect, authenticate, fetch, remove."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gateway.store.tables import Article, CommEntry, CommObject, Communication, Ticket
from tests.integration.poller.poller_helpers import account_toml, message

pytestmark = pytest.mark.dovecot


class TestAccountTypes:
    @pytest.mark.parametrize("type_", ["imap", "imaps", "imaptls", "pop3", "pop3s", "pop3tls"])
    def test_type_fetches_and_deletes(self, type_, mailbox, poller_config, harness):
        """Each type fetches two messages into tickets and deletes them from the server."""
        mailbox.append("helpdesk", [message(1), message(2, to="sales@example.org")])
        h = harness(poller_config(account_toml(mailbox, type_)))
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.failed) == ("Successful", 2, 2, 0), r
        assert mailbox.count("helpdesk") == 0
        with h.gw.engine.connect() as conn:
            queues = sorted(conn.execute(select(Ticket.queue)).scalars())
            assert queues == ["Sales", "Support"]
            comm = conn.execute(select(Communication)).one()
            assert (comm.account_type, comm.account, comm.status) == (type_.upper(), "box",
                                                                      "Successful")
            objs = conn.execute(select(CommObject.type, CommObject.status)
                                .where(CommObject.communication_id == comm.id)).all()
            assert sorted(objs) == [("Connection", "Successful"), ("Message", "Successful"),
                                    ("Message", "Successful")]
            tls = conn.execute(select(CommEntry.value).where(CommEntry.key == "Connection")
                               ).scalars().all()
            if type_ in ("imap", "pop3"):
                assert any("no TLS" in v for v in tls)
                warn = conn.execute(select(CommEntry.priority).where(CommEntry.key == "TLS")
                                    ).scalar()
                assert warn == "Warn"
            else:
                assert any("verified" in v and "TLS" in v for v in tls)
            assert conn.execute(select(func.count()).select_from(Article)).scalar() == 2
