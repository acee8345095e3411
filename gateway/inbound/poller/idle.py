"""IMAP IDLE (RFC 2177) watcher: one extra read-only connection per account that
waits in IDLE and calls `wake()` when the server announces new mail.

It only signals; the fetching is done by a normal poll run, so the
commit-before-remove rules live in one place. imaplib has no IDLE before
Python 3.14, so after imaplib logged in and opened the folder this reads the
raw socket itself (imaplib's buffer is empty once the tagged SELECT reply is in).
The IDLE is renewed every RENEW seconds (servers drop it after 30 minutes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.commlog import CommObj
from gateway.config import AccountConfig
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.session import MailboxError, TokenGetter, TokenRenewer

log = structlog.get_logger(__name__)

RENEW = 25 * 60.0
TICK = 1.0           # how often a waiting watcher looks at its stop flag
BACKOFF = (5.0, 15.0, 60.0, 300.0)


class IdleWatcher:
    def __init__(self, account: AccountConfig, root: Path, wake: Callable[[], None],
                 token: TokenGetter | None = None, *,
                 renew: TokenRenewer | None = None) -> None:
        self.account = account
        self.root = root
        self.wake = wake
        self.token = token
        self.renew = renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"idle-{account.name}"[:15],
                                        daemon=True)
        self._session: ImapSession | None = None
        self.supported: bool | None = None      # None until the first login
        self.idling = threading.Event()         # set while an IDLE is in progress

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            refused = False
            try:
                self._session_loop()
                failures = 0
            except (MailboxError, OSError) as exc:
                reason = exc.reason if isinstance(exc, MailboxError) else str(exc)
                refused = (isinstance(exc, MailboxError) and exc.step == "auth"
                           and not exc.temporary)
                if refused:
                    # A refused login is not tried again within seconds: each try is an
                    # authentication failure on the server (fail2ban, account lockout),
                    # and the poll runs report it and back off themselves.
                    log.warning("idle login refused; trying again after the interval",
                                account=self.account.name, error=reason)
                else:
                    log.warning("idle connection lost; retrying", account=self.account.name,
                                error=reason)
                failures += 1
            finally:
                self.idling.clear()
                s, self._session = self._session, None
                if s is not None:
                    s.abort()
            if self.supported is False:
                return
            if refused:
                self._stop.wait(max(float(self.account.interval), BACKOFF[-1]))
            elif not self._stop.is_set():
                self._stop.wait(BACKOFF[min(failures, len(BACKOFF) - 1)] if failures else 1.0)

    def _session_loop(self) -> None:
        session = ImapSession(self.account, self.root, CommObj("Connection"), self.token,
                              renew=self.renew)
        session.readonly = True
        self._session = session
        session.connect()
        session.authenticate()
        if "IDLE" not in session.capabilities:
            self.supported = False
            log.info("server has no IDLE; polling every interval only",
                     account=self.account.name)
            return
        self.supported = True
        session.select()    # EXAMINE; a NO or BAD is a MailboxError("folder")
        imap = session.imap
        assert imap is not None
        sock = imap.sock
        sock.settimeout(TICK)
        reader = _Lines(sock)
        n = 0
        self.wake()     # catch up with anything that arrived while we were not idling
        while not self._stop.is_set():
            n += 1
            tag = f"DGI{n}".encode()
            sock.sendall(tag + b" IDLE\r\n")
            line = reader.line(self._stop, deadline=time.monotonic() + 60)
            while line is not None and not line.startswith(b"+"):
                if line.startswith(tag):
                    raise MailboxError("fetch", f"IDLE refused: {line!r}")
                line = reader.line(self._stop, deadline=time.monotonic() + 60)
            if line is None:
                return
            self.idling.set()
            news = False
            deadline = time.monotonic() + RENEW
            while not self._stop.is_set() and not news:
                line = reader.line(self._stop, deadline=deadline)
                if line is None:
                    break
                words = line.split()
                if len(words) >= 3 and words[0] == b"*" and words[2].upper() in (b"EXISTS",
                                                                                 b"RECENT"):
                    news = True
                elif line.startswith(b"* BYE"):
                    raise MailboxError("fetch", "server closed the IDLE connection")
            self.idling.clear()
            sock.sendall(b"DONE\r\n")
            line = reader.line(self._stop, deadline=time.monotonic() + 60, ignore_stop=True)
            while line is not None and not line.startswith(tag):
                line = reader.line(self._stop, deadline=time.monotonic() + 60,
                                   ignore_stop=True)
            if line is None:
                raise MailboxError("fetch", "no answer to DONE")
            if news:
                self.wake()


class _Lines:
    """CRLF lines from a socket with a short timeout, so a stop flag is seen."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.buf = b""

    def line(self, stop: threading.Event, *, deadline: float,
             ignore_stop: bool = False) -> bytes | None:
        while b"\r\n" not in self.buf:
            if (stop.is_set() and not ignore_stop) or time.monotonic() > deadline:
                return None
            try:
                chunk = self.sock.recv(65536)  # type: ignore[attr-defined]
            except TimeoutError:
                continue
            if not chunk:
                raise MailboxError("fetch", "connection closed by the server")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line
