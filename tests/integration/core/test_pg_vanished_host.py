"""A PostgreSQL host that vanishes mid-query without a RST (power off, partition):
deskgate's connection gives up within its keepalive bound, it does not wait on recv
for hours (the server's statement_timeout cannot help: its answer never arrives).

The client runs in a network namespace of its own (`unshare -n`), reaching the test
database through socat: TCP on the namespace's loopback → a unix socket → a relay
to 127.0.0.1:5432. Taking the namespace's loopback down mid-query drops every packet
of the client's connection, as a vanished host would, and touches nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.peers.require import missing_peer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]

# Runs inside the namespace: argv = unix socket, database URL. Prints one line:
# "failed <seconds after the cut> <error>" or "answered <seconds>".
CLIENT = r"""
import socket, subprocess, sys, threading, time
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from gateway.store.db import make_engine

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
relay = subprocess.Popen(
    ["timeout", "90", "socat", "TCP-LISTEN:5432,bind=127.0.0.1,reuseaddr",
     "UNIX-CONNECT:" + sys.argv[1]],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:      # socat listening (a probe would take its one
    out = subprocess.run(["ss", "-Hltn", "sport = :5432"], capture_output=True, text=True)
    if out.stdout.strip():               # connection, so look instead of connecting)
        break
    time.sleep(0.05)
eng = make_engine(sys.argv[2])
cut = []
def vanish():
    time.sleep(1)                        # the query is on its way and acknowledged
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    cut.append(time.monotonic())
try:
    with eng.connect() as conn:
        conn.execute(text("SELECT 1"))
        threading.Thread(target=vanish, daemon=True).start()
        try:
            conn.execute(text("SELECT pg_sleep(120)"))
            print("answered", round(time.monotonic() - cut[0], 1), flush=True)
        except OperationalError as exc:
            print("failed", round(time.monotonic() - cut[0], 1), str(exc.orig).replace("\n", " "),
                  flush=True)
finally:
    relay.terminate()
"""


def _require() -> None:
    if os.geteuid() != 0:
        missing_peer("a network namespace of its own needs root")
    for tool in ("unshare", "ip", "ss", "socat"):
        if shutil.which(tool) is None:
            missing_peer(f"needs {tool}")


@pytest.fixture
def relay(pg_url: str, tmp_path: Path) -> Iterator[Path]:
    """A unix socket relayed to the test PostgreSQL (one connection), for a namespace."""
    _require()
    sock = tmp_path / "pg.sock"
    url = make_url(pg_url)
    proc = subprocess.Popen(
        ["timeout", "100", "socat", f"UNIX-LISTEN:{sock}",
         f"TCP:{url.host or '127.0.0.1'}:{url.port or 5432}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), "socat did not listen"
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


class TestVanishedHost:
    def test_a_query_fails_within_the_keepalive_bound(self, pg_url, relay):
        """Every packet dropped mid-query: the query fails with a timeout about 30 s
        later (10 s idle + 4 probes 5 s apart), not hours later."""
        name = make_url(pg_url).database
        try:
            done = subprocess.run(
                ["unshare", "-n", sys.executable, "-c", CLIENT, str(relay),
                 f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"],
                capture_output=True, text=True, timeout=75, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)})
        except subprocess.TimeoutExpired:
            pytest.fail("the query still waited 75 s after the database host vanished")
        out = done.stdout.strip()
        m = re.fullmatch(r"failed ([\d.]+) (.*)", out)
        assert m is not None, (out, done.stderr[-2000:])
        assert 20 <= float(m.group(1)) <= 45, out
        assert "timed out" in m.group(2).lower(), out
