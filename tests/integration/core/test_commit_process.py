"""The commit process of `deskgate serve` ([store] commit_process): every LMTP
process sends its prepared messages there and answers only after that process
committed them; a commit process that fails costs a 4xx, never a message."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.app import Gateway
from gateway.commlog import Comm, CommObj
from gateway.config import load_config
from gateway.inbound import commitproc, commitwire
from gateway.inbound.commitproc import CommitClient, CommitServer, frame, portable
from gateway.model import Envelope, MessageContext
from gateway.store.tables import Communication, Delivery, Quarantine, Ticket
from tests.conftest import free_port
from tests.peers.lmtp import LmtpClient
from tests.peers.serve import (
    ROOT,
    alive,
    commit_process_of,
    lmtp_workers_of,
    served_by,
    start_serve,
    stop_serve,
    wait_for,
)

NO_DASHBOARD = '[dashboard]\nlisten = ""\n'


def mail(tag: str, to: str = "support@example.org") -> bytes:
    return (f"From: c@customer.test\r\nTo: {to}\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@customer.test>\r\n\r\nbody of {tag}\r\n").encode()


def send(sock: Path, tag: str, to: str = "support@example.org") -> int:
    c = LmtpClient(sock)
    try:
        c.lhlo()
        _, data = c.transaction("c@customer.test", [to], mail(tag, to))
        return int(data[0][0])
    finally:
        c.close()


def count(db: Path, table) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def connection_record(text: str) -> Comm:
    """A closed LMTP connection record with one Info entry."""
    comm = Comm("Incoming", "LMTP", "peer")
    comm.obj("Connection").log("Info", "Connection", text)
    comm.close("Successful")
    return comm


def communications(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Communication)).scalar())


def opens(pid: int, path: Path) -> bool:
    """The process has the file open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink() == path:
                return True
        except OSError:
            continue
    return False


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def cut_commit_link(worker: int, committer: int) -> None:
    """Break the connection between an LMTP worker and the commit process, and only
    that one: shut down the worker's socket (a copy taken with pidfd_getfd; `ss` lists
    each socket's peer inode and owners)."""
    out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    owners: dict[str, list[tuple[int, int]]] = {}
    peer_of: dict[str, str] = {}
    for line in out.splitlines():
        tokens = line.split()
        if len(tokens) > 8 and "pid=" in line:
            peer_of[tokens[5]] = tokens[7]
            owners[tokens[5]] = [(int(u.split("pid=")[1].split(",")[0]),
                                  int(u.split("fd=")[1].split(")")[0]))
                                 for u in line.split("users:", 1)[1].split("),(")]
    fds = [fd for ino, who in owners.items() for pid, fd in who if pid == worker
           and any(p == committer for p, _ in owners.get(peer_of[ino], []))]
    assert len(fds) == 1, (fds, out)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(worker)
    try:
        copy = libc.syscall(438, pidfd, fds[0], 0)      # pidfd_getfd (x86_64)
        assert copy >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    with socket.socket(fileno=copy) as s:
        s.shutdown(socket.SHUT_RDWR)


