"""Reading what a gateway committed, and small config snippets for the core tests."""

from __future__ import annotations

import textwrap
from typing import Any

from sqlalchemy import Engine, func, select

from gateway.store.tables import Article, Delivery, Quarantine, RawMessage, Ticket

# Postfix's lmtp client runs as user postfix: the socket goes to that group.
POSTFIX_SOCKET_CONF = """
[lmtp]
socket_mode = "0660"
socket_group = "postfix"
"""


def db_conf(url: str) -> dict[str, str]:
    """A conf.d file pointing the gateway at another database."""
    return {"30-db.toml": textwrap.dedent(f"""
        [gateway]
        database = "{url}"
        """)}


class Store:
    """Read what a gateway committed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def count(self, table: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def tickets(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Ticket).order_by(Ticket.id)).all())

    def articles(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Article).order_by(Article.id)).all())

    def article_raws(self) -> list[bytes]:
        with self.engine.connect() as conn:
            return [bytes(r) for r in conn.execute(
                select(RawMessage.data).join(Article, Article.raw_id == RawMessage.id)
                .order_by(Article.id)).scalars()]

    def quarantine(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Quarantine).order_by(Quarantine.id)).all())

    def deliveries(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Delivery).order_by(Delivery.id)).all())
