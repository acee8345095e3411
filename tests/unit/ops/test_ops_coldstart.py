"""Start-up cost of the CLI: what `deskgate --help` imports, the one-read schema check,
a configuration sync that writes nothing when nothing changed, and the LMTP client
of `deliver --via-socket` when the gateway misbehaves."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from gateway.cli import main
from gateway.config import LmtpConfig, load_config
from gateway.rawconf import DEFAULT_LISTEN, lmtp_listen, lmtp_target
from gateway.store import repo
from gateway.store.db import ensure_schema, head_revision, make_engine, migrate
from gateway.store.tables import Queue, Ticket

REPO_ROOT = Path(__file__).resolve().parents[3]

# Modules a command that only parses its arguments must not import: each costs
# tens to hundreds of milliseconds.
HEAVY = ("sqlalchemy", "alembic", "cryptography", "aiohttp", "aiosmtpd", "structlog",
         "prometheus_client", "regex", "dkim", "gnupg", "jinja2", "psycopg", "asyncio",
         "gateway.app", "gateway.config", "gateway.store", "gateway.inbound",
         "gateway.outbound", "gateway.crypto", "gateway.web", "gateway.helpdesk")


def imported_by(code: str) -> list[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = (f"import sys, json\n{code}\n"
              "json.dump(sorted(sys.modules), sys.__stdout__)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=True)
    return list(json.loads(proc.stdout.splitlines()[-1]))


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def help_of(*argv: str) -> str:
    return ("import contextlib, io\nfrom gateway.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.suppress(SystemExit):\n"
            f"    main({list(argv)!r})\n")


class TestHelpImports:
    def test_help_imports_nothing_heavy(self) -> None:
        """`deskgate --help` builds every subcommand without importing the store, the
        pipeline, crypto, web, asyncio or the configuration."""
        modules = imported_by(help_of("--help"))
        assert "gateway.cli.core" in modules and "gateway.cli.outbound" in modules
        assert heavy(modules) == []

    def test_subcommand_help_imports_nothing_heavy(self) -> None:
        """`deskgate tickets --help`, `log list --help` and `deliver --help` neither."""
        for argv in (("tickets", "--help"), ("log", "list", "--help"), ("deliver", "--help")):
            assert heavy(imported_by(help_of(*argv))) == [], argv

    def test_deliver_builds_only_its_parser(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`deliver` parses with the core module's parser only; other names still reach
        the full parser (an unknown command is an argparse error, exit 2)."""
        modules = imported_by(help_of("-c", "x", "deliver", "--help"))
        assert "gateway.cli.core" in modules and "gateway.cli.tickets" not in modules
        with pytest.raises(SystemExit) as exc:
            main(["no-such-command"])
        assert exc.value.code == 2
        assert "tickets" in capsys.readouterr().err


class TestSchemaCheck:
    def test_head_revision_is_alembics_head(self) -> None:
        """The head read from the revision files is the one Alembic computes."""
        from alembic.script import ScriptDirectory

        from gateway.store.db import alembic_config

        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        assert head_revision() == script.get_current_head()

    def test_migrates_only_when_behind(self, tmp_path: Path) -> None:
        """A fresh database and one at an older revision are migrated to the head; a
        current one is not touched (False)."""
        from alembic import command

        from gateway.store.db import alembic_config, current_revision

        engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
        assert ensure_schema(engine) is True
        assert current_revision(engine) == head_revision()
        assert ensure_schema(engine) is False
        engine.dispose()

        old = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
        cfg = alembic_config(str(old.url))
        with old.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003_poller")
        assert current_revision(old) == "0003_poller"
        assert ensure_schema(old) is True
        assert current_revision(old) == head_revision()
        old.dispose()

    @pytest.mark.postgres
    def test_postgres_fresh_then_current(self, pg_url: str) -> None:
        """On PostgreSQL the missing alembic_version table of a fresh database leads to
        the migration (not to an aborted transaction); the next check is a read."""
        from gateway.store.db import current_revision

        engine = make_engine(pg_url)
        try:
            assert ensure_schema(engine) is True
            assert current_revision(engine) == head_revision()
            assert ensure_schema(engine) is False
        finally:
            engine.dispose()

    def test_current_schema_check_does_not_import_alembic(self, tmp_path: Path) -> None:
        """On a current database the check is a read: Alembic is not even imported."""
        url = f"sqlite:///{tmp_path / 'c.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        modules = imported_by("from gateway.store.db import ensure_schema, make_engine\n"
                              f"assert ensure_schema(make_engine({url!r})) is False\n")
        assert not [m for m in modules if m.split(".")[0] == "alembic"]


