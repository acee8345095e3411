"""Two nodes on one PostgreSQL store answering the same address at the same moment:
each counted the other's auto-responses only once committed, so both could send
one over postmaster.max_emails_per_address_per_day. Counting an address is now one
node at a time (a transaction-scoped advisory lock); the node that finds another
one counting that address sends none this time and says why."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from gateway.config import PostmasterConfig, QueueConfig
from gateway.outbound import autoresponse_rules as autoresponse
from gateway.store.db import make_engine, migrate
from gateway.testing import config, context, runtime

pytestmark = pytest.mark.postgres

MAIL = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
        b"Subject: printer\r\nMessage-ID: <m%d@customer.test>\r\n\r\nhelp\r\n")


@pytest.fixture
def pg(pg_url: str) -> Engine:
    eng = make_engine(pg_url)
    migrate(eng)
    yield eng
    eng.dispose()


def rt():
    return runtime(config(queues=(
        QueueConfig(name="Raw"),
        QueueConfig(name="Support", address="support@example.org",
                    auto_response_new="Ticket {ticket_number}")),
        postmaster=PostmasterConfig(max_emails_per_address_per_day=5)))


def test_one_node_at_a_time_counts_an_address(pg: Engine) -> None:
    one, two = rt(), rt()
    with pg.connect() as first:
        tx = first.begin()
        assert autoresponse.suppression(context(MAIL % 1), one, first,
                                        "carla@customer.test") == ""
        with pg.begin() as second:
            why = autoresponse.suppression(context(MAIL % 2), two, second,
                                           "Carla@customer.test")
            assert "another node" in why and "carla@customer.test" in why.lower()
            # another address is not held up
            assert autoresponse.suppression(context(MAIL % 3), two, second,
                                            "bob@customer.test") == ""
        tx.commit()
    with pg.begin() as second:
        assert autoresponse.suppression(context(MAIL % 4), two, second,
                                        "carla@customer.test") == ""
