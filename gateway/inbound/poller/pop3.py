"""POP3 sessions (pop3, pop3s, pop3tls) on the stdlib poplib, run in a worker thread.

`delete`: the messages committed on a connection get DELE when it finishes,
then QUIT; the server applies deletions only at QUIT, so a connection that dies
before leaves every message in place (and the pipeline's dedupe absorbs the
refetch). `keep`: the runner remembers committed
UIDLs in the database.
"""

from __future__ import annotations

import base64
import contextlib
import poplib
import ssl
import threading
from pathlib import Path
from typing import Any

from gateway.commlog import CommObj
from gateway.config import AccountConfig
from gateway.inbound.poller.session import (
    TIMEOUT,
    Fetched,
    Listing,
    MailboxError,
    Refused,
    RemoteMessage,
    TokenGetter,
    TokenRenewer,
    auth_unavailable,
    classify_os_error,
    describe_tls,
    nodelay,
    plural,
    renewed_note,
    resolve,
    ssl_context,
    trust_source,
    xoauth2,
    xoauth2_refused,
)

# poplib refuses lines over 2048 bytes; real mail has longer ones (RFC 5322 allows 998
# characters, and broken mailers send whole attachments as one base64 line). A line
# is never longer than its message, and a message over max_message_size is never
# retrieved, so the limit is raised to the largest max_message_size of the accounts
# in use (with max_message_size = 0, no limit, to the size of each message fetched);
# it only guards against a server that never sends a line end.
setattr(poplib, "_MAXLINE", 1024 * 1024)  # noqa: B010 - private, untyped
_MAXLINE_LOCK = threading.Lock()


def _allow_lines_of(size: int) -> None:
    with _MAXLINE_LOCK:
        if getattr(poplib, "_MAXLINE", 0) < size + 2:
            setattr(poplib, "_MAXLINE", size + 2)  # noqa: B010 - private, untyped


def _short(exc: BaseException | str) -> str:
    """An error for the log: poplib puts the offending server line into it (a line
    of the message, perhaps megabytes)."""
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} characters)"


