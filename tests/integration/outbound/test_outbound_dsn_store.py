"""The DSN parameters (RFC 3461) kept with a queued message, on both backends:
migration 0017 adds their columns to existing rows (as "not given") and its
downgrade drops them; what the submission client gave is queued with the message
and each recipient and read back by the claim."""

from __future__ import annotations

from sqlalchemy import Engine, inspect

from gateway.outbound import queue as oq
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.runtime import build_runtime
from gateway.store import repo
from gateway.store.db import alembic_config
from tests.unit.outbound.test_outbound_queue import RAW

BEFORE = "0016_inbound_index_cost"


def _migrate(engine: Engine, db_url: str, rev: str, *, down: bool) -> None:
    from alembic import command

    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_0017_adds_the_columns_to_queued_rows(engine, db_url):
    """A message queued before 0017 is claimed after it with no DSN parameters; the
    downgrade drops the columns and keeps the rows."""
    _migrate(engine, db_url, BEFORE, down=True)
    assert "dsn_ret" not in _columns(engine, "outbound_message")
    assert "dsn_notify" not in _columns(engine, "outbound_recipient")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO outbound_message (kind, queue, sender, return_path, submitter, "
            "message_id, data, size, status, attempts, next_attempt, claimed_by, "
            "last_error, warned, created, updated) VALUES ('message', 'Raw', "
            "'s@example.org', 'app@internal.test', 'app', '<m@x>', 'x', 1, 'queued', 0, "
            "'2026-12-01 00:00:00+00:00', '', '', false, '2026-12-01 00:00:00+00:00', "
            "'2026-12-01 00:00:00+00:00')")
        conn.exec_driver_sql(
            "INSERT INTO outbound_recipient (outbound_id, address, status, attempts, "
            "last_code, last_reply, updated) SELECT id, 'a@customer.test', 'pending', 0, "
            "0, '', '2026-12-01 00:00:00+00:00' FROM outbound_message")
    _migrate(engine, db_url, "head", down=False)
    with engine.begin() as conn:
        (m,) = oq.claim(conn, "n", limit=5, lease=60)
    assert m.dsn == MessageDsn() and m.dsn_rcpt == {}
    assert [a for _, a in m.recipients] == ["a@customer.test"]
    _migrate(engine, db_url, BEFORE, down=True)
    assert "dsn_envid" not in _columns(engine, "outbound_message")
    assert "dsn_orcpt" not in _columns(engine, "outbound_recipient")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM outbound_recipient").scalar() == 1
    _migrate(engine, db_url, "head", down=False)


def test_parameters_are_queued_and_claimed(engine, config):
    """RET/ENVID with the message, NOTIFY/ORCPT with the recipients that were given
    them (matched in any case), nothing with the others."""
    from gateway.outbound.context import OutboundContext
    from gateway.outbound.pipeline import process_in_transaction
    from gateway.outbound.rewrite import parse_submission

    with engine.begin() as conn:
        repo.sync_config(conn, config)
    rt = build_runtime(config)
    ctx = OutboundContext(mail_from="app@internal.test",
                          recipients=["A@customer.test", "b@customer.test"], raw=RAW,
                          trusted=True)
    ctx.dsn = MessageDsn("HDRS", "QQ+1 x")
    long_orcpt = "rfc822;" + "o" * 479 + "@customer.test"   # 500, the longest
    ctx.dsn_rcpt = {"a@customer.test": RecipientDsn("SUCCESS,DELAY", long_orcpt)}
    with engine.begin() as conn:
        parse_submission(ctx, rt)
        process_in_transaction(ctx, rt, conn)
    with engine.begin() as conn:
        (m,) = oq.claim(conn, "n", limit=5, lease=60)
    assert m.dsn == MessageDsn("HDRS", "QQ+1 x")
    (a_id, a), (b_id, b) = m.recipients
    assert (a, b) == ("A@customer.test", "b@customer.test")
    assert m.rcpt_dsn(a_id) == RecipientDsn("SUCCESS,DELAY", long_orcpt)
    assert m.rcpt_dsn(b_id) == RecipientDsn()
