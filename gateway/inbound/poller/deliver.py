"""The work list of one connection: fetched in batches, delivered in order.

A message is handed to Pipeline.deliver as an Envelope for the account's
pseudo-recipient and noted for removal (session.done) only after its commit;
one that fails is left on the server, and the caller decides whether the run
goes on (see run.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

from gateway import metrics
from gateway.commlog import Comm
from gateway.config import AccountConfig
from gateway.inbound.poller.session import (
    Fetched,
    MailboxError,
    Refused,
    RemoteMessage,
    Session,
    plural,
)
from gateway.model import Envelope

if TYPE_CHECKING:
    from gateway.inbound.poller.run import Poller, RunResult

BATCH_MESSAGES = 20
BATCH_BYTES = 8 * 1024 * 1024
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


def fetch_batches(todo: list[RemoteMessage], singly: set[str] | frozenset[str] = frozenset()
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


async def work_list(poller: Poller, account: AccountConfig, session: Session, comm: Comm,
                    result: RunResult, pool: ThreadPoolExecutor, todo: list[RemoteMessage],
                    handled: set[str], left: list[tuple[RemoteMessage, str]],
                    committed: list[RemoteMessage], singly: set[str], errors: list[str]
                    ) -> Literal["done", "stop", "closed", "lost"]:
    """Deliver the work list in order; the next batch is fetched while one is delivered.

    Only the session thread talks to the server (fetch batch n+1, later the
    removals in finish()); a message is noted for removal after its commit.
    "stop": the run ends here; "closed": the server closed the connection with
    its refusal of a message, the run goes on on a new one; "lost": the fetch of a
    batch failed (the connection lost, the stream out of step): the run ends as a
    failure of the connection, not of a message (an Error on the connection).
    """
    loop = asyncio.get_running_loop()
    batches = fetch_batches(todo, singly)

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
                rest = [m for b in batches[bi:] for m in b]
                session.log.log("Error", "Fetch", f"account {account.name}: {exc.reason}; "
                                + lost_text(account, committed, rest))
                errors.append(f"Fetch: {exc.reason}")
                return "lost"
            closed = any(isinstance(r, Refused) and r.closed for r in raws)
            pending = (fetch(batches[bi + 1]) if bi + 1 < len(batches) and not closed
                       else None)
            for m, raw in zip(batch, raws, strict=True):
                if poller.stopping:      # `serve` is stopping: end cleanly after a commit
                    return "closed" if closed else "done"
                if raw is None:          # vanished meanwhile (someone else removed it)
                    handled.add(m.key)
                    continue
                if isinstance(raw, Refused):
                    if raw.sure:
                        refused(account, comm, result, m, raw, errors)
                        left.append((m, f"refused by the server: {raw.answer}"[:2000]))
                    else:
                        singly.add(m.key)
                    continue
                done, why = await deliver_one(poller, account, session, comm, result, m, raw,
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


def lost_text(account: AccountConfig, committed: list[RemoteMessage],
              rest: list[RemoteMessage]) -> str:
    """What a fetch that lost the connection leaves: the messages stored before it
    (delivered; without the connection they are not removed yet) and those not fetched."""
    n = len(committed)
    stored = f"{plural(n, 'message')} fetched and stored before the loss"
    if n and account.after_fetch != "keep":
        stored += (" (still on the server: the next run finds "
                   + ("it again, recognises it as a duplicate and removes it)" if n == 1 else
                      "them again, recognises them as duplicates and removes them)"))
    if len(rest) == 1:
        left = f"message {rest[0].key} not fetched stays on the server; the next run fetches it"
    else:
        left = (f"{len(rest)} messages ({rest[0].key} to {rest[-1].key}) not fetched stay on "
                "the server; the next run fetches them")
    return f"{stored}; {left}"


def refused(account: AccountConfig, comm: Comm, result: RunResult, m: RemoteMessage,
            answer: Refused, errors: list[str]) -> None:
    """The server would not hand over one message: logged, counted, left for next run."""
    where = f"UID {m.uid}" if account.type.startswith("imap") else f"RETR {m.ref}"
    mobj = comm.obj("Message")
    mobj.log("Error", "Fetch", f"account {account.name}: message {m.key} ({where}): "
             f"the server refused to hand it over ({answer.answer}); left on the "
             "server and tried again by the next run; the run goes on with the other "
             "messages")
    mobj.close("Failed")
    metrics.POLLER_MESSAGE_FAILURES.labels(account.name).inc()
    result.failed += 1
    errors.append(f"Fetch: message {m.key}: {answer.answer}")


async def deliver_one(poller: Poller, account: AccountConfig, session: Session, comm: Comm,
                      result: RunResult, m: RemoteMessage, raw: bytes, errors: list[str]
                      ) -> tuple[Literal["done", "left", "stop"], str]:
    """Deliver one fetched message and note it for removal.

    "left": it failed for a reason of its own and stays for the next run;
    "stop": it failed while the database is down, which ends the run.
    """
    t0 = time.perf_counter()
    # In flight until committed: a graceful stop waits for it.
    outcome = await poller.gw.deliver_envelope(envelope_for(account, raw), comm)
    reply = outcome.replies[0]
    metrics.PIPELINE_SECONDS.labels("poller").observe(time.perf_counter() - t0)
    metrics.MESSAGES.labels("poller", "in",
                            "tempfail" if reply.temporary else outcome.action).inc()
    if not reply.ok:
        reason = f"{reply}; {outcome.detail}"
        up = await poller._database_up(account)
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
