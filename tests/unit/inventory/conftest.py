"""Fixtures of the inventory tests: a migrated store mirroring a config."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from gateway.config import Config
from gateway.store import repo
from gateway.store.db import make_engine, migrate

ACCOUNTS = """
[[account]]
name = "legacy"
type = "imaps"
host = "imap.example.org"
login = "helpdesk"
password = "s3cret-imap-pw"
folder = "Support/In"
dispatch = "queue"
queue = "Support"
interval = "5m"
comment = "old mailbox"

[[account]]
name = "sales-pop"
type = "pop3s"
host = "pop.example.net"
port = 1995
login = "sales"
password = "s3cret-pop-pw"
trusted = true
valid = false

[[account]]
name = "cloud"
type = "imaps"
host = "outlook.office365.com"
login = "desk@example.org"
[account.oauth2]
token_url = "https://login.example.org/token"
client_id = "abc"
client_secret = "s3cret-client"
refresh_token = "s3cret-refresh"
"""

POLICIES = {
    "020-vip.toml": """
        [[filter]]
        name = "020-vip"
        match = [{ header = "From", email = "boss@customer\\\\.test" }]
        set = { "X-Deskgate-Priority" = "5 very high" }
        comment = "the big customer"
        """,
    "010-spam.toml": """
        [[filter]]
        name = "010-spam"
        stop_after_match = true
        match = [{ header = "X-Spam-Flag", value = "^yes$" },
                 { header = "To", value = "support@example\\\\.org", not = true }]
        any = [{ header = "Subject", value = "viagra" }, { header = "Body", value = "casino" }]
        set = { "X-Deskgate-Queue" = "Junk" }
        """,
}


@pytest.fixture
def store() -> Iterator[Callable[[Config], Engine]]:
    """store(cfg): migrate cfg's SQLite database and mirror the config into it."""
    engines: list[Engine] = []

    def make(cfg: Config) -> Engine:
        engine = make_engine(cfg.database_url)
        engines.append(engine)
        migrate(engine)
        with engine.begin() as conn:
            repo.sync_config(conn, cfg)
        return engine

    yield make
    for e in engines:
        e.dispose()
