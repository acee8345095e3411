"""IMAP sessions (imap, imaps, imaptls) on the stdlib imaplib, run in a worker thread.

`delete`: when the connection finishes, the UIDs committed on it get one UID
STORE \\Deleted and UID EXPUNGE of exactly those UIDs (UIDPLUS). `move:<folder>`:
one UID MOVE (or COPY + \\Deleted), creating the folder on [TRYCREATE]. `keep`:
the folder is opened read-only (EXAMINE) and bodies are read with BODY.PEEK, so
no flag changes; the runner keeps UIDVALIDITY + last UID in the database.

A message another client flagged \\Deleted and did not expunge is that client's:
no mode fetches it while it carries the flag, and it is never expunged by us.
A plain EXPUNGE (a server without UIDPLUS) would remove it too, so it is sent
only while no message but ours carries \\Deleted; until then ours stay flagged
(the runner remembers them and does not fetch them again) and are expunged by a
later connection.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import ssl
from collections.abc import Sequence
from pathlib import Path

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
                 token: TokenGetter | None = None, *,
                 renew: TokenRenewer | None = None) -> None:
        self.account = account
        self.root = root
        self.log = log
        self.token = token
        self.renew = renew
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
            raise classify_os_error(exc, host, port, tls=tls,
                                    trust=trust_source(acc, self.root)) from exc
        nodelay(imap.sock)
        self.imap = imap
        self.log.log("Info", "Connection", f"connected to {host}:{port} ({acc.type}), "
                     f"{describe_tls(imap.sock)}")
        return imap

    def authenticate(self) -> None:
        acc = self.account
        imap = self.imap
        assert imap is not None
        challenges: list[bytes] = []
        try:
            if acc.oauth2 is not None:
                assert self.token is not None
                token = self.token()

                def answer(challenge: bytes) -> bytes:
                    # First the XOAUTH2 response; an error challenge (base64 JSON, which
                    # imaplib hands over decoded) is answered with an empty line.
                    challenges.append(challenge)
                    return xoauth2(acc.login, token) if len(challenges) == 1 else b""

                try:
                    imap.authenticate("XOAUTH2", answer)
                except imaplib.IMAP4.error as exc:
                    fresh = self.renew(token) if self.renew and challenges else None
                    if fresh is None:
                        raise
                    self.log.log("Notice", "Authentication", renewed_note(
                        acc.login, _auth_text(exc), challenges[1:2]))
                    token = fresh
                    challenges.clear()
                    imap.authenticate("XOAUTH2", answer)
                method = "XOAUTH2"
            else:
                imap.login(acc.login, str(acc.password or ""))
                method = "password"
        except imaplib.IMAP4.error as exc:
            unavailable = auth_unavailable(acc.login, _auth_text(exc))
            if unavailable is not None:
                raise unavailable from exc
            if acc.oauth2 is not None:
                raise MailboxError("auth", xoauth2_refused(
                    acc.login, _auth_text(exc), challenges[1] if len(challenges) > 1 else None,
                    sent=bool(challenges)),
                    temporary=False) from exc
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
        except imaplib.IMAP4.error as exc:   # BAD: imaplib raises instead of returning it
            raise MailboxError("folder", f"cannot open folder {folder!r}: {exc}",
                               temporary=False) from exc
        if typ != "OK":
            raise MailboxError("folder", f"cannot open folder {folder!r}: {_text(data)}",
                               temporary=False)
        self.exists = int(data[0] or 0) if data and data[0] else 0
        _, uv = imap.response("UIDVALIDITY")
        self.uidvalidity = int(uv[0]) if uv and uv[0] else 0
        self.log.log("Info", "Folder", f"{folder}: {plural(self.exists, 'message')} "
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
        # "n:*" always includes the highest UID, even below n
        out = [m for m in self._listed(data) if m.uid >= start]
        return Listing(tuple(out), self.uidvalidity, self.exists)

    def lookup(self, uids: list[int]) -> dict[int, RemoteMessage]:
        """Size and flags of the given UIDs, by UID; those no longer there are missing."""
        if not uids or self.exists == 0:
            return {}
        out: dict[int, RemoteMessage] = {}
        for i in range(0, len(uids), 500):
            data = self._cmd("fetch", "FETCH", uid_set(uids[i:i + 500]),
                             "(UID RFC822.SIZE FLAGS)")
            out.update((m.uid, m) for m in self._listed(data))
        return out

    def _listed(self, data: list[object]) -> list[RemoteMessage]:
        """The messages of FETCH (UID RFC822.SIZE FLAGS) responses, by UID."""
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
            if uid < 0 or size < 0:
                continue
            out.append(RemoteMessage(key=f"{self.uidvalidity}:{uid}", ref=str(uid), size=size,
                                     uid=uid, deleted=deleted))
        out.sort(key=lambda m: m.uid)
        return out

    def _fetch_bodies(self, uids: str) -> tuple[dict[int, bytes], Refused | None]:
        """One UID FETCH of whole messages: the bodies by UID (-1: no UID given) and
        the server's refusal, if it answered NO or closed the connection with a BYE.

        A connection that ends without a BYE is lost, not a refusal (MailboxError).
        """
        imap = self.imap
        assert imap is not None
        try:
            typ, data = imap.uid("FETCH", uids, "(BODY.PEEK[])")
        except (OSError, imaplib.IMAP4.abort) as exc:
            bye = imap.untagged_responses.get("BYE")
            if not bye or isinstance(exc, OSError):
                raise MailboxError("fetch", f"connection lost during UID FETCH {uids}: "
                                   f"{_lost(exc)}") from exc
            # What arrived before the BYE is whole: imaplib reads each literal completely.
            bodies = _bodies(imap.untagged_responses.get("FETCH", []))
            self.abort()
            return bodies, Refused(f"* BYE {_text(bye[-1])}", closed=True)
        except imaplib.IMAP4.error as exc:
            raise MailboxError("fetch", f"UID FETCH {uids} failed: {exc}") from exc
        if typ == "NO":
            # imaplib leaves the FETCH responses of a NO behind: take them, so they
            # are neither lost nor mistaken for the next command's.
            return (_bodies(imap.untagged_responses.pop("FETCH", [])),
                    Refused(f"NO {_text(data)}"))
        if typ != "OK":
            raise MailboxError("fetch", f"UID FETCH {uids} answered {typ}: {_text(data)}")
        return _bodies(data), None

    def fetch(self, msg: RemoteMessage) -> Fetched:
        """The whole message, the server's refusal, or None when it vanished meanwhile."""
        bodies, refused = self._fetch_bodies(msg.ref)
        body = bodies.get(msg.uid, bodies.get(-1))
        return body if body is not None else refused

    def fetch_many(self, msgs: list[RemoteMessage]) -> list[Fetched]:
        """Several whole messages in one UID FETCH; None for those that vanished.

        After a NO, a message without a body is the refused one when it is the only
        one; several are asked for one by one, so each gets its own answer (Dovecot
        closes the connection when asked again for the one it refused). After a BYE
        nothing more can be asked here: those without a body are refused, unsure.
        """
        if len(msgs) == 1:
            return [self.fetch(msgs[0])]
        bodies, refused = self._fetch_bodies(",".join(m.ref for m in msgs))
        missing = [m for m in msgs if m.uid not in bodies]
        out: list[Fetched] = []
        for m in msgs:
            body = bodies.get(m.uid)
            if body is not None or refused is None:
                out.append(body)
            elif len(missing) == 1 and not refused.closed:
                out.append(refused)
            elif self.imap is None:
                out.append(Refused(refused.answer, closed=True, sure=False))
            else:
                out.append(self.fetch(m))
        return out

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
            self.log.log("Info", "Remove", f"{verb}: {plural(len(uids), 'message')}")

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
            self.log.log("Notice", "Remove", f"{plural(len(ours), 'message')} flagged \\Deleted "
                         f"but not expunged: {plural(len(foreign), 'other message')} "
                         f"{'carries' if len(foreign) == 1 else 'carry'} \\Deleted from another "
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


def _bodies(data: Sequence[object]) -> dict[int, bytes]:
    """Message literals of FETCH responses by UID; -1 for one without a UID."""
    bodies: dict[int, bytes] = {}
    for i, item in enumerate(data):
        if not (isinstance(item, tuple) and len(item) >= 2 and isinstance(item[1], bytes)):
            continue
        head = item[0] if isinstance(item[0], bytes) else b""
        m = _UID_RE.search(head)
        nxt = data[i + 1] if i + 1 < len(data) else None
        if m is None and isinstance(nxt, bytes):
            m = _UID_RE.search(nxt)     # UID after the literal
        bodies.setdefault(int(m.group(1)) if m is not None else -1, item[1])
    return bodies


def _lost(exc: BaseException) -> str:
    """'socket error: EOF' without imaplib's 'command: UID => ' in front."""
    return re.sub(r"^command: \w+ => ", "", str(exc)) or type(exc).__name__


def _auth_text(exc: BaseException) -> str:
    text = str(exc)
    # Servers sometimes answer XOAUTH2 with a base64 JSON challenge; make it readable.
    m = re.search(r"([A-Za-z0-9+/=]{20,})", text)
    if m:
        with contextlib.suppress(Exception):
            return text.replace(m.group(1), base64.b64decode(m.group(1)).decode())
    return text.strip("b'\"")
