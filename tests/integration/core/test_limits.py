"""Connection limits of the LMTP and submission listeners, over real sockets:
max_sessions and max_sessions_per_ip answer 421 4.7.0 and log a Warning, the
idle timeout is not extended by NOOP, and a submission flood cannot starve LMTP
(a real `deskgate serve` with a small RLIMIT_NOFILE)."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from select import select as poll_readable

import pytest
from sqlalchemy import Engine, create_engine, select

from gateway.config import load_config
from gateway.store.tables import CommEntry, Communication
from tests.conftest import free_port
from tests.peers.lmtp import LmtpClient
from tests.peers.serve import ROOT, stop_serve

MAILDIR = '[relay]\nmode = "maildir"\n'


def warnings_logged(engine: Engine, account_type: str) -> list[tuple[str, str]]:
    """(communication status, entry text) of every Limit entry of that door."""
    with engine.connect() as conn:
        rows = conn.execute(select(Communication.status, CommEntry.value)
                            .join(CommEntry, CommEntry.communication_id == Communication.id)
                            .where(CommEntry.key == "Limit",
                                   Communication.account_type == account_type)).all()
    return [(r[0], r[1]) for r in rows]


def wait_for(pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        time.sleep(0.05)
    return pred()


def smtp_open(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """Connect to a submission port (from `source`); (socket, first reply line)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s, s.makefile("rb").readline().decode().strip()


