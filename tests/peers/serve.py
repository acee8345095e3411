"""`deskgate serve` as a process of its own, and the processes it forks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def start_serve(conf: Path) -> subprocess.Popen[bytes]:
    """`python -m gateway --config CONF serve` from the checkout, output discarded."""
    return subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf), "serve"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(pred: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll `pred` every 50 ms until it is true; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a serve still running and wait for it (SIGKILL after 60 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def named_children(pid: int, name: str) -> list[int]:
    """The children of `pid` whose process name (/proc/PID/comm) is `name`."""
    out = []
    for child in children_of(pid):
        try:
            if (Path(f"/proc/{child}") / "comm").read_text().strip() == name:
                out.append(child)
        except OSError:
            continue
    return out


def lmtp_workers_of(pid: int) -> list[int]:
    """The pre-forked LMTP workers of a `deskgate serve` (named deskgate-lmtp)."""
    return named_children(pid, "deskgate-lmtp")


def commit_process_of(pid: int) -> list[int]:
    """The commit process of a `deskgate serve` (named deskgate-commit), as a list."""
    return named_children(pid, "deskgate-commit")


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serve_refused(conf: Path, timeout: float = 60) -> tuple[int, str]:
    """Run a `deskgate serve` expected to exit by itself: (exit code, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf), "serve"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout,
                          check=False)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def served_by(client: Any) -> int | None:
    """The pid of the process holding the server end of this unix-socket connection
    (`ss` lists each socket's peer inode and owner)."""
    ino = str(os.fstat(client.sock.fileno()).st_ino)
    out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        tokens = line.split()
        if len(tokens) > 8 and tokens[7] == ino and "pid=" in line:
            return int(line.split("pid=", 1)[1].split(",", 1)[0])
    return None
