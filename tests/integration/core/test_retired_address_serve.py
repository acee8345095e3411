"""`deskgate serve` with a pre-forked LMTP worker and the commit process: a system
address removed from conf.d and reloaded (SIGHUP) is refused at RCPT by every LMTP
process as an invalid address (550 5.2.1), and accepted again once put back."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from tests.peers.lmtp import LmtpClient
from tests.peers.serve import (
    commit_process_of,
    lmtp_workers_of,
    served_by,
    start_serve,
    stop_serve,
    wait_for,
)

RETIRING = '[[address]]\nemail = "retiring@example.org"\nqueue = "Support"\n'


def rcpt_by_process(sock: Path, pids: set[int], address: str) -> dict[int, str]:
    """What each LMTP process answers to RCPT TO:<address>: pid → "550 5.2.1"."""
    answers: dict[int, str] = {}
    held: list[LmtpClient] = []
    try:
        for _ in range(80):
            c = LmtpClient(sock)
            held.append(c)      # kept open: the process that accepted it is busier
            pid = served_by(c)
            if pid in pids and pid not in answers:
                c.lhlo()
                c.cmd("MAIL FROM:<a@c.test>")
                code, text = c.cmd(f"RCPT TO:<{address}>")
                answers[pid] = f"{code} {text[:5]}"
            if len(answers) == len(pids):
                break
    finally:
        for c in held:
            with contextlib.suppress(OSError):
                c.close()
    return answers


@pytest.mark.parametrize("unknown", ["reject", "default-queue"])
def test_removed_address_is_refused_by_every_lmtp_process(make_confdir, unknown):
    """Removed + SIGHUP: 550 5.2.1 from the main process and the worker (it was 550
    5.1.1, or 250 into the default queue); put back + SIGHUP: 250 from both."""
    conf = make_confdir({"50-x.toml": '[dashboard]\nlisten = ""\n'
                         f'[lmtp]\nworkers = 2\nunknown_recipient = "{unknown}"\n',
                         "60-retiring.toml": RETIRING})
    sock = conf.parent / "var" / "run" / "lmtp.sock"
    proc = start_serve(conf)
    try:
        assert wait_for(lambda: sock.exists() and len(lmtp_workers_of(proc.pid)) == 1
                        and len(commit_process_of(proc.pid)) == 1)
        pids = {proc.pid, *lmtp_workers_of(proc.pid)}
        ok = dict.fromkeys(pids, "250 2.1.5")
        refused = dict.fromkeys(pids, "550 5.2.1")
        assert rcpt_by_process(sock, pids, "retiring@example.org") == ok

        (conf / "60-retiring.toml").unlink()
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: rcpt_by_process(sock, pids, "retiring@example.org")
                        == refused, 20), rcpt_by_process(sock, pids, "retiring@example.org")
        # a stranger is still one
        stranger = "250 2.1.5" if unknown == "default-queue" else "550 5.1.1"
        assert rcpt_by_process(sock, pids, "never@example.org") == dict.fromkeys(
            pids, stranger)

        (conf / "60-retiring.toml").write_text(RETIRING)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: rcpt_by_process(sock, pids, "retiring@example.org")
                        == ok, 20), rcpt_by_process(sock, pids, "retiring@example.org")
    finally:
        stop_serve(proc)