def http_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TestLmtpMaxSessions:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_over_max_sessions_gets_421_and_a_warning(self, make_confdir, run_gateway,
                                                      workers):
        """With max_sessions = 4, a fifth idle connection gets 421 4.7.0 and is closed,
        the communication log gets a Warning naming max_sessions, /healthz says the
        LMTP listener is not accepting; once one closes a new one is served (also
        with the one-at-a-time accept loop of pre-forked workers)."""
        port = free_port()
        conf = make_confdir({"50-limits.toml": f"[lmtp]\nmax_sessions = 4\nworkers = {workers}\n",
                             "60-dash.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'})
        rg = run_gateway(load_config(conf))
        held = [LmtpClient(rg.socket_path) for _ in range(4)]
        assert all(c.greeting[0] == 220 for c in held)
        extra = LmtpClient(rg.socket_path)
        assert extra.greeting[0] == 421 and extra.greeting[1].startswith("4.7.0")
        with pytest.raises(ConnectionError):
            extra.reply()                      # closed after the 421
        extra.close()
        logged = wait_for(lambda: warnings_logged(rg.gateway.engine, "LMTP"))
        assert logged and logged[0][0] == "Warning" and "max_sessions = 4" in logged[0][1]
        status, body = http_json(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and body["ok"] is False and "lmtp" in body["not_accepting"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=10) as resp:
            assert 'deskgate_sessions_refused_total{listener="lmtp"}' in resp.read().decode()
        for _ in range(3):                      # refused ones leave no session behind
            extra = LmtpClient(rg.socket_path)
            assert extra.greeting[0] == 421
            extra.close()
        held.pop().close()
        again = wait_for(lambda: _greets(rg.socket_path))
        assert again == 220
        for c in held:
            c.close()
        assert wait_for(lambda: rg.gateway.limits["lmtp"].active == 0)
        servers = [s for s in rg.gateway.servers if hasattr(s, "active")]
        assert all(s.active == 0 for s in servers)


def _greets(path: Path) -> int | None:
    c = LmtpClient(path)
    code = c.greeting[0]
    c.close()
    return code if code == 220 else None


class TestIdleTimeout:
    def test_noop_does_not_extend_lmtp_timeout(self, make_confdir, run_gateway):
        """With timeout = 2s, a client sending NOOP every 0.5 s is cut with 421 4.4.2
        (it would otherwise hold the connection for ever)."""
        conf = make_confdir({"50-limits.toml": "[lmtp]\ntimeout = \"2s\"\n"})
        rg = run_gateway(load_config(conf))
        c = LmtpClient(rg.socket_path)
        assert c.lhlo()[0] == 250
        replies = []
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(40):                 # up to 20 s of NOOPs
                # the 421 arrives between two NOOPs: read it before writing into a
                # closed connection (whose RST would drop it)
                if poll_readable([c.sock], [], [], 0)[0]:
                    replies.append(c.reply())
                    break
                replies.append(c.cmd("NOOP"))
                if replies[-1][0] != 250:
                    break
                time.sleep(0.5)
        c.close()
        assert replies and replies[-1][0] == 421 and replies[-1][1].startswith("4.4.2")
        assert len(replies) < 40

    def test_noop_does_not_extend_submission_timeout(self, make_confdir, run_gateway):
        """The same on submission: EHLO, then NOOP every 0.5 s, is cut with 421 4.4.2."""
        sport = free_port()
        sub = MAILDIR + f'[submission]\nlisten = ["127.0.0.1:{sport}"]\n'
        conf = make_confdir({"50-sub.toml": sub +
                             'timeout = "2s"\n'})
        run_gateway(load_config(conf))
        s = socket.create_connection(("127.0.0.1", sport), timeout=10)
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO client.test\r\n")
        while f.readline().startswith(b"250-"):
            pass
        last = b""
        for _ in range(40):
            try:
                if poll_readable([s], [], [], 0)[0]:
                    last = f.readline()
                    break
                s.sendall(b"NOOP\r\n")
                last = f.readline()
            except OSError:
                break
            if not last.startswith(b"250"):
                break
            time.sleep(0.5)
        s.close()
        assert last.startswith(b"421 4.4.2")


class TestSubmissionLimits:
    def test_per_ip_and_total_limits(self, make_confdir, run_gateway):
        """max_sessions_per_ip = 2 refuses a third connection from 127.0.0.1 but not
        one from 127.0.0.2; max_sessions = 3 then refuses 127.0.0.2's second; each
        refusal is 421 4.7.0 and a Warning is logged."""
        sport = free_port()
        sub = MAILDIR + f'[submission]\nlisten = ["127.0.0.1:{sport}"]\n'
        conf = make_confdir({"50-sub.toml": sub +
                             "max_sessions = 3\nmax_sessions_per_ip = 2\n"})
        rg = run_gateway(load_config(conf))
        held = []
        for _ in range(2):
            s, greet = smtp_open(sport)
            assert greet.startswith("220")
            held.append(s)
        s, greet = smtp_open(sport)
        held.append(s)
        assert greet.startswith("421 4.7.0")
        s, greet = smtp_open(sport, "127.0.0.2")
        held.append(s)
        assert greet.startswith("220")
        s, greet = smtp_open(sport, "127.0.0.2")
        held.append(s)
        assert greet.startswith("421 4.7.0")
        logged = wait_for(lambda: warnings_logged(rg.gateway.engine, "SMTP"))
        assert logged and "max_sessions_per_ip = 2" in logged[0][1]
        for s in held:
            s.close()


@pytest.fixture
def low_fd_serve(make_confdir) -> Iterator[tuple[Path, int, int, subprocess.Popen[bytes]]]:
    """A real `deskgate serve` limited to 300 descriptors, submission without limits of
    its own, LMTP on a unix socket, dashboard on a port: (root, sub port, dash port, proc)."""
    sport, dport = free_port(), free_port()
    conf = make_confdir({"50-x.toml": f'{MAILDIR}[submission]\nlisten = ["127.0.0.1:{sport}"]\n'
                                      "max_sessions = 5000\nmax_sessions_per_ip = 0\n"
                                      "[lmtp]\nmax_sessions = 50\n"
                                      f'[dashboard]\nlisten = "127.0.0.1:{dport}"\n'})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf), "serve"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=limit)
    try:
        yield conf.parent, sport, dport, proc
    finally:
        stop_serve(proc)


class TestLmtpReserve:
    def test_submission_flood_cannot_starve_lmtp(self, low_fd_serve):
        """400 idle submission connections against a serve with 300 descriptors: the
        later ones get 421 4.7.0 (descriptors kept for LMTP), an LMTP delivery still
        gets 250, and /healthz answers, naming submission as not accepting."""
        root, sport, dport, proc = low_fd_serve
        sock = root / "var" / "run" / "lmtp.sock"
        assert wait_for(lambda: _serving(sock, dport), 60), "serve did not start"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1024:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        held: list[socket.socket] = []
        refused = 0
        lines: list[bytes] = []
        try:
            for _ in range(400):
                try:
                    s = socket.create_connection(("127.0.0.1", sport), timeout=5)
                except OSError:
                    break
                held.append(s)
            for s in held:
                with contextlib.suppress(OSError):
                    line = s.makefile("rb").readline()
                    refused += line.startswith(b"421 4.7.0")
                    lines.append(line)
            assert proc.poll() is None
            assert refused > 0, (len(held), refused, {x: lines.count(x) for x in set(lines)})
            c = LmtpClient(sock, timeout=10)
            assert c.greeting[0] == 220
            c.lhlo()
            msg = (b"From: a@c.test\r\nTo: support@example.org\r\nSubject: starved?\r\n"
                   b"Message-ID: <starve@c.test>\r\n\r\nbody\r\n")
            _, data = c.transaction("a@c.test", ["support@example.org"], msg)
            c.close()
            assert data[0][0] == 250
            status, body = http_json(f"http://127.0.0.1:{dport}/healthz")
            assert status == 503 and "submission" in body["not_accepting"]
            assert "lmtp" not in body["not_accepting"]
        finally:
            for s in held:
                s.close()
        engine = create_engine(f"sqlite:///{root}/var/deskgate.db")
        try:
            assert wait_for(lambda: warnings_logged(engine, "SMTP"))
        finally:
            engine.dispose()


def _serving(sock: Path, dport: int) -> bool:
    try:
        LmtpClient(sock, timeout=2).close()
        with urllib.request.urlopen(f"http://127.0.0.1:{dport}/healthz", timeout=2):
            return True
    except (OSError, urllib.error.HTTPError):
        return False
