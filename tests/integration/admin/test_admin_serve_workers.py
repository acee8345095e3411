"""An admin save in a real `deskgate serve` with a pre-forked LMTP worker: the worker
reloads too, so RCPT to a new address is accepted whichever process answers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.parse
import urllib.request

from tests.conftest import free_port
from tests.integration.admin.conftest import ADMIN, USERS, basic
from tests.peers.lmtp import LmtpClient
from tests.peers.serve import lmtp_workers_of, served_by, start_serve, wait_for

# The admin's browser: its cookie is the login session the forms' token belongs to.
BROWSER = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())


def http(base: str, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(base + path, data=body, headers=basic(ADMIN))  # noqa: S310
    with BROWSER.open(req, timeout=60) as resp:
        return resp.status, resp.read().decode()


class TestAdminSaveReloadsWorkers:
    def test_new_address_accepted_by_the_worker(self, make_confdir):
        """After an address is added in the dashboard, a connection served by the LMTP
        worker (not the main process) gets 250 for it, as one served by the main process."""
        port = free_port()
        conf = make_confdir({"50-workers.toml": "[lmtp]\nworkers = 2\n",
                             "60-dashboard.toml": f'[dashboard]\nlisten = "127.0.0.1:{port}"\n'
                             + USERS})
        sock = conf.parent / "var" / "run" / "lmtp.sock"
        base = f"http://127.0.0.1:{port}"
        proc = start_serve(conf)
        workers: list[int] = []
        idle: list[LmtpClient] = []
        try:
            assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) >= 1)
            workers = lmtp_workers_of(proc.pid)
            (worker,) = workers

            def up() -> bool:
                try:
                    return http(base, "/admin/address")[0] == 200
                except OSError:
                    return False

            assert wait_for(up)
            _, html = http(base, "/admin/address")
            token = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
            status, html = http(base, "/admin/address", {
                "csrf": token, "original": "", "email": "fresh@example.org", "queue": "Sales",
                "valid": "valid", "display_name": "", "comment": ""})
            assert status == 200 and "Saved, checked and reloaded." in html
            time.sleep(1)          # the worker handles its SIGHUP
            seen: dict[int, int] = {}
            for _ in range(60):
                c = LmtpClient(sock)
                pid = served_by(c)
                c.lhlo()
                assert c.cmd("MAIL FROM:<c@customer.test>")[0] == 250
                code = c.cmd("RCPT TO:<fresh@example.org>")[0]
                idle.append(c)      # kept open: the next connection tends to the other one
                if pid is not None:
                    seen[pid] = code
                if worker in seen and proc.pid in seen:
                    break
            assert seen.get(worker) == 250, seen
            assert seen.get(proc.pid) == 250, seen
        finally:
            for c in idle:
                with contextlib.suppress(OSError):
                    c.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except Exception:
                    proc.kill()
                    proc.wait()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
