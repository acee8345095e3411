"""The communication log of a poll run, failed and quarantined messages, and one
node per account on PostgreSQL."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from sqlalchemy import func, select

from gateway import errors
from gateway.config import load_config
from gateway.inbound import pipeline
from gateway.inbound.poller.lease import AccountLock
from gateway.model import Outcome
from gateway.store.tables import Article, CommEntry, CommObject, Communication, Quarantine
from tests.integration.poller.poller_helpers import account_toml, message

pytestmark = pytest.mark.dovecot


def objects(h, comm_id):
    with h.gw.engine.connect() as conn:
        return conn.execute(select(CommObject.type, CommObject.status).where(
            CommObject.communication_id == comm_id).order_by(CommObject.id)).all()


class TestRunLog:
    def test_tempfailed_message_is_failed_and_left_for_the_next_run(
            self, mailbox, poller_config, harness, monkeypatch):
        """A 4xx outcome: that Message is Failed, the earlier one Successful, mail stays."""
        mailbox.append("helpdesk", [message(1), message(2), message(3)])
        h = harness(poller_config(account_toml(mailbox, "imaps")))
        real = h.gw.pipeline.deliver

        async def flaky(env, **kw):
            if b"Subject: Problem 2\r\n" in env.raw:
                return Outcome(replies=(errors.TEMPFAIL,), action="new", detail="database: x")
            return await real(env, **kw)

        monkeypatch.setattr(h.gw.pipeline, "deliver", flaky)
        r = h.poll()
        assert (r.status, r.fetched, r.failed) == ("Failed", 1, 1)
        assert mailbox.count("helpdesk") == 2
        assert objects(h, r.communication_id) == [
            ("Connection", "Failed"), ("Message", "Successful"), ("Message", "Failed")]
        with h.gw.engine.connect() as conn:
            comm = conn.execute(select(Communication).where(
                Communication.id == r.communication_id)).one()
            assert comm.status == "Failed" and comm.end is not None
            err = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "Pipeline")).scalar()
            assert "451" in err and "left on the server" in err
        monkeypatch.setattr(h.gw.pipeline, "deliver", real)
        r2 = h.poll()
        assert (r2.status, r2.fetched, r2.new) == ("Successful", 2, 2)
        assert mailbox.count("helpdesk") == 0

    def test_message_that_crashes_the_pipeline_is_quarantined_then_removed(
            self, mailbox, poller_config, harness, monkeypatch):
        """A pipeline crash quarantines the raw message, removes it, and warns."""
        def parse(ctx, rt):
            if b"Subject: Crash" in ctx.envelope.raw:
                raise RuntimeError("parser bug")
            pipeline.parse(ctx, rt)

        mailbox.append("helpdesk", [message(1), message(2, subject="Crash me")])
        h = harness(poller_config(account_toml(mailbox, "pop3s")))
        h.gw.pipeline.stages = h.gw.pipeline.stages.with_stage("prepare", "parse", parse)
        r = h.poll()
        assert (r.status, r.new, r.quarantined) == ("Warning", 1, 1)
        assert mailbox.count("helpdesk") == 0
        with h.gw.engine.connect() as conn:
            q = conn.execute(select(Quarantine)).one()
            assert b"Crash me" in q.raw and q.source == "POP3S:box"
            assert conn.execute(select(func.count()).select_from(Article)).scalar() == 1

    def test_connection_failure_fails_the_communication(self, mailbox, poller_config, harness):
        """Nothing listening: the run's only Connection object and the communication Fail."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        h = harness(poller_config(account_toml(mailbox, "imaps", port=port)))
        r = h.poll()
        assert r.status == "Failed" and "refused" in r.error
        assert objects(h, r.communication_id) == [("Connection", "Failed")]


@pytest.mark.postgres
class TestPostgres:
    def test_poll_on_postgresql_and_one_node_per_account(self, mailbox, make_confdir, pg_url,
                                                         harness):
        """On PostgreSQL a second node skips the account while the first holds it."""
        conf = make_confdir({"40-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n',
                             "50-accounts.toml": textwrap.dedent(
                                 account_toml(mailbox, "imaps", after_fetch="keep"))})
        cfg = load_config(conf)
        mailbox.append("helpdesk", [message(1), message(2)])
        node_a = harness(cfg)
        node_b = harness(dataclasses.replace(cfg))
        lock = AccountLock(node_a.gw.engine, cfg.state_dir / "run", "box")
        assert lock.acquire()
        try:
            r = node_b.poll()
            assert r.status == "Skipped" and "another" in r.error
        finally:
            lock.release()
        r = node_b.poll()
        assert (r.status, r.fetched) == ("Successful", 2)
        assert node_a.poll().fetched == 0          # keep-mode position is shared
        mailbox.append("helpdesk", [message(3)])
        assert node_a.poll().fetched == 1
