"""One `deskgate serve` per configuration and per socket: a second one refuses to
start with one line naming what is in use and by which pid, and leaves the
running gateway untouched."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import free_port
from tests.peers.lmtp import LmtpClient
from tests.peers.serve import children_of, serve_refused, start_serve, stop_serve

NO_DASHBOARD = "[dashboard]\nlisten = \"\"\n"


def _wait_serving(proc: subprocess.Popen[bytes], sock: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the first gateway exited"
        try:
            LmtpClient(sock, timeout=5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the first gateway never accepted on its socket")


def _delivers(sock: Path, tag: str) -> int:
    c = LmtpClient(sock)
    c.lhlo()
    msg = (f"From: a@c.test\r\nTo: support@example.org\r\nSubject: {tag}\r\n"
           f"Message-ID: <{tag}@c.test>\r\n\r\nbody\r\n").encode()
    _, data = c.transaction("a@c.test", ["support@example.org"], msg)
    c.close()
    return data[0][0]


class TestSecondServe:
    def test_same_config_refused_by_pid_file_lock(self, make_confdir):
        """A second serve on the same conf.d exits non-zero with one line naming the
        pid file and the first pid; the first keeps its socket, pid file and mail flow."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        pidfile = conf.parent / "var" / "run" / "deskgate.pid"
        first = start_serve(conf)
        try:
            _wait_serving(first, sock)
            inode = sock.stat().st_ino
            rc, err = serve_refused(conf)
            assert rc != 0
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1, err
            assert str(pidfile) in lines[0] and f"pid {first.pid}" in lines[0]
            assert "Traceback" not in err
            assert first.poll() is None
            assert sock.stat().st_ino == inode
            assert pidfile.read_text().strip() == str(first.pid)
            assert _delivers(sock, "after-second") == 250
        finally:
            stop_serve(first)

    def test_other_config_same_socket_refused_by_probe(self, make_confdir, tmp_path):
        """A gateway with its own state dir but the first one's LMTP socket probes it,
        refuses naming the socket and the listening pid, and unlinks nothing."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        other = make_confdir({"50-x.toml": NO_DASHBOARD + f"[lmtp]\nlisten = [\"unix:{sock}\"]\n"},
                             root=tmp_path / "other")
        first = start_serve(conf)
        try:
            _wait_serving(first, sock)
            inode = sock.stat().st_ino
            rc, err = serve_refused(other)
            assert rc != 0
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1, err
            assert f"unix:{sock}" in lines[0] and f"pid {first.pid}" in lines[0]
            assert sock.stat().st_ino == inode
            assert _delivers(sock, "after-probe") == 250
        finally:
            stop_serve(first)

    def test_stale_socket_of_a_dead_gateway_is_replaced(self, make_confdir):
        """A socket file nobody listens on (a gateway killed with -9) does not stop a
        new serve: it is replaced and the new gateway delivers."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        first = start_serve(conf)
        try:
            _wait_serving(first, sock)
        finally:
            first.kill()
            first.wait()
        assert sock.exists()
        second = start_serve(conf)
        try:
            _wait_serving(second, sock)
            assert _delivers(sock, "after-stale") == 250
        finally:
            stop_serve(second)

    def test_tcp_ports_in_use_are_named_with_their_pid(self, make_confdir, tmp_path):
        """Another gateway wanting the first one's LMTP TCP port or its submission port
        exits non-zero with a line naming the address and the first gateway's pid."""
        lport, sport = free_port(), free_port()
        tcp = (NO_DASHBOARD + '[relay]\nmode = "maildir"\n'
               f'[submission]\nlisten = ["127.0.0.1:{sport}"]\n')
        conf = make_confdir({"50-x.toml": tcp + "[lmtp]\nlisten = "
                             f'["unix:var/run/lmtp.sock", "127.0.0.1:{lport}"]\n'})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        lmtp_clash = make_confdir({"50-x.toml": NO_DASHBOARD + "[lmtp]\nlisten = "
                                   f'["unix:var/run/lmtp.sock", "127.0.0.1:{lport}"]\n'},
                                  root=tmp_path / "b")
        sub_clash = make_confdir({"50-x.toml": tcp}, root=tmp_path / "c")
        first = start_serve(conf)
        try:
            _wait_serving(first, sock)
            for other, what in ((lmtp_clash, f"LMTP 127.0.0.1:{lport}"),
                                (sub_clash, f"submission 127.0.0.1:{sport}")):
                rc, err = serve_refused(other)
                assert rc != 0 and "Traceback" not in err, err
                last = err.strip().splitlines()[-1]
                assert what in last and f"pid {first.pid}" in last, err
            assert _delivers(sock, "after-tcp-clash") == 250
        finally:
            stop_serve(first)

    def test_only_the_main_process_holds_the_pid_file(self, make_confdir):
        """With pre-forked workers only the main process keeps the locked pid file
        open, so the lock goes with it (workers finishing their messages do not
        keep a new serve out)."""
        conf = make_confdir({"50-x.toml": NO_DASHBOARD + "[lmtp]\nworkers = 2\n"})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        pidfile = str(conf.parent / "var" / "run" / "deskgate.pid")
        first = start_serve(conf)
        try:
            _wait_serving(first, sock)
            workers = children_of(first.pid)
            assert workers

            def holds(pid: int) -> bool:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    try:           # a starting process opens and closes files meanwhile
                        if str(fd.readlink()) == pidfile:
                            return True
                    except OSError:
                        continue
                return False
            assert holds(first.pid)
            assert not any(holds(w) for w in workers)
        finally:
            stop_serve(first)


class TestBindListeners:
    def test_regular_file_is_not_replaced(self, tmp_path):
        """A regular file where the socket should be is refused, not deleted."""
        from gateway.errors import InUse
        from gateway.inbound.lmtp import bind_listeners

        path = tmp_path / "lmtp.sock"
        path.write_text("not a socket")
        try:
            bind_listeners([f"unix:{path}"], root=tmp_path)
        except InUse as exc:
            assert "is not a socket" in str(exc)
        else:
            raise AssertionError("bound over a regular file")
        assert path.read_text() == "not a socket"

    def test_dangling_symlink_is_replaced(self, tmp_path):
        """A symlink to a socket that is gone is replaced by the new socket."""
        from gateway.inbound.lmtp import bind_listeners

        path = tmp_path / "lmtp.sock"
        path.symlink_to(tmp_path / "gone.sock")
        socks = bind_listeners([f"unix:{path}"], root=tmp_path)
        try:
            assert path.is_socket() and not path.is_symlink()
        finally:
            for s in socks:
                s.close()
