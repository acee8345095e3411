"""Fixtures of the core integration tests: one throwaway Postfix per module that
relays example.org to the LMTP socket of the gateway under test, and helpers to
read what the gateway stored."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, func, select

from gateway.config import load_config
from gateway.store.tables import Article, Delivery, Quarantine, RawMessage, Ticket
from tests.peers import postfix as pfmod
from tests.peers.postfix import Postfix

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

# Postfix's lmtp client runs as user postfix: the socket goes to that group.
POSTFIX_SOCKET_CONF = """
[lmtp]
socket_mode = "0660"
socket_group = "postfix"
"""


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    """A Postfix instance relaying example.org to <base>/lmtp.sock, shared by a module."""
    if not pfmod.available():
        pytest.skip("Postfix binaries missing or not running as root")
    with pfmod.postfix_dir() as base:
        pf = Postfix(base, f"unix:{base / 'lmtp.sock'}")
        pf.start()
        try:
            yield pf
        finally:
            pf.stop()


@pytest.fixture
def pf_gateway(postfix: Postfix, make_confdir: Callable[..., Path],
               run_gateway: Callable[..., RunningGateway]
               ) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway whose LMTP socket is the one Postfix delivers to.

    The gateway's root lives under the Postfix base directory (pytest's temp
    dirs are 0700, so user postfix could not reach a socket there); the fixed
    socket path Postfix knows is a symlink to the socket of this test's gateway.
    """
    link = postfix.base / "lmtp.sock"

    def start(files: dict[str, str] | None = None, **kw: Any) -> RunningGateway:
        root = postfix.base / f"gw-{uuid.uuid4().hex[:8]}"
        conf = make_confdir({"20-postfix.toml": POSTFIX_SOCKET_CONF, **(files or {})},
                            root=root)
        root.chmod(0o755)
        rg = run_gateway(load_config(conf), **kw)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(rg.socket_path)
        return rg

    yield start
    postfix.purge()
    with contextlib.suppress(FileNotFoundError):
        link.unlink()


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


@pytest.fixture
def store_of() -> Callable[[RunningGateway], Store]:
    return lambda rg: Store(rg.gateway.engine)
