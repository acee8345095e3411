"""The communication log of a poll run, failed and quarantined messages (one that
fails for its own reason does not hold up the rest; a database that is down ends
the run), and one node per account on PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import textwrap

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gateway import metrics
from gateway.config import load_config
from gateway.inbound import pipeline
from gateway.inbound.poller import state
from gateway.inbound.poller.lease import AccountLock
from gateway.store.tables import Article, CommEntry, CommObject, Quarantine
from tests.conftest import pg_unreachable
from tests.integration.poller.poller_helpers import account_toml, message

pytestmark = pytest.mark.dovecot


def objects(h, comm_id):
    with h.gw.engine.connect() as conn:
        return conn.execute(select(CommObject.type, CommObject.status).where(
            CommObject.communication_id == comm_id).order_by(CommObject.id)).all()


def poison(h, subject: str = "Poison") -> None:
    """The store stage fails temporarily for one message (the database itself is up)."""
    store = h.gw.pipeline.stages.fn("commit", "store")

    def failing(ctx, rt, conn):
        if f"Subject: {subject}".encode() in ctx.envelope.raw:
            raise OperationalError("INSERT INTO article ...", {}, Exception("row too big"))
        return store(ctx, rt, conn)

    h.gw.pipeline.stages = h.gw.pipeline.stages.with_stage("commit", "store", failing)


def failures(account: str) -> float:
    return metrics.REGISTRY.get_sample_value("deskgate_poller_message_failures_total",
                                             {"account": account}) or 0.0


class TestMessageFailure:
    @pytest.mark.parametrize(("type_", "after_fetch"), [
        ("imaps", "delete"), ("imaps", "keep"), ("pop3s", "delete"), ("pop3s", "keep")])
    def test_failing_message_is_left_and_the_run_goes_on(
            self, type_, after_fetch, mailbox, poller_config, harness):
        """A message failing for its own reason stays; later mail is fetched, every run."""
        mailbox.append("helpdesk", [message(1), message(2, subject="Poison"), message(3)])
        h = harness(poller_config(account_toml(mailbox, type_, after_fetch=after_fetch)))
        clean = h.gw.pipeline.stages
        poison(h)
        before = failures("box")
        r = h.poll()
        assert (r.status, r.fetched, r.new, r.failed) == ("Warning", 2, 2, 1), r.error
        assert "Pipeline" in r.error and "451" in r.error
        assert failures("box") == before + 1
        assert sorted(objects(h, r.communication_id)) == [
            ("Connection", "Warning"), ("Message", "Failed"), ("Message", "Successful"),
            ("Message", "Successful")]
        with h.gw.engine.connect() as conn:
            err = conn.execute(select(CommEntry.value).where(
                CommEntry.key == "Pipeline")).scalar()
            assert "OperationalError" in err and "left on the server" in err
            assert state.account_status(conn, "box")[0].status == "Warning"
        assert mailbox.count("helpdesk") == (3 if after_fetch == "keep" else 1)

        mailbox.append("helpdesk", [message(4)])
        r = h.poll()                  # still failing: the rest is not held up, nothing twice
        assert (r.status, r.fetched, r.new, r.duplicate, r.failed) == ("Warning", 1, 1, 0, 1)

        h.gw.pipeline.stages = clean
        r = h.poll()                  # the cause is gone: fetched, nothing else again
        assert (r.status, r.fetched, r.new, r.duplicate) == ("Successful", 1, 1, 0), r.error
        assert h.poll().fetched == 0
        assert mailbox.count("helpdesk") == (4 if after_fetch == "keep" else 0)
        with h.gw.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Article)).scalar() == 4


class TestRunLog:
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
    def test_database_down_stops_the_run(self, mailbox, make_confdir, pg_url, harness,
                                         monkeypatch):
        """A 451 while the database is down ends the run; nothing later is fetched or lost."""
        cfg = load_config(make_confdir({
            "40-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n',
            "50-accounts.toml": textwrap.dedent(account_toml(mailbox, "imaps"))}))
        mailbox.append("helpdesk", [message(1), message(2, subject="Outage"), message(3)])
        h = harness(cfg)
        down = contextlib.ExitStack()
        real_deliver = h.gw.pipeline.deliver
        real_probe = h.poller._database_up

        async def deliver(env, **kw):
            if b"Subject: Outage" in env.raw:
                down.enter_context(pg_unreachable(pg_url))
            return await real_deliver(env, **kw)

        async def probe(account):
            try:
                return await real_probe(account)
            finally:
                down.close()          # the database comes back after the check

        monkeypatch.setattr(h.gw.pipeline, "deliver", deliver)
        monkeypatch.setattr(h.poller, "_database_up", probe)
        r = h.poll()
        assert (r.status, r.fetched, r.failed) == ("Failed", 1, 1), r.error
        assert mailbox.count("helpdesk") == 2
        assert objects(h, r.communication_id) == [
            ("Connection", "Failed"), ("Message", "Successful"), ("Message", "Failed")]
        monkeypatch.setattr(h.gw.pipeline, "deliver", real_deliver)
        r = h.poll()
        assert (r.status, r.fetched, r.new) == ("Successful", 2, 2), r.error
        assert mailbox.count("helpdesk") == 0

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