class TestServe:
    def test_lmtp_workers_commit_in_the_commit_process(self, make_confdir):
        """workers = 2: messages to both LMTP processes are stored; only the commit
        process opens the database for them (the worker never does), and a SIGTERM
        stops it with the rest."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD + "[lmtp]\nworkers = 2\n"})
        root = conf.parent
        sock, db = root / "var" / "run" / "lmtp.sock", root / "var" / "deskgate.db"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) == 1
                            and len(commit_process_of(proc.pid)) == 1)
            (worker,), (committer,) = lmtp_workers_of(proc.pid), commit_process_of(proc.pid)
            time.sleep(0.5)
            for n in range(20):
                assert send(sock, f"w{n}") == 250
            assert count(db, Ticket) == 20
            assert opens(committer, db.resolve())
            assert not opens(worker, db.resolve())
            # every connection's record went through the commit process too
            assert wait_for(lambda: count(db, Communication) >= 40, 10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert wait_for(lambda: not Path(f"/proc/{committer}").exists(), 20), \
                Path(f"/proc/{committer}/stat").read_text()
        finally:
            stop_serve(proc)

    def test_commit_in_process_when_switched_off(self, make_confdir):
        """commit_process = false: no commit process; the LMTP process commits."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD + "[store]\ncommit_process = false\n"})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(sock.exists)
            assert send(sock, "inproc") == 250
            assert commit_process_of(proc.pid) == []
            assert count(conf.parent / "var" / "deskgate.db", Ticket) == 1
        finally:
            stop_serve(proc)

    def test_reload_reaches_the_commit_process(self, make_confdir):
        """An address added by SIGHUP routes the next message to its queue: the
        route stage runs in the commit process, which reloaded too."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD
                             + '[lmtp]\nunknown_recipient = "default-queue"\n'})
        root = conf.parent
        sock, db = root / "var" / "run" / "lmtp.sock", root / "var" / "deskgate.db"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1)
            assert send(sock, "before", "fresh@example.org") == 250
            (conf / "60-fresh.toml").write_text(
                '[[address]]\nemail = "fresh@example.org"\nqueue = "Sales"\n')
            proc.send_signal(signal.SIGHUP)
            time.sleep(2)
            assert send(sock, "after", "fresh@example.org") == 250
            engine = create_engine(f"sqlite:///{db}")
            with engine.connect() as conn:
                queues = dict(conn.execute(select(Ticket.title, Ticket.queue)).all())
            engine.dispose()
            assert queues == {"before": "Raw", "after": "Sales"}
        finally:
            stop_serve(proc)

    def test_a_burst_of_signals_does_not_hang_the_commit_process(self, make_confdir):
        """Signals that arrive while the commit process handles one (systemd's SIGTERM
        to the whole unit next to the main process's, a burst of reloads) must not
        deadlock its main thread: it reloads, and stops when told, within seconds."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1)
            (committer,) = commit_process_of(proc.pid)
            # signals as fast as they go, from two processes, for a few seconds: some
            # arrive while the handler of another runs
            stress = ("import os, signal, sys, time\n"
                      "pid, end = int(sys.argv[1]), time.monotonic() + 4\n"
                      "while time.monotonic() < end:\n"
                      "    try: os.kill(pid, signal.SIGHUP)\n"
                      "    except ProcessLookupError: break\n")
            senders = [subprocess.Popen([sys.executable, "-c", stress, str(committer)])
                       for _ in range(2)]
            for p in senders:
                p.wait(30)
            assert send(sock, "after the burst") == 250
            assert commit_process_of(proc.pid) == [committer]   # neither died nor replaced
            for _ in range(200):
                os.kill(committer, signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: not alive(committer), 30), \
                "the commit process hangs after a burst of signals"
        finally:
            stop_serve(proc)
            if alive(committer):
                os.kill(committer, signal.SIGKILL)

    def test_killed_commit_process_costs_no_message_and_is_started_again(self, make_confdir):
        """SIGKILL of the commit process: the LMTP processes commit themselves
        meanwhile (every message stored once, /healthz says "gone"), then a new commit
        process serves both of them again: while it is stopped (SIGSTOP) no message
        gets its reply, and every one gets it once it runs on."""
        port = free_port()
        conf = make_confdir({"50-x.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                             "[lmtp]\nworkers = 2\n"})
        root = conf.parent
        sock, db = root / "var" / "run" / "lmtp.sock", root / "var" / "deskgate.db"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1
                            and len(lmtp_workers_of(proc.pid)) == 1)
            (committer,), (worker,) = commit_process_of(proc.pid), lmtp_workers_of(proc.pid)
            assert wait_for(lambda: health(port) is not None)
            assert health(port)["commit_process"] == "up"
            assert send(sock, "k0") == 250
            os.kill(committer, signal.SIGKILL)
            # reaped at once: gone, not a zombie
            assert wait_for(lambda: not Path(f"/proc/{committer}").exists(), 20), \
                Path(f"/proc/{committer}/stat").read_text()
            codes = [send(sock, f"k{n}") for n in range(1, 6)]
            assert codes == [250] * 5
            assert proc.poll() is None
            assert wait_for(lambda: [p for p in commit_process_of(proc.pid)
                                     if p != committer], 20)
            (again,) = commit_process_of(proc.pid)
            assert wait_for(lambda: (health(port) or {}).get("commit_process") == "up", 20)
            time.sleep(0.5)           # the worker got its socket too
            # one connection to each LMTP process
            by: dict[int, LmtpClient] = {}
            for _ in range(60):
                c = LmtpClient(sock)
                c.lhlo()
                pid = served_by(c)
                if pid is not None and pid not in by:
                    by[pid] = c
                else:
                    c.close()
                if len(by) == 2:
                    break
            assert set(by) == {proc.pid, worker}
            os.kill(again, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(c.transaction, "c@customer.test",
                                           ["support@example.org"], mail(f"s{pid}"))
                               for pid, c in by.items()]
                    time.sleep(1.5)
                    assert not any(f.done() for f in futures)   # both wait for it
                    os.kill(again, signal.SIGCONT)
                    assert [int(f.result(30)[1][0][0]) for f in futures] == [250, 250]
            finally:
                os.kill(again, signal.SIGCONT)
                for c in by.values():
                    c.close()
            assert count(db, Ticket) == 8
            assert health(port)["ok"] is True
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            assert wait_for(lambda: not Path(f"/proc/{again}").exists(), 20)
        finally:
            stop_serve(proc)


    def test_a_worker_that_lost_the_commit_process_shows_in_healthz(self, make_confdir):
        """workers = 2: when only the worker's connection to the commit process breaks,
        the worker commits in its own writer (250 all the same) and /healthz, served by
        the main process whose own connection is fine, says so: "gone", naming the
        worker; ok stays true."""
        port = free_port()
        conf = make_confdir({"50-x.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                             "[lmtp]\nworkers = 2\n"})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1
                            and len(lmtp_workers_of(proc.pid)) == 1)
            (committer,), (worker,) = commit_process_of(proc.pid), lmtp_workers_of(proc.pid)
            assert wait_for(lambda: (health(port) or {}).get("commit_process") == "up")
            assert health(port)["commit_process_gone_in"] == []
            cut_commit_link(worker, committer)
            # a /healthz that does not answer in time (a loaded machine) is asked again
            assert wait_for(lambda: (health(port) or {}).get("commit_process") == "gone",
                            30), health(port)
            h = health(port)
            assert h["commit_process_gone_in"] == ["lmtp worker 1"] and h["ok"] is True
            # the worker still answers, committing itself; the main process still
            # uses the commit process
            assert {send(sock, f"c{n}") for n in range(10)} == {250}
            assert commit_process_of(proc.pid) == [committer]
        finally:
            stop_serve(proc)


    def test_a_commit_process_from_other_code_is_refused_and_tried_again(
            self, make_confdir, tmp_path):
        """deskgate upgraded while serve runs: the commit process started again comes
        from the installed code, which is not the running one, so it refuses to serve
        (the two would read each other's messages by field order). The LMTP process
        goes on committing itself (250), the main process tries again after growing
        pauses, and once the installed code is the running one again a new commit
        process runs (each start counted in deskgate_commit_process_restarts_total)."""
        port = free_port()
        conf = make_confdir({"50-x.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        pkg = tmp_path / "installed"
        shutil.copytree(ROOT / "gateway", pkg / "gateway",
                        ignore=shutil.ignore_patterns("__pycache__"))
        init = pkg / "gateway" / "__init__.py"
        original = init.read_text()
        errors = tmp_path / "stderr.log"        # a file: a pipe nobody reads would fill up
        with errors.open("wb") as err_out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf),
                                     "serve"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=err_out, env={**os.environ, "PYTHONPATH": str(pkg)})
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1)
            assert wait_for(lambda: health(port) is not None)
            (committer,) = commit_process_of(proc.pid)
            init.write_text(original.replace('__version__ = "', '__version__ = "99.0+'))
            os.kill(committer, signal.SIGKILL)
            assert wait_for(lambda: not Path(f"/proc/{committer}").exists(), 20)
            # Messages all along: through the first new one (after 1 s) and the second
            # (2 s later) starting, refusing and exiting, none gets a 4xx: nothing is
            # sent to a new one before it said it is ready.
            codes, n, until = [], 0, time.monotonic() + 5.0
            while time.monotonic() < until:
                codes.append(send(sock, f"b{n}"))
                n += 1
            assert n >= 20 and codes == [250] * n
            assert health(port)["commit_process"] == "gone"
            init.write_text(original)
            assert wait_for(lambda: (health(port) or {}).get("commit_process") == "up", 30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            restarts = [float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("deskgate_commit_process_restarts_total")]
            assert restarts and restarts[0] >= 2
            assert send(sock, "fixed") == 250
            assert proc.poll() is None
        finally:
            stop_serve(proc)
        err = errors.read_text()
        assert "is not the one `deskgate serve` runs" in err and "99.0+" in err

    def test_a_commit_process_started_again_runs_the_running_configuration(
            self, make_confdir):
        """Files edited but not reloaded do not reach a new commit process: it runs
        with what the other processes run (here the files are even broken)."""
        port = free_port()
        conf = make_confdir({"50-x.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1)
            assert wait_for(lambda: health(port) is not None)
            (committer,) = commit_process_of(proc.pid)
            (conf / "90-broken.toml").write_text("[lmtp]\nworkers = -1\n")
            os.kill(committer, signal.SIGKILL)
            assert wait_for(lambda: [p for p in commit_process_of(proc.pid)
                                     if p != committer], 20)
            assert wait_for(lambda: (health(port) or {}).get("commit_process") == "up", 20)
            assert send(sock, "running") == 250
            assert proc.poll() is None
        finally:
            stop_serve(proc)

    def test_a_commit_process_started_again_dies_with_the_main_process(self, make_confdir):
        """The new commit process (a new interpreter, not a fork) also gets SIGTERM
        when the main process is SIGKILLed, and stops."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        proc = start_serve(conf)
        again: list[int] = []
        try:
            assert wait_for(lambda: sock.exists() and len(commit_process_of(proc.pid)) == 1)
            (committer,) = commit_process_of(proc.pid)
            os.kill(committer, signal.SIGKILL)
            assert wait_for(lambda: [p for p in commit_process_of(proc.pid)
                                     if p != committer], 20)
            again = commit_process_of(proc.pid)
            assert send(sock, "after") == 250
            proc.kill()
            proc.wait(10)
            assert wait_for(lambda: not Path(f"/proc/{again[0]}").exists()
                            or "Z" in Path(f"/proc/{again[0]}/stat").read_text().split()[2],
                            20)
        finally:
            stop_serve(proc)
            for pid in again:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ in one process

class Pair:
    """A commit server (on its own Gateway) and an LMTP-side Gateway sending to it."""

    def __init__(self, conf: Path) -> None:
        cfg = load_config(conf)
        self.server_gw = Gateway(cfg)
        self.server_gw.prepare_store()
        self.lmtp_gw = Gateway(cfg)
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server = CommitServer(self.server_gw, [self.b])
        self.server.start()
        self.client = CommitClient(self.a)

    async def connect(self) -> None:
        await self.client.connect()
        self.lmtp_gw.pipeline.remote = self.client

    async def close(self) -> None:
        self.lmtp_gw.close()
        for _ in range(100):            # the transport closes on the loop
            if self.server.all_gone.is_set():
                break
            await asyncio.sleep(0.05)
        assert self.server.all_gone.is_set()
        self.server_gw.close()


@pytest.fixture
async def pair(make_confdir):
    p = Pair(make_confdir())
    await p.connect()
    yield p
    await p.close()


class TestClientServer:
    async def test_commit_goes_to_the_server(self, pair):
        out = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("remote"), "peer")
        assert [r.code for r in out.replies] == [250]
        assert out.action == "new" and out.ticket_number and out.article_id
        assert pair.server_gw.writer.jobs >= 1
        assert pair.lmtp_gw.writer.jobs == 0     # nothing committed on the LMTP side
        again = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                           mail("remote"), "peer")
        assert again.action == "duplicate" and again.replies[0].code == 250

    async def test_database_trouble_in_the_commit_process_is_a_4xx(self, pair, monkeypatch):
        def locked(ctx, rt, comm):
            def job(conn, later):
                raise OperationalError("INSERT", {}, Exception("database is locked"))
            return job
        monkeypatch.setattr(pair.server_gw.pipeline, "commit_job", locked)
        out = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("locked"), "peer")
        assert out.replies[0].code == 451 and out.replies[0].temporary
        assert pair.client.up           # one failed commit does not end the connection

    async def test_other_commit_errors_quarantine_the_message(self, pair, monkeypatch):
        def broken(ctx, rt, comm):
            def job(conn, later):
                raise IntegrityError("INSERT", {}, Exception("unique constraint failed"))
            return job
        monkeypatch.setattr(pair.server_gw.pipeline, "commit_job", broken)
        out = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("broken"), "peer")
        assert out.action == "quarantine" and out.replies[0].code == 250
        engine = pair.lmtp_gw.engine
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Quarantine)).scalar() == 1

    async def test_a_request_that_cannot_be_queued_is_answered(self, pair, monkeypatch):
        """A request the commit process cannot even queue gets an error reply (the
        message is quarantined), and the connection serves the next one."""
        real = pair.server_gw.pipeline.commit_job

        def refuse(ctx, rt, comm):
            if ctx.parsed.subject == "refused":
                raise RuntimeError("cannot build the job")
            return real(ctx, rt, comm)
        monkeypatch.setattr(pair.server_gw.pipeline, "commit_job", refuse)
        out = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("refused"), "peer")
        assert out.action == "quarantine"
        nxt = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("next"), "peer")
        assert nxt.action == "new" and pair.client.up

    async def test_lost_commit_process_answers_waiting_messages_4xx(self, pair, monkeypatch):
        """The commit process dies while a message waits: 451 (the MTA retries; a
        commit that did happen is then answered as a duplicate); the next message
        is committed by the LMTP process itself."""
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hang(ctx, rt, comm):
            def job(conn, later):
                loop.call_soon_threadsafe(started.set)
                time.sleep(0.5)
                raise OperationalError("INSERT", {}, Exception("never answered"))
            return job
        monkeypatch.setattr(pair.server_gw.pipeline, "commit_job", hang)
        waiting = asyncio.ensure_future(pair.lmtp_gw.deliver(
            "c@customer.test", ["support@example.org"], mail("lost"), "peer"))
        await started.wait()
        pair.b.shutdown(socket.SHUT_RDWR)       # as if the process died
        out = await waiting
        assert out.replies[0].code == 451
        assert not pair.client.up
        nxt = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("after"), "peer")
        assert nxt.replies[0].code == 250
        assert pair.lmtp_gw.writer.jobs >= 1
        with pair.lmtp_gw.engine.connect() as conn:
            mids = {r[0] for r in conn.execute(select(Delivery.message_id)).all()}
        assert "<after@customer.test>" in mids or "after@customer.test" in mids

    async def test_a_retired_client_closes_after_its_last_answer(self, pair):
        """A new commit process's socket replaces the connection (_connect_commit):
        the old one takes no more messages, answers those it has, then closes, so
        the old commit process can stop."""
        waiting = asyncio.ensure_future(pair.lmtp_gw.deliver(
            "c@customer.test", ["support@example.org"], mail("inflight"), "peer"))
        for _ in range(5000):
            if pair.client.pending:
                break
            await asyncio.sleep(0.001)
        assert pair.client.pending
        pair.client.retire()
        assert not pair.client.up
        out = await waiting
        assert out.replies[0].code == 250 and out.action == "new"
        assert pair.server_gw.writer.jobs >= 1 and pair.lmtp_gw.writer.jobs == 0
        for _ in range(100):
            if pair.server.all_gone.is_set():
                break
            await asyncio.sleep(0.05)
        assert pair.server.all_gone.is_set()     # the commit process saw it close
        nxt = await pair.lmtp_gw.deliver("c@customer.test", ["support@example.org"],
                                         mail("own"), "peer")
        assert nxt.replies[0].code == 250 and pair.lmtp_gw.writer.jobs >= 1

    async def test_records_queued_when_the_connection_closes_are_sent(self, pair):
        """A connection record queued in the same loop iteration as the close (a
        retire, a stop) still reaches the commit process."""
        assert pair.client.log_connection(connection_record("queued just before close"))
        pair.client.retire()            # nothing pending: closes at once
        engine = pair.server_gw.engine

        def logged() -> int:
            return communications(engine)
        for _ in range(100):
            if pair.server.all_gone.is_set() and logged():
                break
            await asyncio.sleep(0.05)
        assert logged() == 1

    async def test_a_reply_of_the_wrong_shape_fails_only_its_message(self):
        """A reply whose fields do not match (a commit process from other code) is
        an error for that message; the connection stays up for the next answer."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        client = CommitClient(a)
        await client.connect()
        try:
            loop = asyncio.get_running_loop()
            first = loop.create_future()
            second = loop.create_future()
            client.pending.update({1: first, 2: second})
            good = tuple(range(len(commitwire.RESULT_FIELDS)))
            b.sendall(frame(1, (True, (1, 2))) + frame(2, (True, good)))
            with pytest.raises(commitproc.RemoteCommitError) as err:
                await asyncio.wait_for(first, 5)
            assert err.value.kind == "error" and "unreadable reply" in str(err.value)
            assert (await asyncio.wait_for(second, 5))["ticket_id"] == 2
            assert client.up
        finally:
            client.close()
            b.close()

    def test_fingerprint_follows_the_wire_fields(self, monkeypatch):
        """The fingerprint changes with the order of the fields sent and the version."""
        before = commitwire.fingerprint()
        assert before == commitwire.fingerprint() and len(before) == 16
        monkeypatch.setattr(commitwire, "RESULT_FIELDS", commitwire.RESULT_FIELDS[::-1])
        assert commitwire.fingerprint() != before
        monkeypatch.undo()
        import gateway
        monkeypatch.setattr(gateway, "__version__", "99.0")
        assert commitwire.fingerprint() != before

    async def test_connection_records_go_to_the_commit_process(self, pair):
        pair.lmtp_gw.log_connection(connection_record("test record"))
        engine = pair.lmtp_gw.engine

        def logged() -> bool:
            return bool(communications(engine))
        for _ in range(200):
            if logged():
                break
            await asyncio.sleep(0.05)
        assert logged()
        assert pair.lmtp_gw.writer.jobs == 0


def _unreadable() -> None:
    raise ValueError("this pickle cannot be loaded")


class Unreadable:
    """Pickles fine, fails to unpickle."""

    def __reduce__(self):
        return (_unreadable, ())


class FakeWriter:
    """Answers every job at once with a long trace (replies bigger than the socket buffer)."""

    def __init__(self) -> None:
        self.jobs = 0

    def run_here(self, jobs, after=None):
        for _job, cb in jobs:
            self.jobs += 1
            fields = {k: None for k in commitwire.RESULT_FIELDS}
            fields["trace"] = ["x" * 4000]
            cb(True, SimpleNamespace(**fields))
        if after is not None:
            after()


def fake_server(socks):
    gw = SimpleNamespace(writer=FakeWriter(), runtime=None, config=None,
                         pipeline=SimpleNamespace(commit_job=lambda ctx, rt, comm: None))
    server = CommitServer(gw, socks)
    server.start()
    return server, gw


def request(rid: int) -> bytes:
    env = Envelope(mail_from="c@customer.test", recipients=("support@example.org",),
                   raw=b"Subject: x\r\n\r\nx\r\n")
    ctx = MessageContext(envelope=env, log=CommObj("Message"))
    return frame(rid, ("commit", commitwire.pack(ctx, Comm("Incoming", "LMTP", "p"))))


def read_replies(sock: socket.socket, want: int, timeout: float = 20) -> dict[int, tuple]:
    sock.settimeout(timeout)
    buf, got = bytearray(), {}
    while len(got) < want:
        data = sock.recv(1 << 20)
        if not data:
            break
        buf += data
        for rid, body in commitwire.split(buf):
            assert rid not in got
            got[rid] = pickle.loads(body)  # noqa: S301
    return got


class TestServerSockets:
    def test_replies_wait_for_a_slow_reader_and_none_is_lost(self):
        """4 MB of replies to an LMTP process that does not read for a while: every
        reply arrives, whole and once (none dropped when the socket buffer fills)."""
        a, b = socket.socketpair()
        server, gw = fake_server([b])
        try:
            for rid in range(1, 1001):
                a.sendall(request(rid))
            assert wait_for(lambda: gw.writer.jobs == 1000, 20)
            time.sleep(0.3)          # the commit process now waits for the socket
            got = read_replies(a, 1000)
            assert sorted(got) == list(range(1, 1001))
            assert all(ok for ok, _ in got.values())
            assert server.loop_alive()
        finally:
            a.close()
            assert server.all_gone.wait(10)

    def test_an_lmtp_process_that_dies_with_replies_unread_leaves_the_others_served(self):
        """A worker killed with replies unread (its socket is reset): the commit
        process serves the other LMTP processes on."""
        a1, b1 = socket.socketpair()
        a2, b2 = socket.socketpair()
        server, gw = fake_server([b1, b2])
        try:
            for rid in range(1, 50):
                a1.sendall(request(rid))
            assert wait_for(lambda: gw.writer.jobs == 49, 10)
            a1.sendall(request(50))
            a1.close()                         # dies with replies and a request unread
            time.sleep(0.3)
            a2.sendall(request(7))
            assert read_replies(a2, 1) == {7: read_replies_ok(7)}
            assert server.loop_alive()
        finally:
            a2.close()
            assert server.all_gone.wait(10)
        assert not server.failed

    def test_a_request_whose_pickle_cannot_be_read_is_answered(self):
        a, b = socket.socketpair()
        server, _ = fake_server([b])
        try:
            body = pickle.dumps(("commit", Unreadable()))
            a.sendall(commitwire._HEAD.pack(len(body), 42) + body)
            a.sendall(request(43))
            got = read_replies(a, 2)
            ok, (kind, text) = got[42]
            assert not ok and kind == "error" and "cannot be loaded" in text
            assert got[43][0] is True
        finally:
            a.close()
            assert server.all_gone.wait(10)


def read_replies_ok(_rid: int) -> tuple:
    fields = {k: None for k in commitwire.RESULT_FIELDS}
    fields["trace"] = ["x" * 4000]
    return (True, tuple(fields[k] for k in commitwire.RESULT_FIELDS))


class TestWire:
    def test_fingerprint_follows_the_code_of_the_wire(self, tmp_path):
        """Other code under the same version (a local patch, a checkout) has another
        fingerprint when it changes a module the wire is made of (the message model,
        the communication log, the wire itself), so a commit process started from it
        refuses to serve; the same code has the same fingerprint in every process."""
        pkg = tmp_path / "installed"
        shutil.copytree(ROOT / "gateway", pkg / "gateway",
                        ignore=shutil.ignore_patterns("__pycache__"))

        def installed() -> str:
            """The fingerprint of the copy, in a new interpreter (as a commit process)."""
            return subprocess.run(
                [sys.executable, "-P", "-c",
                 "from gateway.inbound.commitwire import fingerprint; print(fingerprint())"],
                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(pkg)},
                capture_output=True, text=True, check=True).stdout.strip()

        same = installed()
        assert same == commitwire.fingerprint()
        for module in ("model.py", "commlog.py", "inbound/commitwire.py",
                       "inbound/commitproc.py", "inbound/commitserver.py"):
            path = pkg / "gateway" / module
            original = path.read_text()
            path.write_text(original + "\n# patched\n")
            assert installed() != same, module
            path.write_text(original)
        assert installed() == same

    def test_replies_split_at_every_offset_resolve_in_order(self):
        """Frames cut anywhere by the socket are put together again."""
        a, b = socket.socketpair()
        a.close()
        b.close()
        loop = asyncio.new_event_loop()
        new = tuple("new" if f == "action" else None for f in commitwire.RESULT_FIELDS)
        dup = tuple("duplicate" if f == "action" else None for f in commitwire.RESULT_FIELDS)
        try:
            data = (frame(1, (True, new))
                    + frame(2, (False, ("temporary", "database is locked")))
                    + frame(3, (True, dup)))
            for cut in range(len(data) + 1):
                c = CommitClient(a)
                fs = {rid: loop.create_future() for rid in (1, 2, 3)}
                c.pending.update(fs)
                c.data_received(data[:cut])
                c.data_received(data[cut:])
                assert fs[1].result()["action"] == "new"
                assert fs[3].result()["action"] == "duplicate"
                assert set(fs[3].result()) == set(commitwire.RESULT_FIELDS)
                exc = fs[2].exception()
                assert isinstance(exc, commitproc.RemoteCommitError) and exc.temporary
                assert not c.buf
        finally:
            loop.close()

    def test_pack_and_unpack_keep_every_field(self, config):
        """A prepared message with an attachment, X-header parameters, log entries
        and a verdict comes out of the wire form equal, field by field."""
        from email.message import EmailMessage

        from gateway.inbound.pipeline import prepare
        from gateway.inbound.stages import build_stages
        from gateway.model import Verdict
        from gateway.runtime import build_runtime

        m = EmailMessage()
        m["From"] = "Customer <c@customer.test>"
        m["To"] = "support@example.org"
        m["Subject"] = "packed"
        m["Message-ID"] = "<packed@customer.test>"
        m["X-Deskgate-Priority"] = "5 very high"
        m.set_content("body ü\n")
        m.add_attachment(b"\x00\x01pdf", maintype="application", subtype="pdf",
                         filename="a.pdf")
        raw = m.as_bytes()
        env = Envelope(mail_from="c@customer.test", recipients=("support@example.org",),
                       raw=raw, account="peer", trusted=True)
        ctx = MessageContext(envelope=env, log=CommObj("Message"))
        ctx.log.log("Info", "Envelope", "from <c@customer.test>")
        prepare(ctx, build_runtime(config), build_stages().prepare)
        ctx.verdict = Verdict("ignore", "test")
        comm = Comm("Incoming", "LMTP", "peer")
        comm.obj("Connection").log("Notice", "RCPT", "refused")
        sent = pickle.loads(pickle.dumps(commitwire.pack(ctx, comm)))  # noqa: S301
        got, got_comm = commitwire.unpack(sent)
        want = portable(ctx)
        assert got.parsed.attachments and got.parsed.attachments[0].content == b"\x00\x01pdf"
        assert got.params and got.params == ctx.params
        for name in commitwire._CTX_REST:
            assert getattr(got, name) == getattr(want, name), name
        assert got.envelope == env and got.envelope.sha256 == env.sha256
        assert got.parsed == want.parsed
        assert got.log == ctx.log and got.log.entries and got.log.entries == ctx.log.entries
        assert got_comm == comm and got_comm.objects[0].entries[0].value == "refused"
        # UTC times travel as microseconds (cheaper than pickled datetimes), exactly
        wire = commitwire.pack(ctx, comm)
        assert all(type(v) is int for v in (wire[0][commitwire._ENV.index("received_at")],
                                                wire[5][commitwire._COMM.index("start")]))
        assert got.envelope.received_at == env.received_at
        assert got.envelope.received_at.tzinfo is UTC
        # any other time goes as it is
        from datetime import timedelta, timezone
        local = datetime(2026, 12, 4, 10, 0, 0, 123457, tzinfo=timezone(timedelta(hours=1)))
        back = commitwire._t_in(commitwire._t_out(local))
        assert back == local and back.tzinfo == local.tzinfo and back.hour == 10
        naive = datetime(2026, 12, 4, 10, 0)
        assert commitwire._t_out(naive) is naive

    def test_portable_context_drops_the_message_object_except_for_bounces(self):
        from gateway.inbound.parse import parse_message

        raw = mail("p")
        env = Envelope(mail_from="c@customer.test", recipients=("support@example.org",),
                       raw=raw)
        ctx = MessageContext(envelope=env, log=CommObj("Message"))
        ctx.parsed = parse_message(raw)
        sent = pickle.loads(pickle.dumps(portable(ctx)))  # noqa: S301
        assert sent.parsed.msg is None and ctx.parsed.msg is not None
        assert sent.parsed.subject == "p" and sent.envelope.raw == raw
        ctx.is_bounce = True
        sent = pickle.loads(pickle.dumps(portable(ctx)))  # noqa: S301
        assert sent.parsed.msg is not None and sent.parsed.msg["Subject"] == "p"