class TestSyncConfig:
    def test_unchanged_configuration_writes_nothing(self, tmp_path: Path,
                                                    make_confdir: Callable[..., Path]) -> None:
        """The second sync of the same files issues no INSERT or UPDATE; a changed queue
        is updated alone."""
        cfg = load_config(make_confdir())
        engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
        migrate(engine)
        with engine.begin() as conn:
            repo.sync_config(conn, cfg)
        writes: list[str] = []

        @event.listens_for(engine, "before_cursor_execute")
        def record(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
            if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
                writes.append(statement)

        with engine.begin() as conn:
            repo.sync_config(conn, cfg)
        assert writes == []

        import dataclasses

        support = cfg.queue_by_name("Support")
        assert support is not None
        changed = dataclasses.replace(cfg, queue=tuple(
            dataclasses.replace(q, comment="second level") if q is support else q
            for q in cfg.queue))
        with engine.begin() as conn:
            repo.sync_config(conn, changed)
            comment = conn.execute(select(Queue.comment).where(Queue.name == "Support"))
            assert comment.scalar_one() == "second level"
        assert len(writes) == 1 and writes[0].lstrip().upper().startswith("UPDATE")
        engine.dispose()


class TestRawConf:
    def test_listen_as_load_config_reads_it(self, make_confdir: Callable[..., Path]) -> None:
        """The socket `deliver --via-socket` finds is the one the gateway binds: default,
        configured in a later file, and a TCP-only listener (wildcard → loopback)."""
        assert LmtpConfig().listen == DEFAULT_LISTEN
        conf = make_confdir()
        assert lmtp_listen(conf) == load_config(conf).lmtp.listen
        assert lmtp_target(lmtp_listen(conf), conf.parent) == str(
            conf.parent / "var" / "run" / "lmtp.sock")
        conf = make_confdir({"90-lmtp.toml": '[lmtp]\nlisten = ["0.0.0.0:2424"]\n'})
        assert lmtp_listen(conf) == load_config(conf).lmtp.listen == ("0.0.0.0:2424",)
        assert lmtp_target(lmtp_listen(conf), conf.parent) == ("127.0.0.1", 2424)
        assert lmtp_target(("[::]:24",), conf.parent) == ("::1", 24)


@contextlib.contextmanager
def one_shot_server(path: Path, script: Callable[[socket.socket], None]) -> Iterator[None]:
    """A unix socket that runs `script` on its first connection (a misbehaving gateway)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(20)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                script(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join(20)
        srv.close()


def run_deliver(monkeypatch: pytest.MonkeyPatch, conf: Path, *argv: str) -> int:
    raw = (b"From: a@customer.test\nTo: support@example.org\nSubject: s\n"
           b"Message-ID: <cold@customer.test>\n\nhi\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    return main(["--config", str(conf), "deliver", *argv])


class TestViaSocketClient:
    def test_session_lost_after_data_is_tempfail(self, tmp_path: Path,
                                                 make_confdir: Callable[..., Path],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """A gateway that takes the data and closes without answering leaves the
        message's fate unknown: exit 75 (the MTA retries), no in-process delivery."""
        conf = make_confdir()
        sock = tmp_path / "lmtp.sock"

        def swallow(conn: socket.socket) -> None:
            f = conn.makefile("rb")
            conn.sendall(b"220 test LMTP\r\n")
            for reply in (b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
                f.readline()
                conn.sendall(reply)
            while f.readline() not in (b".\r\n", b""):
                pass

        with one_shot_server(sock, swallow):
            rc = run_deliver(monkeypatch, conf, f"--via-socket={sock}",
                             "-r", "support@example.org")
        assert rc == 75
        assert "LMTP session to the gateway failed" in capsys.readouterr().err
        engine = make_engine(load_config(conf).database_url)
        with engine.connect() as conn:
            assert not engine.dialect.has_table(conn, "ticket") or \
                conn.execute(select(Ticket)).all() == []
        engine.dispose()

    def test_no_greeting_delivers_in_process(self, tmp_path: Path,
                                             make_confdir: Callable[..., Path],
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """A listener that answers 421 instead of 220 (stopping, or full) is no gateway
        to talk to: the message is delivered in-process, exit 0."""
        conf = make_confdir()
        sock = tmp_path / "lmtp.sock"
        with one_shot_server(sock, lambda c: c.sendall(b"421 4.3.2 shutting down\r\n")):
            rc = run_deliver(monkeypatch, conf, f"--via-socket={sock}",
                             "-r", "support@example.org")
        assert rc == 0
        assert capsys.readouterr().out.startswith("new: ticket ")