def _continuation(line: bytes) -> bool:
    """A SASL continuation ("+ ..."), not "+OK"."""
    return line == b"+" or line.startswith(b"+ ")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Pop3Session:
    """One POP3 connection for one account; used by exactly one thread."""

    def __init__(self, account: AccountConfig, root: Path, log: CommObj,
                 token: TokenGetter | None = None, *,
                 renew: TokenRenewer | None = None) -> None:
        self.account = account
        self.root = root
        self.log = log
        self.token = token
        self.renew = renew
        self.pop: poplib.POP3 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.exists = 0
        self._delete: list[int] = []
        _allow_lines_of(account.max_message_size)

    def connect(self) -> poplib.POP3:
        acc = self.account
        host, port = acc.host, acc.effective_port
        addrs = resolve(host, port)
        self.log.log("Debug", "DNS", f"{host} → {', '.join(addrs)}")
        tls = acc.type in ("pop3s", "pop3tls")
        ctx: ssl.SSLContext | None = ssl_context(acc, self.root) if tls else None
        try:
            if acc.type == "pop3s":
                pop: poplib.POP3 = poplib.POP3_SSL(host, port, context=ctx, timeout=TIMEOUT)
            else:
                pop = poplib.POP3(host, port, timeout=TIMEOUT)
                if acc.type == "pop3tls":
                    try:
                        caps = pop.capa()
                    except poplib.error_proto:
                        caps = {}
                    if "STLS" not in caps:
                        with contextlib.suppress(Exception):
                            pop.close()
                        raise MailboxError("tls", f"{host}:{port} does not offer STLS",
                                           temporary=False)
                    try:
                        pop.stls(ctx)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            pop.close()
                        raise
        except poplib.error_proto as exc:
            raise MailboxError("tcp", f"{host}:{port}: not a POP3 server? {exc}") from exc
        except Exception as exc:
            raise classify_os_error(exc, host, port, tls=tls,
                                    trust=trust_source(acc, self.root)) from exc
        nodelay(pop.sock)
        self.pop = pop
        self.log.log("Info", "Connection", f"connected to {host}:{port} ({acc.type}), "
                     f"{describe_tls(pop.sock)}")
        return pop

    def authenticate(self) -> None:
        acc = self.account
        pop = self.pop
        assert pop is not None
        try:
            if acc.oauth2 is not None:
                assert self.token is not None
                token = self.token()
                resp, challenge, sent = self._xoauth2(token)
                fresh = (self.renew(token) if self.renew and sent and not resp.startswith(b"+OK")
                         else None)
                if fresh is not None:
                    self.log.log("Notice", "Authentication", renewed_note(
                        acc.login, _text(resp), challenge))
                    resp, challenge, sent = self._xoauth2(fresh)
                if not resp.startswith(b"+OK"):
                    unavailable = auth_unavailable(acc.login, _text(resp))
                    if unavailable is not None:
                        raise unavailable
                    raise MailboxError("auth", xoauth2_refused(acc.login, _text(resp), challenge,
                                                               sent=sent), temporary=False)
                method = "XOAUTH2"
            else:
                pop.user(acc.login)
                pop.pass_(str(acc.password or ""))
                method = "password"
        except poplib.error_proto as exc:
            answer = _text(exc.args[0] if exc.args else exc)
            unavailable = auth_unavailable(acc.login, answer)
            if unavailable is not None:
                raise unavailable from exc
            raise MailboxError("auth", f"login as {acc.login} refused: {answer}",
                               temporary=False) from exc
        except MailboxError:
            raise
        except OSError as exc:
            raise MailboxError("auth", f"connection lost during login: {exc}") from exc
        self.log.log("Info", "Authentication", f"logged in as {acc.login} ({method})")
        with contextlib.suppress(poplib.error_proto, OSError):
            self.capabilities = frozenset(pop.capa())

    def _xoauth2(self, token: str) -> tuple[bytes, bytes | None, bool]:
        """AUTH XOAUTH2: the final answer, the server's error challenge (decoded) and
        whether the token was sent. poplib has no SASL: its line primitives are used."""
        raw: Any = self.pop
        raw._putcmd("AUTH XOAUTH2")
        resp: bytes = raw._getline()[0]
        challenge: bytes | None = None
        sent = _continuation(resp)
        if sent:
            raw._putcmd(base64.b64encode(xoauth2(self.account.login, token)).decode())
            resp = raw._getline()[0]
        if _continuation(resp):   # an error challenge: answer empty, get -ERR
            with contextlib.suppress(ValueError):
                challenge = base64.b64decode(resp[1:].strip(), validate=True)
            raw._putcmd("")
            resp = raw._getline()[0]
        return resp, challenge, sent

    def select(self) -> int:
        pop = self.pop
        assert pop is not None
        try:
            count, size = pop.stat()
        except (poplib.error_proto, OSError) as exc:
            raise MailboxError("folder", f"STAT failed: {exc}") from exc
        self.exists = count
        self.log.log("Info", "Folder", f"maildrop: {plural(count, 'message')}, {size} bytes")
        return count

    def open(self) -> None:
        try:
            self.connect()
            self.authenticate()
            self.select()
        except BaseException:
            self.abort()
            raise

    def listing(self, *, after_uid: int | None = None) -> Listing:
        pop = self.pop
        assert pop is not None
        if self.exists == 0:
            return Listing((), 0, 0)
        try:
            sizes = {int(n): int(s) for n, s in
                     (line.split()[:2] for line in pop.list()[1])}
        except (poplib.error_proto, OSError, ValueError) as exc:
            raise MailboxError("fetch", f"LIST failed: {exc}") from exc
        try:
            uidls = {int(n): u.decode("ascii", "replace") for n, u in
                     (line.split()[:2] for line in pop.uidl()[1])}
        except poplib.error_proto as exc:
            if self.account.after_fetch == "keep":
                raise MailboxError("folder", "the server has no UIDL, which after_fetch = "
                                   "\"keep\" needs to recognise messages", temporary=False) from exc
            uidls = {}    # delete mode works without; oversized ones are keyed by number
        except (OSError, ValueError) as exc:
            raise MailboxError("fetch", f"UIDL failed: {exc}") from exc
        out = [RemoteMessage(key=uidls.get(n, f"#{n}"), ref=str(n), size=sizes[n],
                             stable=n in uidls)
               for n in sorted(sizes)]
        return Listing(tuple(out), 0, self.exists)

    def fetch(self, msg: RemoteMessage) -> Fetched:
        """The whole message, or the server's -ERR for it (the connection stays usable)."""
        pop = self.pop
        assert pop is not None
        if not self.account.max_message_size:   # no limit: its lines fit the message
            _allow_lines_of(msg.size)
        try:
            _, lines, _ = pop.retr(int(msg.ref))
        except poplib.error_proto as exc:
            answer = exc.args[0] if exc.args else b""
            if isinstance(answer, bytes) and answer.startswith(b"-ERR"):
                return Refused(_short(_text(answer)))
            # Not the server's answer (a line too long, say): the stream is out of step.
            raise MailboxError("fetch", f"RETR {msg.ref} failed: {_short(exc)}") from exc
        except OSError as exc:
            raise MailboxError("fetch", f"connection lost: {_short(exc)}") from exc
        return b"\r\n".join(lines) + b"\r\n"

    def headers(self, msg: RemoteMessage) -> bytes:
        pop = self.pop
        assert pop is not None
        try:
            _, lines, _ = pop.top(int(msg.ref), 0)
        except (poplib.error_proto, OSError):
            return b""
        return b"\r\n".join(lines) + b"\r\n"

    def fetch_many(self, msgs: list[RemoteMessage]) -> list[Fetched]:
        return [self.fetch(m) for m in msgs]

    def done(self, msg: RemoteMessage) -> None:
        """After the commit: note it; DELE is sent when the connection finishes.

        Bookkeeping only (no I/O), so the runner calls it on its own thread.
        """
        if self.account.after_fetch != "keep":
            self._delete.append(int(msg.ref))

    def finish(self) -> None:
        """DELE what was committed, then QUIT: the server applies the deletions now."""
        pop = self.pop
        if pop is None:
            return
        try:
            for n in self._delete:
                pop.dele(n)
            pop.quit()
            self.pop = None
            if self._delete:
                self.log.log("Info", "Remove", f"deleted {plural(len(self._delete), 'message')}")
            self._delete = []
        except (poplib.error_proto, OSError) as exc:
            raise MailboxError("remove", f"DELE/QUIT failed, deletions not applied: {_short(exc)}"
                               ) from exc
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the connection without QUIT: the server keeps every message."""
        pop, self.pop = self.pop, None
        if pop is not None:
            with contextlib.suppress(Exception):
                pop.close()

    def count(self) -> int:
        return self.exists
