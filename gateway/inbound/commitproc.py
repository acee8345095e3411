"""The commit process: one process runs the inbound commit for every LMTP process.

With `[store] commit_process = true` (the default) `deskgate serve` forks one more
process before the LMTP workers. Each LMTP process (the main one and every
pre-forked worker) prepares a message on its own event loop (parse, decrypt,
filters, ...) and sends the prepared message over a socketpair to the commit
process, whose group-commit writer runs the commit stages (dedupe, follow-up,
route, store, hand-off, record, auto-response) for the messages of all LMTP
processes in one transaction per batch. The reply still waits for the commit
that holds the message: the commit process answers each request only after it.

Why a process: the writer's Python (building rows, the communication log) and
the event loop's Python (protocol, parsing) no longer take turns on one GIL, and
with several LMTP workers on SQLite their messages share one transaction and one
fsync instead of queueing on the database's single write lock.

The wire (frames over socketpairs made by `deskgate serve` before it forks, a
prepared message as tuples of its fields) is gateway.inbound.commitwire's; this
module is the LMTP process's side (CommitClient), gateway.inbound.commitserver the
commit process's (CommitServer, run_commit_process). A failed commit's reply
carries a `kind`: "temporary" (the database is down or locked: the LMTP process answers
4xx), "integrity" or "error" (the LMTP process quarantines the message, as it does
for a commit that failed in its own writer).

If the commit process is gone, every message waiting for it gets a temporary
failure (its commit may or may not have happened; the MTA's retry is answered as a
duplicate if it did) and the LMTP process commits in its own writer until the main
process has started a new commit process (gateway.supervise_commit, a fresh interpreter)
and handed it new socketpairs: its own directly, each worker's over the worker's control socket.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Callable
from typing import Any, cast

import structlog

from gateway.commlog import Comm
from gateway.inbound.commitserver import CommitHost, CommitServer, run_commit_process
from gateway.inbound.commitwire import (
    READY,
    RESULT_FIELDS,
    comm_in,
    comm_out,
    fingerprint,
    frame,
    pack,
    portable,
    split,
    unpack,
)
from gateway.model import MessageContext

__all__ = [   # the wire and the commit process's side, importable from here as before
    "READY", "RESULT_FIELDS", "CommitClient", "CommitHost", "CommitServer",
    "CommitUnavailable", "RemoteCommitError", "comm_in", "comm_out", "failed_temporarily",
    "fingerprint", "frame", "pack", "portable", "run_commit_process", "split", "unpack",
]

log = structlog.get_logger(__name__)


class CommitUnavailable(Exception):
    """The commit process went away while the message waited for it."""


class RemoteCommitError(Exception):
    """The commit process could not commit the message."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind

    @property
    def temporary(self) -> bool:
        return self.kind == "temporary"


def failed_temporarily(exc: BaseException) -> bool:
    """A commit that failed in a way a retry can fix (4xx, never a quarantine)."""
    return (isinstance(exc, CommitUnavailable)
            or (isinstance(exc, RemoteCommitError) and exc.temporary))


# ---------------------------------------------------------------- LMTP process side

class CommitClient(asyncio.Protocol):
    """An LMTP process's connection to the commit process (on its event loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.buf = bytearray()
        self.next_id = 0
        self.up = False
        self.closing = False
        self.on_lost: Callable[[], None] = lambda: None    # after an unexpected loss
        self._out: list[bytes] = []     # requests of this loop iteration, one write

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self, sock=self.sock)
        self.up = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.up = False
        waiting = list(self.pending.values())
        self.pending.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(CommitUnavailable("the commit process went away"))
        if not self.closing:
            log.error("commit process gone; this process commits in its own writer until "
                      "the main process has started a new one", waiting=len(waiting))
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for rid, body in split(self.buf):
            fut = self.pending.pop(rid, None)
            if fut is None or fut.done():
                continue
            try:
                # from the commit process over a socketpair made before the fork
                ok, payload = pickle.loads(body)  # noqa: S301
                result = (dict(zip(RESULT_FIELDS, payload, strict=True)) if ok
                          else RemoteCommitError(*payload))
            except Exception as exc:
                fut.set_exception(RemoteCommitError("error", f"unreadable reply: {exc!r}"))
                continue
            if isinstance(result, RemoteCommitError):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        if self.closing and not self.pending:
            self.close()            # retired, and the last answer is in

    # requests
    async def commit(self, ctx: MessageContext, comm: Comm) -> dict[str, Any]:
        """Commit a prepared message in the commit process; its result fields."""
        if not self.up or self.transport is None:
            raise CommitUnavailable("the commit process is not connected")
        self.next_id += 1
        rid = self.next_id
        data = frame(rid, ("commit", pack(ctx, comm)))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self._send(data)
        return await fut

    def _send(self, data: bytes) -> None:
        """Queue a request; the requests of one event-loop iteration go out in one
        write (one system call and one wake-up of the commit process, not one each)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._write_out)
        self._out.append(data)

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def log_connection(self, comm: Comm) -> bool:
        """Queue an LMTP connection record; False when the commit process is gone."""
        if not self.up or self.transport is None:
            return False
        self._send(frame(0, ("comm", comm_out(comm))))
        return True

    def retire(self) -> None:
        """Take no more requests; close once the requests sent have their answers
        (or the commit process goes away)."""
        self.closing = True
        self.up = False
        if not self.pending:
            self.close()

    def close(self) -> None:
        self.closing = True
        self.up = False
        if self.transport is not None:
            if self._out:           # queued this loop iteration (connection records)
                self._write_out()   # the transport sends them before it closes
            self.transport.close()
        else:
            self.sock.close()
