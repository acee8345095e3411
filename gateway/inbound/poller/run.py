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

Here: the account run loop (lock, connections, the run's result). The work of
one connection is in connection.py, its work list (fetch, deliver) in
deliver.py, and what keep mode remembers in keep.py; they read the Poller's
_db, _database_up and stopping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from gateway import metrics
from gateway.commlog import Comm, CommObj, write_comm
from gateway.config import AccountConfig
from gateway.inbound.poller import state
from gateway.inbound.poller.connection import STEP_KEY, Progress, step_failed, work_connection
from gateway.inbound.poller.deliver import (
    BATCH_BYTES,
    BATCH_MESSAGES,
    envelope_for,
    pseudo_recipient,
)
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.lease import AccountLock, refresh_lock
from gateway.inbound.poller.oauth2 import TokenSource
from gateway.inbound.poller.pop3 import Pop3Session
from gateway.inbound.poller.session import MailboxError, Session

if TYPE_CHECKING:
    from gateway.interfaces import Host

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "STEP_KEY", "Poller", "Progress", "RunResult",
           "envelope_for", "make_session", "pseudo_recipient"]

log = structlog.get_logger(__name__)
T = TypeVar("T")


def token_notes(obj: CommObj, tokens: TokenSource | None) -> bool:
    """What happened to the account's refresh token (in this run or an IDLE
    watcher's refresh) onto the connection; True when one is a Warning."""
    notes = tokens.take_notes() if tokens is not None else []
    for priority, text in notes:
        obj.log(priority, "Authentication", text)
    return any(p == "Warn" for p, _ in notes)


def make_session(account: AccountConfig, root: Any, obj: CommObj,
                 tokens: TokenSource | None) -> Session:
    cls = ImapSession if account.type.startswith("imap") else Pop3Session
    if tokens is None:
        return cls(account, root, obj)
    return cls(account, root, obj, tokens.get, renew=tokens.renew)


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
        """Run fn(connection) on the database writer (also for connection.py and the others)."""
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
        tokens = self.token_source(account) if account.oauth2 is not None else None
        if tokens is not None:
            try:     # a rotated refresh token the database did not take last time
                await call(tokens.store_unsaved)
            except Exception as exc:
                log.warning("oauth2: could not store the rotated refresh token",
                            account=account.name, error=type(exc).__name__)
        token_warned = False
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
                session = make_session(account, self.gw.config.root, obj, tokens)
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
                    token_warned |= token_notes(obj, tokens)
                    step_failed(obj, account, exc, errors)
                    break
                token_warned |= token_notes(obj, tokens)
                await self._db(lambda c: write_comm(c, comm))   # the Connection comes first
                try:
                    more, ok = await work_connection(self, account, session, obj, comm, result,
                                                     call, pool, budget - result.fetched,
                                                     progress, errors)
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
            self._close(account, comm, result, errors, warned=token_warned)

            def finished(c: Any) -> None:
                write_comm(c, comm)
                state.run_finished(c, account.name, result.status, result.fetched,
                                   "; ".join(errors)[:4000])

            await asyncio.shield(self._db(finished))
        # A failed run is an error in the log too: seen with log_level = "warning".
        emit = {"Failed": log.error, "Warning": log.warning}.get(result.status, log.info)
        emit("poll run finished", account=account.name, status=result.status,
             fetched=result.fetched, failed=result.failed, error=result.error or None)

    def _close(self, account: AccountConfig, comm: Comm, result: RunResult,
               errors: list[str], *, warned: bool = False) -> None:
        for o in comm.objects:
            if o.status == "Processing":
                o.close("Failed")
        conn_failed = any(o.type == "Connection" and o.status == "Failed" for o in comm.objects)
        if conn_failed:     # also a run a failed message ended (database down, fetch)
            status = "Failed"
        elif (warned or result.quarantined
              or any(o.status == "Warning" for o in comm.objects)):
            status = "Warning"
        else:
            status = "Successful"
        comm.close(status)  # type: ignore[arg-type]
        result.status = status
        if status == "Failed":
            metrics.POLLER_ERRORS.labels(account.name).inc()
        result.error = "; ".join(errors)

    async def _database_up(self, account: AccountConfig) -> bool:
        """After a 451: does the database take a write? If so, the failure was the message's."""
        try:
            await self._db(lambda c: state.touch_account(c, account.name))
        except Exception as exc:
            log.warning("database unavailable; the poll run ends", account=account.name,
                        error=repr(exc)[:300])
            return False
        return True
