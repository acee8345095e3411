"""IMAP sessions (imap, imaps, imaptls) on the stdlib imaplib, run in a worker thread.

`delete`: when the connection finishes, the UIDs committed on it get one UID
STORE \\Deleted and UID EXPUNGE of exactly those UIDs (UIDPLUS). `move:<folder>`:
one UID MOVE (or COPY + \\Deleted), creating the folder on [TRYCREATE]. `keep`:
the folder is opened read-only (EXAMINE) and bodies are read with BODY.PEEK, so
no flag changes; the runner keeps UIDVALIDITY + last UID in the database.

A message another client flagged \\Deleted and did not expunge is that client's:
it is not fetched and never expunged by us. A plain EXPUNGE (a server without
UIDPLUS) would remove it too, so it is sent only while no message but ours
carries \\Deleted; until then ours stay flagged (the runner remembers them and
does not fetch them again) and are expunged by a later connection.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import ssl
from pathlib import Path

from gateway.commlog import CommObj
from gateway.config import AccountConfig
from gateway.inbound.poller.session import (
    TIMEOUT,
    Listing,
    MailboxError,
    RemoteMessage,
    TokenGetter,
    classify_os_error,
    describe_tls,
    nodelay,
    resolve,
    ssl_context,
    xoauth2,
)

_FETCH_RE = re.compile(rb"UID (\d+)|RFC822\.SIZE (\d+)|FLAGS \(([^)]*)\)")
_UID_RE = re.compile(rb"UID (\d+)")


def mutf7(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 5.1.3): 'Entwürfe' → 'Entw&APw-rfe'."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).rstrip(b"=")
            out.append("&" + b64.replace(b"/", b",").decode() + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def quote(name: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends arguments as they are)."""
    name = mutf7(name)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """[1,2,3,7] → '1:3,7' (short commands for large expunges)."""
    ranges: list[list[int]] = []
    for u in sorted(set(uids)):
        if ranges and ranges[-1][1] == u - 1:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)


