"""`deskgate deliver --via-socket`: one process per message hands it to the running
gateway's LMTP listener and exits with its verdict (0, 67, 65, 75); with no gateway
it delivers in-process. Real gateway, real `deskgate` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.config import load_config
from gateway.store.tables import Communication
from tests.integration.core.stored import Store

if TYPE_CHECKING:
    import pytest

    from tests.conftest import RunningGateway

REPO_ROOT = Path(__file__).resolve().parents[3]

# Runs the CLI like the console script, then writes the modules it imported.
_RUN_AND_LIST_MODULES = """
import json, sys
from gateway.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        json.dump(sorted(sys.modules), fh)
raise SystemExit(rc)
"""


def mail(subject: str, body: str = "hello\n") -> bytes:
    return (f"From: Alice <alice@customer.test>\nTo: support@example.org\nSubject: {subject}\n"
            f"Message-ID: <{uuid.uuid4().hex}@customer.test>\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"{body}").encode()


def deliver(conf: Path, raw: bytes, *args: str,
            modules_to: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ([sys.executable, "-c", _RUN_AND_LIST_MODULES, str(modules_to)] if modules_to
           else [sys.executable, "-m", "gateway"])
    proc = subprocess.run([*cmd, "--config", str(conf), "deliver", *args], input=raw,
                          capture_output=True, cwd=REPO_ROOT, timeout=120, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def account_types(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(Communication.account_type)
                                 .order_by(Communication.id)).scalars())


HEAVY = ("sqlalchemy", "alembic", "cryptography", "aiohttp", "aiosmtpd", "structlog",
         "prometheus_client", "gateway.config", "gateway.app", "gateway.store",
         "gateway.inbound", "gateway.outbound", "gateway.crypto", "gateway.web")


class TestViaSocket:
    def test_delivered_through_the_running_gateway(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
        """Exit 0 and the message is a ticket stored by the gateway (an LMTP
        communication), while the process imported neither the store nor the pipeline."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        listed = tmp_path / "modules.json"
        res = deliver(conf, mail("printer"), "--via-socket", "-r", "support@example.org",
                      modules_to=listed)
        assert res.returncode == 0, res.stderr
        assert "<support@example.org>: 250 2.1.5 delivered" in res.stdout
        store = Store(rg.gateway.engine)
        assert [t.title for t in store.tickets()] == ["printer"]
        assert "LMTP" in account_types(store) and "STDIN" not in account_types(store)
        imported = json.loads(listed.read_text())
        assert [m for m in imported if m.split(".")[0] in HEAVY or m.startswith(HEAVY)] == []

    def test_body_arrives_byte_for_byte(self, make_confdir: Callable[..., Path],
                                        run_gateway: Callable[..., RunningGateway]) -> None:
        """Lines starting with a dot and 8-bit UTF-8 text survive the LMTP hand-off."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        body = ".leading dot\n..two dots\nGrüße aus Köln\n.\nend\n"
        raw = mail("dots", body)
        res = deliver(conf, raw, "--via-socket", "-r", "support@example.org")
        assert res.returncode == 0, res.stderr
        assert Store(rg.gateway.engine).article_raws() == [raw.replace(b"\n", b"\r\n")]

    def test_unknown_recipient_exits_67(self, make_confdir: Callable[..., Path],
                                        run_gateway: Callable[..., RunningGateway]) -> None:
        """The gateway's 550 5.1.1 at RCPT is exit 67 and nothing is stored."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        res = deliver(conf, mail("nobody"), "--via-socket", "-r", "nobody@example.org")
        assert res.returncode == 67, res.stderr
        assert "550 5.1.1" in res.stderr
        assert Store(rg.gateway.engine).tickets() == []

    def test_one_unknown_among_known_recipients(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """The known recipient gets the message (exit 0, as in-process); the unknown one is
        named on stderr, and --json shows both answers."""
        conf = make_confdir()
        run_gateway(load_config(conf), tcp=False)
        res = deliver(conf, mail("two"), "--via-socket", "--json", "-r", "nobody@example.org",
                      "-r", "support@example.org")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert [(r["recipient"], r["stage"], r["reply"][:3]) for r in out["recipients"]] == [
            ("nobody@example.org", "rcpt", "550"), ("support@example.org", "data", "250")]

    def test_temporarily_invalid_recipient_exits_75(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """A 450 at RCPT (address valid = "invalid-temporarily") is exit 75: the MTA retries."""
        conf = make_confdir()
        run_gateway(load_config(conf), tcp=False)
        res = deliver(conf, mail("paused"), "--via-socket", "-r", "paused@example.org")
        assert res.returncode == 75, res.stderr

    def test_gateway_tempfail_after_data_exits_75(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """When the gateway answers 451 after the data (its store failed), exit 75 and
        nothing is stored; the retry is delivered once."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)

        async def broken(*_a: Any, **_k: Any) -> Any:
            raise OSError("disk gone")

        real = rg.gateway.deliver
        monkeypatch.setattr(rg.gateway, "deliver", broken)
        raw = mail("retry me")
        res = deliver(conf, raw, "--via-socket", "-r", "support@example.org")
        assert res.returncode == 75, res.stderr
        assert "451 4.3.0" in res.stderr
        monkeypatch.setattr(rg.gateway, "deliver", real)
        again = deliver(conf, raw, "--via-socket", "-r", "support@example.org")
        assert again.returncode == 0, again.stderr
        assert [t.title for t in Store(rg.gateway.engine).tickets()] == ["retry me"]

    def test_explicit_socket_path(self, make_confdir: Callable[..., Path],
                                  run_gateway: Callable[..., RunningGateway]) -> None:
        """--via-socket=PATH uses that socket, whatever [lmtp] listen says."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        other = make_confdir({"20-lmtp.toml": '[lmtp]\nlisten = ["unix:/nonexistent/x.sock"]\n'},
                             root=conf.parent.parent / "other")
        res = deliver(other, mail("explicit"), f"--via-socket={rg.socket_path}",
                      "-r", "support@example.org")
        assert res.returncode == 0, res.stderr
        assert [t.title for t in Store(rg.gateway.engine).tickets()] == ["explicit"]


    def test_session_ends_cleanly_on_the_gateways_side(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway],
            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        """The client reads the 221 to its QUIT before it closes: the gateway's side of
        each connection (unix socket and TCP) ends without an error, where the 221 was
        written into a closed socket (a broken pipe) and nothing is logged about it."""
        import logging

        from gateway.inbound.lmtp_connection import LmtpConnection

        ended: list[BaseException | None] = []
        real = LmtpConnection.connection_lost

        def spy(self: LmtpConnection, exc: Exception | None) -> None:
            ended.append(exc)
            real(self, exc)

        monkeypatch.setattr(LmtpConnection, "connection_lost", spy)
        caplog.set_level(logging.DEBUG)
        conf = make_confdir()
        rg = run_gateway(load_config(conf))
        targets = ["--via-socket"] * 6 + [f"--via-socket=127.0.0.1:{rg.port}"] * 3
        for n, target in enumerate(targets):
            res = deliver(conf, mail(f"clean {n}"), target, "-r", "support@example.org")
            assert res.returncode == 0, res.stderr
        assert rg.wait_logged_connections(len(targets)) == len(targets)
        assert ended == [None] * len(targets)
        logged = " ".join(r.getMessage() for r in caplog.records).lower()
        assert "broken pipe" not in logged and "connection lost" not in logged


class TestFallback:
    def test_no_gateway_delivers_in_process(self, make_confdir: Callable[..., Path]) -> None:
        """With no gateway on the socket the message is delivered in-process (a STDIN
        communication) with the usual output and exit 0."""
        conf = make_confdir()
        res = deliver(conf, mail("nobody listens"), "--via-socket", "-r", "support@example.org")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("new: ticket ")
        assert "no gateway on" in res.stderr and "delivering in-process" in res.stderr
        from gateway.store.db import make_engine

        engine = make_engine(load_config(conf).database_url)
        try:
            store = Store(engine)
            assert [t.title for t in store.tickets()] == ["nobody listens"]
            assert account_types(store) == ["STDIN"]
        finally:
            engine.dispose()

    def test_needs_a_recipient(self, make_confdir: Callable[..., Path]) -> None:
        """Without -r there is nothing to say at RCPT: exit 64 (usage) and no delivery."""
        conf = make_confdir()
        res = deliver(conf, mail("no rcpt"), "--via-socket")
        assert res.returncode == 64
        assert "needs -r" in res.stderr

    def test_address_that_would_inject_a_command(
            self, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """An envelope address with CR/LF or angle brackets is refused (exit 64) before
        anything is sent; nothing is stored."""
        conf = make_confdir()
        rg = run_gateway(load_config(conf), tcp=False)
        res = deliver(conf, mail("inject"), "--via-socket", "-f", "a@b.test>\r\nRSET",
                      "-r", "support@example.org")
        assert res.returncode == 64
        assert "envelope address" in res.stderr
        assert Store(rg.gateway.engine).tickets() == []
