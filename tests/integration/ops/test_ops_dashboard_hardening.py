"""The dashboard against hostile requests over real HTTP: user enumeration and
login floods, DNS rebinding of the login-free loopback dashboard, numbers too
big for the database; and the CLI with such numbers."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time

from gateway.passwords import DUMMY_HASH, hash_password
from tests.peers.serve import ROOT

HUGE = "99999999999999999999"


def basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


class TestBasicAuth:
    def test_unknown_user_costs_a_hash_too(self, dashboard, monkeypatch):
        """A wrong password for an unknown user verifies the dummy hash, as one for a
        known user verifies the user's: both take a hash's time (no enumeration)."""
        from gateway.web import auth

        seen: list[str] = []
        real = auth.verify_password

        def spy(password: str, encoded: str) -> bool:
            seen.append(encoded)
            return real(password, encoded)

        monkeypatch.setattr(auth, "verify_password", spy)
        h = hash_password("right", ln=10)
        d = dashboard(f'[[dashboard.user]]\nname = "ops"\npassword_hash = "{h}"\n')
        assert d.get("/log", basic("nobody", "guess"))[0] == 401
        assert seen == [DUMMY_HASH]
        assert d.get("/log", basic("ops", "guess"))[0] == 401
        assert seen == [DUMMY_HASH, h]

    def test_login_flood_leaves_healthz_responsive(self, dashboard):
        """200 parallel wrong passwords: hashes run on their own bounded pool (excess
        logins get 503 at once), and /healthz keeps answering in well under 2 s."""
        h = hash_password("right")                 # the production cost
        d = dashboard(f'[[dashboard.user]]\nname = "ops"\npassword_hash = "{h}"\n')
        codes: list[int] = []
        lock = threading.Lock()
        go = threading.Barrier(201)

        def login() -> None:
            go.wait()
            status = d.get("/log", basic("ops", "wrong"))[0]
            with lock:
                codes.append(status)

        threads = [threading.Thread(target=login) for _ in range(200)]
        for t in threads:
            t.start()
        go.wait()
        time.sleep(0.3)                         # the flood is being hashed now
        t0 = time.monotonic()
        status, _, _ = d.get("/healthz")
        took = time.monotonic() - t0
        for t in threads:
            t.join(120)
        assert status == 200 and took < 2.0, took
        assert set(codes) <= {401, 503} and codes.count(503) > 0 and len(codes) == 200


class TestHostHeader:
    def test_login_free_dashboard_answers_only_loopback_names(self, dashboard):
        """Without credentials a rebinding name (Host: evil.test) gets 421; loopback
        names, the listen host and allowed_hosts get the page; /healthz answers all."""
        d = dashboard('allowed_hosts = ["tunnel.example"]\n')
        port = d.base.rsplit(":", 1)[1]
        assert d.get("/log", {"Host": f"evil.test:{port}"})[0] == 421
        assert d.get("/log", {"Host": "evil.test"})[0] == 421
        assert d.get("/log", {"Host": f"127.0.0.1:{port}"})[0] == 200
        assert d.get("/log", {"Host": f"localhost:{port}"})[0] == 200
        assert d.get("/log", {"Host": f"[::1]:{port}"})[0] == 200
        assert d.get("/log", {"Host": f"tunnel.example:{port}"})[0] == 200
        assert d.get("/healthz", {"Host": "evil.test"})[0] == 200

    def test_dashboard_with_credentials_accepts_any_host(self, dashboard):
        """With a token, credentials decide: a proxy's host name is fine."""
        d = dashboard('token = "t0ken-t0ken"\n')
        assert d.get("/log", {"Host": "helpdesk.example.com",
                              "Authorization": "Bearer t0ken-t0ken"})[0] == 200


class TestHugeNumbers:
    def test_out_of_range_numbers_are_400(self, dashboard):
        """Numbers beyond what the database takes are a 400, not a 500."""
        d = dashboard()
        for path in (f"/log/list?page={HUGE}", "/log/list?since=99999999999d",
                     "/log/list?until=99999999999d", f"/log/{HUGE}", f"/outbound/{HUGE}",
                     "/log?period=99999999999d"):
            status, _, body = d.get(path)
            assert status == 400, (path, status, body[:200])
        assert d.get("/log/list?page=2")[0] == 200
        assert d.get("/log/1")[0] == 404

    def test_cli_limit_out_of_range_is_one_line_exit_2(self, make_confdir):
        """`tickets list` / `log list` with --limit 99999999999999999999 print one line
        and exit 2; `log show` of such an id says there is none; no traceback."""
        conf = make_confdir()
        for argv, code in ((["tickets", "list", "--limit", HUGE], 2),
                           (["log", "list", "--limit", HUGE], 2),
                           (["log", "list", "--offset", HUGE], 2),
                           (["log", "show", HUGE], 1)):
            proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf),
                                   *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60, check=False)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == code, (argv, proc.stderr)
            assert len(lines) == 1 and "Traceback" not in proc.stderr, (argv, proc.stderr)


