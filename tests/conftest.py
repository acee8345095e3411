"""Fixtures shared by every test area: a config directory, a database (SQLite or
PostgreSQL), and a running gateway with its LMTP listener on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.app import Gateway
from gateway.config import Config, load_config
from tests.peers.ports import free_port
from tests.peers.require import missing_peer


def pytest_configure(config: pytest.Config) -> None:
    import gateway.logs

    gateway.logs.CACHE_LOGGERS = False


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    """Every test starts from the same logging: deskgate's own (stderr, info level),
    with no logger cached. An in-process CLI run configures it at warning level and,
    with caching, kept its loggers: a later test's capture_logs then saw nothing,
    depending on the order the tests ran in."""
    from gateway.logs import setup_logging

    setup_logging("info", "console")


PG_ADMIN_URL = os.environ.get("DESKGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

BASE_CONF = """
[gateway]
hostname = "helpdesk.test"
state_dir = "var"
system_id = "10"

[lmtp]
listen = ["unix:var/run/lmtp.sock"]
max_message_size = "1MiB"

[postmaster]
default_queue = "Raw"

[dashboard]
listen = ""      # tests that want the dashboard set a free port

[[queue]]
name = "Raw"
address = "helpdesk@example.org"

[[queue]]
name = "Support"
address = "support@example.org"

[[queue]]
name = "Sales"
address = "sales@example.org"
follow_up = "new-ticket"

[[queue]]
name = "Junk"
follow_up = "reject"

[[address]]
email = "helpdesk@example.org"
queue = "Raw"

[[address]]
email = "support@example.org"
display_name = "Example Support"
queue = "Support"

[[address]]
email = "sales@example.org"
queue = "Sales"

[[address]]
email = "paused@example.org"
queue = "Support"
valid = "invalid-temporarily"

[[address]]
email = "old@example.org"
queue = "Support"
valid = "invalid"
"""


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply @requires_peer marks: a missing peer skips, or fails under CI=true."""
    mark = item.get_closest_marker("peer")
    if mark is not None and mark.kwargs.get("missing"):
        missing_peer(str(mark.kwargs["missing"]))




@pytest.fixture
def make_confdir(tmp_path: Path) -> Callable[..., Path]:
    """Write conf.d (BASE_CONF + extra files) and policies under a temp root; returns conf.d.

    make_confdir({"50-x.toml": "..."}, policies={"010.toml": "..."}, base=True)
    """

    def make(files: dict[str, str] | None = None, *, policies: dict[str, str] | None = None,
             base: bool = True, root: Path | None = None) -> Path:
        r = root or tmp_path / "root"
        conf = r / "conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        if base:
            (conf / "10-base.toml").write_text(BASE_CONF)
        for name, body in (files or {}).items():
            (conf / name).write_text(textwrap.dedent(body))
        pdir = r / "policies"
        pdir.mkdir(exist_ok=True)
        for name, body in (policies or {}).items():
            (pdir / name).write_text(textwrap.dedent(body))
        return conf

    return make


@pytest.fixture
def config(make_confdir: Callable[..., Path]) -> Config:
    return load_config(make_confdir())


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"deskgate_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        missing_peer(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def pg_unreachable(url: str) -> Iterator[None]:
    """Refuse new connections to the test database and end the open ones."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


@dataclass
class RunningGateway:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    socket_path: Path
    port: int
    config: Config

    def call(self, coro: object, timeout: float = 30) -> object:
        """Run a coroutine on the gateway's loop from the test thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def logged_connections(self) -> int:
        """Connection objects in the communication log (LMTP writes one per connection
        after it closes, asynchronously)."""
        from sqlalchemy import func, select

        from gateway.store.tables import CommObject
        with self.gateway.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(CommObject)
                                    .where(CommObject.type == "Connection")).scalar_one())

    def wait_logged_connections(self, count: int, timeout: float = 10) -> int:
        """Poll until at least `count` connections are logged; returns how many are."""
        import time

        deadline = time.monotonic() + timeout
        while (n := self.logged_connections()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return n


@pytest.fixture
def run_gateway() -> Iterator[Callable[[Config], RunningGateway]]:
    """Start Gateway.start() on a loop in a thread (LMTP on unix socket + a TCP port)."""
    started: list[tuple[RunningGateway, list[asyncio.AbstractServer], threading.Thread]] = []

    def start(cfg: Config, *, tcp: bool = True) -> RunningGateway:
        import dataclasses

        port = free_port()
        sock = cfg.root / "var" / "run" / "lmtp.sock"
        listen = (f"unix:{sock}",) + ((f"127.0.0.1:{port}",) if tcp else ())
        cfg = dataclasses.replace(cfg, lmtp=dataclasses.replace(cfg.lmtp, listen=listen))
        gw = Gateway(cfg)
        gw.prepare_store()
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, list[asyncio.AbstractServer]] = {}

        def runner() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                holder["servers"] = await gw.start()
                ready.set()

            loop.run_until_complete(boot())
            loop.run_forever()

        t = threading.Thread(target=runner, daemon=True)
        t.start()
        assert ready.wait(30), "gateway did not start"
        rg = RunningGateway(gw, loop, sock, port, cfg)
        started.append((rg, holder["servers"], t))
        return rg

    yield start
    for rg, servers, t in started:
        fut = asyncio.run_coroutine_threadsafe(rg.gateway.stop(servers), rg.loop)
        try:
            fut.result(30)
        finally:
            rg.loop.call_soon_threadsafe(rg.loop.stop)
            t.join(30)
            rg.loop.close()