def _text(data: object) -> str:
    if isinstance(data, list):
        return " ".join(_text(d) for d in data if d is not None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


class ImapSession:
    """One IMAP connection for one account; used by exactly one thread."""

    def __init__(self, account: AccountConfig, root: Path, log: CommObj,
                 token: TokenGetter | None = None) -> None:
        self.account = account
        self.root = root
        self.log = log
        self.token = token
        self.imap: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.exists = 0
        self.uidvalidity = 0
        self._expunge: list[int] = []    # committed on this connection
        self._waiting: list[int] = []    # ours, flagged \\Deleted by an earlier connection
        self.unexpunged: list[str] = []  # keys of ours still flagged after finish()
        self.readonly = account.after_fetch == "keep"

    # ------------------------------------------------------------ connect

    def connect(self) -> imaplib.IMAP4:
        """DNS, TCP, TLS (implicit or STARTTLS); no authentication yet."""
        acc = self.account
        host, port = acc.host, acc.effective_port
        addrs = resolve(host, port)
        self.log.log("Debug", "DNS", f"{host} → {', '.join(addrs)}")
        tls = acc.type in ("imaps", "imaptls")
        ctx: ssl.SSLContext | None = ssl_context(acc, self.root) if tls else None
        try:
            if acc.type == "imaps":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=ctx,
                                                        timeout=TIMEOUT)
            else:
                imap = imaplib.IMAP4(host, port, timeout=TIMEOUT)
                if acc.type == "imaptls":
                    if "STARTTLS" not in imap.capabilities:
                        with contextlib.suppress(Exception):
                            imap.shutdown()
                        raise MailboxError("tls", f"{host}:{port} does not offer STARTTLS",
                                           temporary=False)
                    try:
                        imap.starttls(ssl_context=ctx)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            imap.shutdown()
                        raise
        except imaplib.IMAP4.error as exc:
            raise MailboxError("tcp", f"{host}:{port}: not an IMAP server? {exc}") from exc
        except Exception as exc:
            raise classify_os_error(exc, host, port, tls=tls) from exc
        nodelay(imap.sock)
        self.imap = imap
        self.log.log("Info", "Connection", f"connected to {host}:{port} ({acc.type}), "
                     f"{describe_tls(imap.sock)}")
        return imap

    def authenticate(self) -> None:
        acc = self.account
        imap = self.imap
        assert imap is not None
        try:
            if acc.oauth2 is not None:
                assert self.token is not None
                token = self.token()
                sent = {"n": 0}

                def answer(_challenge: bytes) -> bytes:
                    # First the XOAUTH2 response; an error challenge is answered empty.
                    sent["n"] += 1
                    return xoauth2(acc.login, token) if sent["n"] == 1 else b""

                imap.authenticate("XOAUTH2", answer)
                method = "XOAUTH2"
            else:
                imap.login(acc.login, str(acc.password or ""))
                method = "password"
        except imaplib.IMAP4.error as exc:
            raise MailboxError("auth", f"login as {acc.login} refused: {_auth_text(exc)}",
                               temporary=False) from exc
        except MailboxError:
            raise
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise MailboxError("auth", f"connection lost during login: {exc}") from exc
        self.log.log("Info", "Authentication", f"logged in as {acc.login} ({method})")
        try:
            _, data = imap.capability()
            caps = _text(data).upper().split()
        except (imaplib.IMAP4.error, OSError):
            caps = list(imap.capabilities)
        self.capabilities = frozenset(caps)

    def select(self) -> int:
        imap = self.imap
        assert imap is not None
        folder = self.account.folder
        try:
            typ, data = imap.select(quote(folder), readonly=self.readonly)
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise MailboxError("folder", f"connection lost selecting {folder}: {exc}") from exc
        if typ != "OK":
            raise MailboxError("folder", f"cannot open folder {folder!r}: {_text(data)}",
                               temporary=False)
        self.exists = int(data[0] or 0) if data and data[0] else 0
        _, uv = imap.response("UIDVALIDITY")
        self.uidvalidity = int(uv[0]) if uv and uv[0] else 0
        self.log.log("Info", "Folder", f"{folder}: {self.exists} messages "
                     f"(UIDVALIDITY {self.uidvalidity}{', read-only' if self.readonly else ''})")
        return self.exists

    def open(self) -> None:
        try:
            self.connect()
            self.authenticate()
            self.select()
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------ messages

    def _cmd(self, step: str, *args: str) -> list[object]:
        imap = self.imap
        assert imap is not None
        try:
            typ, data = imap.uid(*args)
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise MailboxError("fetch" if step == "fetch" else "remove",
                               f"connection lost: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            raise MailboxError("fetch" if step == "fetch" else "remove",
                               f"UID {args[0]} failed: {exc}") from exc
        if typ != "OK":
            raise MailboxError("fetch" if step == "fetch" else "remove",
                               f"UID {args[0]} answered {typ}: {_text(data)}")
        return list(data)

    def listing(self, *, after_uid: int | None = None) -> Listing:
        """Messages to fetch, oldest first: all of them, or those above after_uid (keep)."""
        if self.exists == 0:
            return Listing((), self.uidvalidity, 0)
        start = (after_uid or 0) + 1
        data = self._cmd("fetch", "FETCH", f"{start}:*", "(UID RFC822.SIZE FLAGS)")
        out: list[RemoteMessage] = []
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid = size = -1
            deleted = False
            for m in _FETCH_RE.finditer(line):
                if m.group(1):
                    uid = int(m.group(1))
                elif m.group(2):
                    size = int(m.group(2))
                else:
                    deleted = b"\\DELETED" in m.group(3).upper().split()
            if uid < start or size < 0:
                continue   # "n:*" always includes the highest UID, even below n
            out.append(RemoteMessage(key=f"{self.uidvalidity}:{uid}", ref=str(uid), size=size,
                                     uid=uid, deleted=deleted))
        out.sort(key=lambda m: m.uid)
        return Listing(tuple(out), self.uidvalidity, self.exists)

    def fetch(self, msg: RemoteMessage) -> bytes | None:
        """The whole message, or None when it vanished meanwhile."""
        data = self._cmd("fetch", "FETCH", msg.ref, "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple) and len(item) >= 2 and isinstance(item[1], bytes):
                return item[1]
        return None

    def fetch_many(self, msgs: list[RemoteMessage]) -> list[bytes | None]:
        """Several whole messages in one UID FETCH; None for those that vanished."""
        if len(msgs) == 1:
            return [self.fetch(msgs[0])]
        data = self._cmd("fetch", "FETCH", ",".join(m.ref for m in msgs), "(BODY.PEEK[])")
        bodies: dict[int, bytes] = {}
        for i, item in enumerate(data):
            if not (isinstance(item, tuple) and len(item) >= 2 and isinstance(item[1], bytes)):
                continue
            head = item[0] if isinstance(item[0], bytes) else b""
            m = _UID_RE.search(head)
            nxt = data[i + 1] if i + 1 < len(data) else None
            if m is None and isinstance(nxt, bytes):
                m = _UID_RE.search(nxt)     # UID after the literal
            if m is not None:
                bodies[int(m.group(1))] = item[1]
        return [bodies.get(m.uid) for m in msgs]

    def headers(self, msg: RemoteMessage) -> bytes:
        data = self._cmd("fetch", "FETCH", msg.ref,
                         "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM MESSAGE-ID)])")
        for item in data:
            if isinstance(item, tuple) and len(item) >= 2 and isinstance(item[1], bytes):
                return item[1]
        return b""

    def done(self, msg: RemoteMessage) -> None:
        """After the commit: note the message for removal when the connection finishes.

        Removing in one UID STORE/MOVE per connection instead of one per message
        saves a round trip per message; a connection that dies first leaves the
        messages in place and the next run's dedupe recognises them.
        """
        if self.account.after_fetch != "keep":
            self._expunge.append(msg.uid)

    def waiting(self, msg: RemoteMessage) -> None:
        """A message of ours an earlier connection flagged \\Deleted but could not
        expunge: expunge it with this connection's (no I/O now)."""
        self._waiting.append(msg.uid)

    def marked(self) -> list[str]:
        """Keys of the messages finish() flags \\Deleted or expunges."""
        return [f"{self.uidvalidity}:{u}" for u in (*self._expunge, *self._waiting)]

    def _apply_removals(self) -> None:
        action = self.account.after_fetch
        uids = self._expunge
        uidplus = "UIDPLUS" in self.capabilities
        flagged = list(self._waiting)
        for i in range(0, len(uids), 500):
            chunk = uid_set(uids[i:i + 500])
            if action.startswith("move:"):
                folder = action[5:]
                if "MOVE" in self.capabilities:
                    self._try_create("MOVE", chunk, folder)
                    continue
                self._try_create("COPY", chunk, folder)
            self._cmd("remove", "STORE", chunk, "+FLAGS.SILENT", "(\\Deleted)")
            flagged += uids[i:i + 500]
            if uidplus:
                self._cmd("remove", "EXPUNGE", chunk)
        if uidplus:
            for i in range(0, len(self._waiting), 500):
                self._cmd("remove", "EXPUNGE", uid_set(self._waiting[i:i + 500]))
        elif flagged:
            self._expunge_unless_foreign(flagged)
        if uids:
            verb = "moved to " + action[5:] if action.startswith("move:") else "deleted"
            self.log.log("Info", "Remove", f"{verb}: {len(uids)} messages")

    def _expunge_unless_foreign(self, ours: list[int]) -> None:
        """EXPUNGE (no UIDPLUS) only while no message but ours carries \\Deleted."""
        imap = self.imap
        assert imap is not None
        found: set[int] = set()
        for line in self._cmd("remove", "SEARCH", "DELETED"):
            if isinstance(line, bytes):
                found.update(int(u) for u in line.split() if u.isdigit())
        foreign = found - set(ours)
        if foreign:
            self.unexpunged = [f"{self.uidvalidity}:{u}" for u in sorted(found & set(ours))]
            self.log.log("Notice", "Remove", f"{len(ours)} messages flagged \\Deleted but not "
                         f"expunged: {len(foreign)} other messages carry \\Deleted from another "
                         "client and the server has no UIDPLUS (UID EXPUNGE), so an EXPUNGE "
                         "would remove them too; ours are not fetched again and are expunged "
                         "once no other message is flagged")
            return
        typ, data = imap.expunge()
        if typ != "OK":
            raise MailboxError("remove", f"EXPUNGE answered {typ}: {_text(data)}")

    def _try_create(self, cmd: str, uids: str, folder: str) -> None:
        imap = self.imap
        assert imap is not None
        try:
            typ, data = imap.uid(cmd, uids, quote(folder))
            if typ != "OK" and "TRYCREATE" in _text(data).upper():
                imap.create(quote(folder))
                self.log.log("Notice", "Folder", f"created folder {folder!r} for after_fetch")
                typ, data = imap.uid(cmd, uids, quote(folder))
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error) as exc:
            raise MailboxError("remove", f"{cmd} to {folder!r} failed: {exc}") from exc
        if typ != "OK":
            raise MailboxError("remove", f"{cmd} to {folder!r} answered {typ}: {_text(data)}")

    def finish(self) -> None:
        """Remove (or move) what was committed and log out."""
        imap = self.imap
        if imap is None:
            return
        try:
            if self._expunge or self._waiting:
                self._apply_removals()
                self._expunge, self._waiting = [], []
            with contextlib.suppress(Exception):
                imap.logout()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the connection without expunging (flags already set stay set)."""
        imap, self.imap = self.imap, None
        if imap is not None:
            with contextlib.suppress(Exception):
                imap.shutdown()

    def count(self) -> int:
        return self.exists


def _auth_text(exc: BaseException) -> str:
    text = str(exc)
    # Servers sometimes answer XOAUTH2 with a base64 JSON challenge; make it readable.
    m = re.search(r"([A-Za-z0-9+/=]{20,})", text)
    if m:
        with contextlib.suppress(Exception):
            return text.replace(m.group(1), base64.b64decode(m.group(1)).decode())
    return text.strip("b'\"")
