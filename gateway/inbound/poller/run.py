"""One poll run of one account: connect, fetch, deliver, and only then remove.

The order per message is fixed: fetch → Pipeline.deliver (returns after the
commit) → delete/move/remember on the server side. A temporary pipeline
outcome (451) leaves the message where it is. When the database takes a write
right after it, the failure was the message's own (a row the store refuses, a
quarantine that fails): the run goes on with the next message and the next run
tries it again (IMAP keep mode remembers it in poller_retry, past the folder
position). When the database does not, the run ends: nothing later is fetched. A
message the server refuses to hand over (NO, BYE, -ERR for it alone) is left the
same way; a connection lost without such an answer ends the run. A crash between the
commit and the removal refetches the message next time; the pipeline's dedupe
(Message-ID + content hash + the account's pseudo-recipient) answers
"duplicate" and the removal is done then.

Communication log: one communication per run (opened at the start, closed at
the end), a Connection object per connection, and a Message object per message
(written by the pipeline with its commit; written here when a message fails
before or outside the pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import structlog

from gateway import metrics
from gateway.commlog import Comm, CommObj, write_comm
from gateway.config import AccountConfig
from gateway.inbound.poller import state
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.lease import AccountLock, refresh_lock
from gateway.inbound.poller.oauth2 import TokenSource
from gateway.inbound.poller.pop3 import Pop3Session
from gateway.inbound.poller.session import (
    Fetched,
    MailboxError,
    Refused,
    RemoteMessage,
    Session,
)
from gateway.model import Envelope

if TYPE_CHECKING:
    from gateway.interfaces import Host

log = structlog.get_logger(__name__)
T = TypeVar("T")

STEP_KEY = {"dns": "DNS", "tcp": "Connection", "tls": "TLS", "auth": "Authentication",
            "folder": "Folder", "fetch": "Fetch", "remove": "Remove"}
_RETURN_PATH = re.compile(rb"^Return-Path:\s*<([^>\r\n]*)>", re.IGNORECASE | re.MULTILINE)


def pseudo_recipient(account: AccountConfig) -> str:
    """The stable recipient the dedupe keys on for mail fetched by this account."""
    return f"account:{account.name}"


def envelope_for(account: AccountConfig, raw: bytes) -> Envelope:
    head = raw.split(b"\r\n\r\n", 1)[0]
    m = _RETURN_PATH.search(head)
    return Envelope(mail_from=m.group(1).decode("utf-8", "replace") if m else "",
                    recipients=(pseudo_recipient(account),), raw=raw,
                    source=account.type.upper(), account=account.name,
                    trusted=account.trusted,
                    dispatch_queue=account.queue if account.dispatch == "queue" else "")


def make_session(account: AccountConfig, root: Any, obj: CommObj,
                 token: Callable[[], str] | None) -> Session:
    cls = ImapSession if account.type.startswith("imap") else Pop3Session
    return cls(account, root, obj, token)


@dataclass
class Progress:
    """What the connections of one run hand on to the next connection."""

    done: set[str] = field(default_factory=set)     # stable keys handled or left: skipped
    singly: set[str] = field(default_factory=set)   # fetched one at a time (see Refused.sure)
    carry: set[str] = field(default_factory=set)    # committed, to remove on the next one


@dataclass
class RunResult:
    """What one run did; `deskgate fetch --json` prints it."""

    account: str
    type: str
    status: str = "Successful"     # Successful | Warning | Failed | Skipped
    fetched: int = 0               # messages handed to the pipeline and committed
    new: int = 0
    followup: int = 0
    duplicate: int = 0
    ignored: int = 0
    quarantined: int = 0
    failed: int = 0
    oversized: int = 0             # oversized messages seen (left on the server)
    connections: int = 0
    more: bool = False             # the per-run cap stopped it with mail left
    error: str = ""
    communication_id: int | None = None
    tickets: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Poller:
    """Polls accounts for one gateway process; holds per-account token caches and locks."""

    def __init__(self, gateway: Host) -> None:
        self.gw = gateway
        self._tokens: dict[str, TokenSource] = {}
        self._running: set[str] = set()
        self.stopping = False

    # ------------------------------------------------------------ helpers

    def token_source(self, account: AccountConfig) -> TokenSource:
        ts = self._tokens.get(account.name)
        if ts is None or not ts.matches(account):
            run_dir = self.gw.config.state_dir / "run"
            ts = TokenSource(account, self.gw.config.root, self._load_token, self._save_token,
                             guard=lambda: refresh_lock(self.gw.engine, run_dir, account.name))
            self._tokens[account.name] = ts
        return ts

    def _load_token(self, account: str) -> tuple[str, str] | None:
        with self.gw.engine.connect() as conn:
            return state.stored_refresh_token(conn, account)

    def _save_token(self, account: str, token: str, fp: str) -> None:
        # Called from a session thread: wait for the commit before using the new token.
        self.gw.writer.submit(lambda c: state.store_refresh_token(c, account, token, fp),
                              isolated=True).result(60)

    async def _db(self, fn: Callable[[Any], T]) -> T:
        return await self.gw.writer.run(fn)

    # ------------------------------------------------------------ the run

    async def poll(self, account: AccountConfig, *, trigger: str = "interval") -> RunResult:
        result = RunResult(account.name, account.type)
        if account.name in self._running:
            result.status, result.error = "Skipped", "a run of this account is in progress"
            return result
        self._running.add(account.name)
        loop = asyncio.get_running_loop()
        lock = AccountLock(self.gw.engine, self.gw.config.state_dir / "run", account.name)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"poll-{account.name}"[:15])
        try:
            if not await loop.run_in_executor(pool, lock.acquire):
                result.status = "Skipped"
                result.error = "another process or node is polling this account"
                return result
            try:
                await self._run(account, result, pool, trigger)
            finally:
                await loop.run_in_executor(pool, lock.release)
        finally:
            pool.shutdown(wait=False)
            self._running.discard(account.name)
        return result

    async def _run(self, account: AccountConfig, result: RunResult, pool: ThreadPoolExecutor,
                   trigger: str) -> None:
        loop = asyncio.get_running_loop()

        async def call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
            return await loop.run_in_executor(pool, lambda: fn(*args, **kw))

        comm = Comm("Incoming", account.type.upper(), account.name)

        def opened(conn: Any) -> None:
            state.close_interrupted(conn, account.name)
            write_comm(conn, comm)
            state.run_started(conn, account.name, comm.id)

        await self._db(opened)
        result.communication_id = comm.id
        token = self.token_source(account).get if account.oauth2 is not None else None
        budget = account.max_messages_per_run
        progress = Progress()
        errors: list[str] = []
        log.info("poll run started", account=account.name, trigger=trigger)
        try:
            while True:
                obj = comm.obj("Connection")
                obj.log("Info", "Run", f"account {account.name}: {trigger} poll of "
                        f"{account.host}:{account.effective_port} ({account.type})")
                if account.type in ("imap", "pop3"):
                    obj.log("Warn", "TLS", f"account {account.name}: plaintext {account.type} "
                            "(allow_plaintext = true): credentials and mail travel unencrypted")
                session = make_session(account, self.gw.config.root, obj, token)
                result.connections += 1
                try:
                    try:
                        await call(session.open)
                    except MailboxError:
                        raise
                    except Exception as exc:   # a library error the session did not map
                        log.exception("unexpected error while connecting", account=account.name)
                        raise MailboxError("tcp", f"{type(exc).__name__}: {exc}") from exc
                except MailboxError as exc:
                    if exc.step == "auth" and account.oauth2 is not None:
                        self.token_source(account).invalidate()
                    _step_failed(obj, account, exc, errors)
                    break
                await self._db(lambda c: write_comm(c, comm))   # the Connection comes first
                try:
                    more, ok = await self._segment(account, session, obj, comm, result, call,
                                                   pool, budget - result.fetched, progress,
                                                   errors)
                except BaseException:
                    pool.submit(session.abort)   # after whatever the thread is doing now
                    raise
                await self._db(lambda c: write_comm(c, comm))
                if not ok or not more or result.fetched >= budget or self.stopping:
                    result.more = more and ok
                    break
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._close(account, comm, result, errors)

            def finished(c: Any) -> None:
                write_comm(c, comm)
                state.run_finished(c, account.name, result.status, result.fetched,
                                   "; ".join(errors)[:4000])

            await asyncio.shield(self._db(finished))
        log.info("poll run finished", account=account.name, status=result.status,
                 fetched=result.fetched, failed=result.failed, error=result.error or None)

    def _close(self, account: AccountConfig, comm: Comm, result: RunResult,
               errors: list[str]) -> None:
        for o in comm.objects:
            if o.status == "Processing":
                o.close("Failed")
        conn_failed = any(o.type == "Connection" and o.status == "Failed" for o in comm.objects)
        if conn_failed:     # also a run a failed message ended (database down, fetch)
            status = "Failed"
        elif result.quarantined or any(o.status == "Warning" for o in comm.objects):
            status = "Warning"
        else:
            status = "Successful"
        comm.close(status)  # type: ignore[arg-type]
        result.status = status
        if status == "Failed":
            metrics.POLLER_ERRORS.labels(account.name).inc()
        result.error = "; ".join(errors)

    async def _segment(self, account: AccountConfig, session: Session, obj: CommObj,
                       comm: Comm, result: RunResult, call: Any, pool: ThreadPoolExecutor,
                       budget: int, progress: Progress, errors: list[str]
                       ) -> tuple[bool, bool]:
        """Work one connection; returns (more mail waiting, connection ended cleanly).

        A server that closes the connection as its answer to one message (Dovecot
        does, for a message it cannot read) ends it cleanly with more waiting: the
        run goes on on a new connection, where what was committed is removed.
        """
        imap = account.type.startswith("imap")
        keep = account.after_fetch == "keep"
        folder = account.folder if imap else ""
        limit = min(budget, account.reconnect_every)
        after_uid: int | None = None
        seen: set[str] = set()
        uidvalidity = getattr(session, "uidvalidity", 0)
        if keep and imap:
            pos = await self._db(lambda c: state.folder_position(c, account.name, folder))
            after_uid = 0
            if pos is not None and pos[0] == uidvalidity:
                after_uid = pos[1]
            elif pos is not None:
                obj.log("Notice", "UIDVALIDITY", f"{folder}: UIDVALIDITY changed from {pos[0]} "
                        f"to {uidvalidity}; reading the folder again (the dedupe recognises "
                        "messages already stored)")
        elif keep:
            seen = await self._db(lambda c: state.seen_uidls(c, account.name))

        try:
            listing = await call(session.listing, after_uid=after_uid)
        except MailboxError as exc:
            _step_failed(obj, account, exc, errors)
            await call(session.abort)
            return False, False

        messages = listing.messages
        held: list[RemoteMessage] = []   # keep: flagged \\Deleted by another client
        if imap and not keep:
            messages = await self._flagged(account, session, obj, messages)
        elif imap:
            held = [m for m in messages if m.deleted]
            messages = tuple(m for m in messages if not m.deleted)
        for m in listing.messages:     # committed on a connection the server closed
            if m.key in progress.carry:
                session.done(m)

        # Oversized messages stay on the server (an Error once); the rest is the work list.
        size_limit = account.max_message_size
        known_big = await self._db(lambda c: state.known_oversized(c, account.name, folder))
        big: list[RemoteMessage] = []
        todo: list[RemoteMessage] = []
        more = False
        again: set[str] = set()
        if keep and imap:   # below the mark: failed before, held, or oversized before
            try:
                todo, n_flagged = await self._below_mark(account, session, obj, call, folder,
                                                         uidvalidity, after_uid or 0)
            except MailboxError as exc:
                _step_failed(obj, account, exc, errors)
                await call(session.abort)
                return False, False
            todo = [m for m in todo if m.key not in progress.done]
            again = {m.key for m in todo}
            big = [m for m in todo if m.size > size_limit]   # a held one may be oversized
            todo = [m for m in todo if m.size <= size_limit]
            todo, more = todo[:limit], len(todo) > limit
            if held or n_flagged:
                obj.log("Info", "Deleted", f"{len(held) + n_flagged} messages flagged "
                        "\\Deleted by another client: left alone (not fetched while they "
                        "carry the flag)")
        for m in messages:
            if m.size > account.max_message_size:
                big.append(m)
            elif m.key in seen or m.key in progress.done:
                continue
            elif len(todo) < limit:
                todo.append(m)
            else:
                more = True
        for m in big:
            if m.key not in known_big:
                await self._oversized(account, session, obj, call, folder, m)
        result.oversized += len(big)
        big_keys = [m.key for m in big]
        if big_keys:
            await self._db(lambda c: state.touch_oversized(c, account.name, folder, big_keys,
                                                           size_limit))
        if not (keep and imap):   # a full listing: forget what left the server
            present = [m.key for m in listing.messages]
            await self._db(lambda c: state.forget_oversized(c, account.name, folder, present))

        handled: set[str] = set(big_keys)
        left: list[tuple[RemoteMessage, str]] = []   # failed on their own: next run
        committed: list[RemoteMessage] = []
        outcome = await self._work(account, session, comm, result, pool, todo, handled, left,
                                   committed, progress.singly, errors)
        ok = outcome != "stop"
        fetched_big = [m.key for m in todo if m.key in known_big and m.key in handled]
        if fetched_big:   # the limit was raised: no longer left on the server
            await self._db(lambda c: state.drop_oversized(c, account.name, folder, fetched_big))
        # Skipped on the next connection of this run; a message number (POP3 without
        # UIDL) names another message there, so only stable keys are carried over.
        # A message left is not tried again by this run either.
        left_keys = {m.key for m, _ in left}
        progress.done.update(m.key for m in (*listing.messages, *todo)   # todo: below the mark
                             if m.stable and (m.key in handled or m.key in left_keys))

        # Keep mode: remember how far every message is handled (UIDs in order) or
        # which UIDLs are; a message that failed stays below the mark.
        if keep and imap:
            # A message left for the next run is remembered in poller_retry, so the
            # mark moves past it and the messages after it are not fetched again.
            # So is a message flagged \\Deleted by another client: fetched should the
            # flag be taken back.
            held_keys = {m.key for m in held}
            position = after_uid or 0
            for m in listing.messages:
                if m.key not in handled and m.key not in left_keys and m.key not in held_keys:
                    break
                position = m.uid
            done_again = [k for k in again if k in handled]

            def note(c: Any) -> None:
                for m, reason in left:
                    state.record_retry(c, account.name, folder, m.key, m.size, reason)
                state.hold_deleted(c, account.name, folder, [(m.key, m.size) for m in held])
                state.drop_retries(c, account.name, folder, done_again)
                if position != (after_uid or 0):
                    state.set_folder_position(c, account.name, folder, uidvalidity, position)
            if left or held or done_again or position != (after_uid or 0):
                await self._db(note)
        elif keep:
            fresh = [m.key for m in todo if m.key in handled]
            present = [m.key for m in listing.messages]
            def remember(c: Any) -> None:
                state.add_seen(c, account.name, fresh)
                state.forget_seen(c, account.name, present)
            await self._db(remember)

        if outcome == "closed":
            # Removing needs a connection: the next one removes what was committed
            # here (should the run end first, the next run's dedupe recognises it).
            progress.carry.update(m.key for m in committed)
            obj.log("Notice", "Connection", f"the server closed the connection after "
                    f"refusing a message; {len(committed)} messages committed on it, "
                    "reconnecting for the others")
            obj.close("Warning")
            return True, True
        marked = session.marked() if isinstance(session, ImapSession) else []
        if marked:   # remembered first: a message flagged and left is known as ours
            await self._db(lambda c: state.add_seen(c, account.name, marked))
        try:
            # Also after a failed message: what was committed before it is removed now.
            await call(session.finish)
        except MailboxError as exc:
            _step_failed(obj, account, exc, errors)
            return False, False
        progress.carry.clear()
        if marked and isinstance(session, ImapSession):
            flagged = session.unexpunged
            await self._db(lambda c: state.forget_seen(c, account.name, flagged))
        if not ok:
            obj.close("Failed")
            return False, False
        obj.log("Info", "Summary", f"{len(todo)} messages processed on this connection"
                + (f", {len(left)} left on the server to try again" if left else "")
                + (", more waiting" if more else ""))
        obj.close("Warning" if left else "Successful")
        return more, True

    async def _flagged(self, account: AccountConfig, session: Session, obj: CommObj,
                       messages: tuple[RemoteMessage, ...]) -> tuple[RemoteMessage, ...]:
        """IMAP delete/move: the messages to consider, without those flagged \\Deleted.

        A flagged message is another client's (it is left alone) or ours, committed
        and flagged by an earlier connection that could not expunge it (remembered
        in the database): that one is expunged with this connection's.
        """
        flagged = [m.key for m in messages if m.deleted]

        def prune(c: Any) -> set[str]:
            state.forget_seen(c, account.name, flagged)
            return state.seen_uidls(c, account.name)

        ours = await self._db(prune)
        foreign = 0
        for m in messages:
            if not m.deleted:
                continue
            if m.key in ours and isinstance(session, ImapSession):
                session.waiting(m)
            else:
                foreign += 1
        if foreign:
            obj.log("Info", "Deleted", f"{foreign} messages flagged \\Deleted by another "
                    "client: left alone (neither fetched nor expunged)")
        return tuple(m for m in messages if not m.deleted)

    async def _work(self, account: AccountConfig, session: Session, comm: Comm,
                    result: RunResult, pool: ThreadPoolExecutor, todo: list[RemoteMessage],
                    handled: set[str], left: list[tuple[RemoteMessage, str]],
                    committed: list[RemoteMessage], singly: set[str], errors: list[str]
                    ) -> Literal["done", "stop", "closed"]:
        """Deliver the work list in order; the next batch is fetched while one is delivered.

        Only the session thread talks to the server (fetch batch n+1, later the
        removals in finish()); a message is noted for removal after its commit.
        "stop": the run ends here; "closed": the server closed the connection with
        its refusal of a message, the run goes on on a new one.
        """
        loop = asyncio.get_running_loop()
        batches = _batches(todo, singly)

        def fetch(batch: list[RemoteMessage]) -> asyncio.Future[list[Fetched]]:
            return loop.run_in_executor(pool, session.fetch_many, batch)

        pending = fetch(batches[0]) if batches else None
        try:
            for bi, batch in enumerate(batches):
                assert pending is not None
                try:
                    raws = await pending
                except MailboxError as exc:
                    pending = None
                    mobj = comm.obj("Message")
                    mobj.log("Error", "Fetch", f"account {account.name}: message "
                             f"{batch[0].key}: {exc.reason}")
                    mobj.close("Failed")
                    result.failed += 1
                    errors.append(f"Fetch: {exc.reason}")
                    return "stop"
                closed = any(isinstance(r, Refused) and r.closed for r in raws)
                pending = (fetch(batches[bi + 1]) if bi + 1 < len(batches) and not closed
                           else None)
                for m, raw in zip(batch, raws, strict=True):
                    if self.stopping:        # `serve` is stopping: end cleanly after a commit
                        return "closed" if closed else "done"
                    if raw is None:          # vanished meanwhile (someone else removed it)
                        handled.add(m.key)
                        continue
                    if isinstance(raw, Refused):
                        if raw.sure:
                            self._refused(account, comm, result, m, raw, errors)
                            left.append((m, f"refused by the server: {raw.answer}"[:2000]))
                        else:
                            singly.add(m.key)
                        continue
                    done, why = await self._deliver(account, session, comm, result, m, raw,
                                                    errors)
                    if done == "stop":
                        return "stop"
                    if done == "left":
                        left.append((m, why))
                    else:
                        handled.add(m.key)
                        committed.append(m)
                if closed:
                    return "closed"
            return "done"
        finally:
            if pending is not None:      # a prefetch still running: let it end first
                with contextlib.suppress(Exception):
                    await pending

    def _refused(self, account: AccountConfig, comm: Comm, result: RunResult,
                 m: RemoteMessage, refused: Refused, errors: list[str]) -> None:
        """The server would not hand over one message: logged, counted, left for next run."""
        where = f"UID {m.uid}" if account.type.startswith("imap") else f"RETR {m.ref}"
        mobj = comm.obj("Message")
        mobj.log("Error", "Fetch", f"account {account.name}: message {m.key} ({where}): "
                 f"the server refused to hand it over ({refused.answer}); left on the "
                 "server and tried again by the next run; the run goes on with the other "
                 "messages")
        mobj.close("Failed")
        metrics.POLLER_MESSAGE_FAILURES.labels(account.name).inc()
        result.failed += 1
        errors.append(f"Fetch: message {m.key}: {refused.answer}")

    async def _below_mark(self, account: AccountConfig, session: Session, obj: CommObj,
                          call: Any, folder: str, uidvalidity: int, below: int
                          ) -> tuple[list[RemoteMessage], int]:
        """IMAP keep: the messages below the folder position to fetch again: those
        that failed for a reason of their own, those held while another client had
        them flagged \\Deleted, and those left as oversized under a smaller
        max_message_size that fit the current one. Also: how many of them carry
        \\Deleted now (they are not fetched)."""
        limit = account.max_message_size

        def read(c: Any) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
            return (state.retries(c, account.name, folder),
                    state.oversized_under_smaller_limit(c, account.name, folder, limit))

        failed, rows = await self._db(read)
        again: list[RemoteMessage] = []
        failures: set[str] = set()   # the others were held while flagged \\Deleted
        for key, size, attempts in failed:
            uv, _, uid = key.partition(":")
            if uv == str(uidvalidity) and uid.isdigit() and int(uid) <= below:
                again.append(RemoteMessage(key=key, ref=uid, size=size, uid=int(uid)))
                if attempts > 0:
                    failures.add(key)
        retried = len(again)
        still: list[str] = []
        for key, size in rows:
            uv, _, uid = key.partition(":")
            if uv != str(uidvalidity) or not uid.isdigit() or int(uid) > below:
                continue     # another UIDVALIDITY, or above the mark (listed anyway)
            if size > limit:
                still.append(key)
            else:
                again.append(RemoteMessage(key=key, ref=uid, size=size, uid=int(uid)))
        if still:
            await self._db(lambda c: state.touch_oversized(c, account.name, folder, still,
                                                           limit))
        # Their flags now: one another client flagged \\Deleted meanwhile is not fetched
        # (one gone from the server is fetched as vanished, which forgets it).
        now: dict[int, RemoteMessage] = {}
        if again and isinstance(session, ImapSession):
            now = await call(session.lookup, sorted({m.uid for m in again}))
        flagged = {m.key for m in again if m.uid in now and now[m.uid].deleted}
        n_failed = len(failures - flagged)
        if n_failed:
            obj.log("Info", "Retry", f"{n_failed} messages that failed before: "
                    "trying them again")
        n_unheld = sum(1 for m in again[:retried]
                       if m.key not in failures and m.key not in flagged)
        if n_unheld:
            obj.log("Info", "Deleted", f"{n_unheld} messages another client had flagged "
                    "\\Deleted no longer carry the flag: fetching them")
        fit = sum(1 for m in again[retried:] if m.key not in flagged)
        if fit > 0:
            obj.log("Info", "Oversized", f"{fit} messages left as oversized fit "
                    f"max_message_size ({limit} bytes) now: fetching them")
        out = {m.key: now.get(m.uid, m) for m in again if m.key not in flagged}
        return sorted(out.values(), key=lambda m: m.uid), len(flagged)

    async def _oversized(self, account: AccountConfig, session: Session, obj: CommObj,
                         call: Any, folder: str, m: RemoteMessage) -> None:
        try:
            head = await call(session.headers, m)
        except MailboxError:
            head = b""
        h = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        subject, sender, mid = (str(h.get("Subject", "")), str(h.get("From", "")),
                                str(h.get("Message-ID", "")).strip())
        obj.log("Error", "Oversized", f"account {account.name}: message {m.key} "
                f"({m.size} bytes, Message-ID {mid or '-'}, Subject {subject[:100]!r}) exceeds "
                f"max_message_size ({account.max_message_size} bytes); left on the server, "
                "see `deskgate fetch --list-oversized`")
        await self._db(lambda c: state.record_oversized(c, account.name, folder, m.key, m.size,
                                                        account.max_message_size,
                                                        subject[:1000], sender[:1000], mid[:998]))

    async def _deliver(self, account: AccountConfig, session: Session, comm: Comm,
                       result: RunResult, m: RemoteMessage, raw: bytes, errors: list[str]
                       ) -> tuple[Literal["done", "left", "stop"], str]:
        """Deliver one fetched message and note it for removal.

        "left": it failed for a reason of its own and stays for the next run;
        "stop": it failed while the database is down, which ends the run.
        """
        t0 = time.perf_counter()
        # In flight until committed: a graceful stop waits for it.
        outcome = await self.gw.deliver_envelope(envelope_for(account, raw), comm)
        reply = outcome.replies[0]
        metrics.PIPELINE_SECONDS.labels("poller").observe(time.perf_counter() - t0)
        metrics.MESSAGES.labels("poller", "in",
                                "tempfail" if reply.temporary else outcome.action).inc()
        if not reply.ok:
            reason = f"{reply}; {outcome.detail}"
            up = await self._database_up(account)
            mobj = comm.obj("Message")
            if up:
                mobj.log("Error", "Pipeline", f"account {account.name}: message {m.key} not "
                         f"processed ({reason}); left on the server and tried again by the "
                         "next run; the database is up, so the run goes on with the next "
                         "message")
                metrics.POLLER_MESSAGE_FAILURES.labels(account.name).inc()
            else:
                mobj.log("Error", "Pipeline", f"account {account.name}: message {m.key} not "
                         f"processed ({reason}); the database takes no writes: left on the "
                         "server, the run ends here")
            mobj.close("Failed")
            result.failed += 1
            errors.append(f"Pipeline: message {m.key}: {reply}")
            return ("left" if up else "stop"), reason[:2000]
        result.fetched += 1
        counter = {"quarantine": "quarantined", "ignore": "ignored"}.get(outcome.action,
                                                                          outcome.action)
        if counter in ("new", "followup", "duplicate", "quarantined", "ignored"):
            setattr(result, counter, getattr(result, counter) + 1)
        if outcome.ticket_number and len(result.tickets) < 1000:
            result.tickets.append(outcome.ticket_number)
        session.done(m)   # committed: removed (or moved) when the connection finishes
        return "done", ""

    async def _database_up(self, account: AccountConfig) -> bool:
        """After a 451: does the database take a write? If so, the failure was the message's."""
        try:
            await self._db(lambda c: state.touch_account(c, account.name))
        except Exception as exc:
            log.warning("database unavailable; the poll run ends", account=account.name,
                        error=repr(exc)[:300])
            return False
        return True


BATCH_MESSAGES = 20
BATCH_BYTES = 8 * 1024 * 1024


def _step_failed(obj: CommObj, account: AccountConfig, exc: MailboxError,
                 errors: list[str]) -> None:
    """A step of the mailbox session failed: an Error on the connection, which ends
    Failed, and the run's error list."""
    obj.log("Error", STEP_KEY[exc.step], f"account {account.name}: {exc.reason}")
    obj.close("Failed")
    errors.append(f"{STEP_KEY[exc.step]}: {exc.reason}")


def _batches(todo: list[RemoteMessage], singly: set[str] | frozenset[str] = frozenset()
             ) -> list[list[RemoteMessage]]:
    """Fetch batches: up to BATCH_MESSAGES messages or BATCH_BYTES, at least one; the
    messages in `singly` each in a batch of their own."""
    out: list[list[RemoteMessage]] = []
    size = 0
    for m in todo:
        if (out and len(out[-1]) < BATCH_MESSAGES and size + m.size <= BATCH_BYTES
                and m.key not in singly and out[-1][0].key not in singly):
            out[-1].append(m)
            size += m.size
        else:
            out.append([m])
            size = m.size
    return out
