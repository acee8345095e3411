"""One connection of a poll run: list, sort out what to fetch, deliver, remove.

Oversized messages stay on the server (an Error once, remembered in
poller_oversized); messages another client flagged \\Deleted are left alone;
what was committed is removed (or moved, or remembered in keep mode) when the
connection finishes, or by the next connection should the server close this
one.
"""

from __future__ import annotations

import email.parser
import email.policy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.commlog import Comm, CommObj
from gateway.config import AccountConfig
from gateway.inbound.poller import keep as keep_mode
from gateway.inbound.poller import state
from gateway.inbound.poller.deliver import work_list
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.session import MailboxError, RemoteMessage, Session, plural

if TYPE_CHECKING:
    from gateway.inbound.poller.run import Poller, RunResult

STEP_KEY = {"dns": "DNS", "tcp": "Connection", "tls": "TLS", "auth": "Authentication",
            "folder": "Folder", "fetch": "Fetch", "remove": "Remove"}


@dataclass
class Progress:
    """What the connections of one run hand on to the next connection."""

    done: set[str] = field(default_factory=set)     # stable keys handled or left: skipped
    singly: set[str] = field(default_factory=set)   # fetched one at a time (see Refused.sure)
    carry: set[str] = field(default_factory=set)    # committed, to remove on the next one
    big: set[str] = field(default_factory=set)      # oversized, left on the server


def step_failed(obj: CommObj, account: AccountConfig, exc: MailboxError,
                errors: list[str]) -> None:
    """A step of the mailbox session failed: an Error on the connection, which ends
    Failed, and the run's error list."""
    obj.log("Error", STEP_KEY[exc.step], f"account {account.name}: {exc.reason}")
    obj.close("Failed")
    errors.append(f"{STEP_KEY[exc.step]}: {exc.reason}")


async def work_connection(poller: Poller, account: AccountConfig, session: Session,
                          obj: CommObj, comm: Comm, result: RunResult, call: Any,
                          pool: ThreadPoolExecutor, budget: int, progress: Progress,
                          errors: list[str]) -> tuple[bool, bool]:
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
    changed_from: int | None = None
    if keep and imap:
        after_uid, changed_from = await keep_mode.start_position(poller, account, folder,
                                                                 uidvalidity)
    elif keep:
        seen = await poller._db(lambda c: state.seen_uidls(c, account.name))

    try:
        listing = await call(session.listing, after_uid=after_uid)
    except MailboxError as exc:
        step_failed(obj, account, exc, errors)
        await call(session.abort)
        return False, False

    if changed_from is not None:
        await keep_mode.new_uidvalidity(poller, account, obj, folder, changed_from,
                                        uidvalidity, len(listing.messages))
    messages = listing.messages
    held: list[RemoteMessage] = []   # keep: flagged \\Deleted by another client
    if imap and not keep:
        messages = await flagged(poller, account, session, obj, messages)
    elif imap:
        held = [m for m in messages if m.deleted]
        messages = tuple(m for m in messages if not m.deleted)
    for m in listing.messages:     # committed on a connection the server closed
        if m.key in progress.carry:
            session.done(m)

    # Oversized messages stay on the server (an Error once); the rest is the work list.
    size_limit = account.max_message_size
    known_big = await poller._db(lambda c: state.known_oversized(c, account.name, folder))
    big: list[RemoteMessage] = []
    todo: list[RemoteMessage] = []
    more = False
    again: set[str] = set()
    if keep and imap:   # below the mark: failed before, held, or oversized before
        try:
            todo, n_flagged = await keep_mode.below_mark(poller, account, session, obj, call,
                                                         folder, uidvalidity, after_uid or 0)
        except MailboxError as exc:
            step_failed(obj, account, exc, errors)
            await call(session.abort)
            return False, False
        todo = [m for m in todo if m.key not in progress.done]
        again = {m.key for m in todo}
        big = [m for m in todo if account.oversized(m.size)]   # a held one may be too
        todo = [m for m in todo if not account.oversized(m.size)]
        todo, more = todo[:limit], len(todo) > limit
        if held or n_flagged:
            obj.log("Info", "Deleted", f"{plural(len(held) + n_flagged, 'message')} flagged "
                    "\\Deleted by another client: left alone (not fetched while they "
                    "carry the flag)")
    for m in messages:
        if account.oversized(m.size):
            big.append(m)
        elif m.key in seen or m.key in progress.done:
            continue
        elif len(todo) < limit:
            todo.append(m)
        else:
            more = True
    for m in big:
        if m.key not in known_big:
            await oversized(poller, account, session, obj, call, folder, m)
    big_keys = [m.key for m in big]
    progress.big.update(big_keys)
    result.oversized = len(progress.big)    # each once, however many connections saw it
    if big_keys:
        await poller._db(lambda c: state.touch_oversized(c, account.name, folder, big_keys,
                                                         size_limit))
    if not (keep and imap):   # a full listing: forget what left the server
        present = [m.key for m in listing.messages]
        await poller._db(lambda c: state.forget_oversized(c, account.name, folder, present))

    handled: set[str] = set(big_keys)
    left: list[tuple[RemoteMessage, str]] = []   # failed on their own: next run
    committed: list[RemoteMessage] = []
    outcome = await work_list(poller, account, session, comm, result, pool, todo, handled,
                              left, committed, progress.singly, errors)
    ok = outcome not in ("stop", "lost")
    fetched_big = [m.key for m in todo if m.key in known_big and m.key in handled]
    if fetched_big:   # the limit was raised: no longer left on the server
        await poller._db(lambda c: state.drop_oversized(c, account.name, folder, fetched_big))
    # Skipped on the next connection of this run; a message number (POP3 without
    # UIDL) names another message there, so only stable keys are carried over.
    # A message left is not tried again by this run either.
    left_keys = {m.key for m, _ in left}
    progress.done.update(m.key for m in (*listing.messages, *todo)   # todo: below the mark
                         if m.stable and (m.key in handled or m.key in left_keys))

    # Keep mode: remember how far every message is handled (UIDs in order) or
    # which UIDLs are; a message that failed stays below the mark.
    if keep and imap:
        await keep_mode.note_position(poller, account, folder, uidvalidity, after_uid or 0,
                                      listing.messages, held, handled, left, again)
    elif keep:
        await keep_mode.remember_seen(poller, account, todo, handled, listing.messages)

    if outcome == "closed":
        # Removing needs a connection: the next one removes what was committed
        # here (should the run end first, the next run's dedupe recognises it).
        progress.carry.update(m.key for m in committed)
        obj.log("Notice", "Connection", f"the server closed the connection after "
                f"refusing a message; {plural(len(committed), 'message')} committed on it, "
                "reconnecting for the others")
        obj.close("Warning")
        return True, True
    if outcome == "lost":
        # Nothing more can be said on it: what was committed stays on the server until
        # the next run, whose dedupe recognises it (a connection failure, the run ends).
        await call(session.abort)
        obj.close("Failed")
        return False, False
    marked = session.marked() if isinstance(session, ImapSession) else []
    if marked:   # remembered first: a message flagged and left is known as ours
        await poller._db(lambda c: state.add_seen(c, account.name, marked))
    try:
        # Also after a failed message: what was committed before it is removed now.
        await call(session.finish)
    except MailboxError as exc:
        step_failed(obj, account, exc, errors)
        return False, False
    progress.carry.clear()
    if marked and isinstance(session, ImapSession):
        unexpunged = session.unexpunged
        await poller._db(lambda c: state.forget_seen(c, account.name, unexpunged))
    if not ok:
        obj.close("Failed")
        return False, False
    obj.log("Info", "Summary", f"{plural(len(todo), 'message')} processed on this connection"
            + (f", {len(left)} left on the server to try again" if left else "")
            + (", more waiting" if more else ""))
    obj.close("Warning" if left else "Successful")
    return more, True


async def flagged(poller: Poller, account: AccountConfig, session: Session, obj: CommObj,
                  messages: tuple[RemoteMessage, ...]) -> tuple[RemoteMessage, ...]:
    """IMAP delete/move: the messages to consider, without those flagged \\Deleted.

    A flagged message is another client's (it is left alone) or ours, committed
    and flagged by an earlier connection that could not expunge it (remembered
    in the database): that one is expunged with this connection's.
    """
    keys = [m.key for m in messages if m.deleted]

    def prune(c: Any) -> set[str]:
        state.forget_seen(c, account.name, keys)
        return state.seen_uidls(c, account.name)

    ours = await poller._db(prune)
    foreign = 0
    for m in messages:
        if not m.deleted:
            continue
        if m.key in ours and isinstance(session, ImapSession):
            session.waiting(m)
        else:
            foreign += 1
    if foreign:
        obj.log("Info", "Deleted", f"{plural(foreign, 'message')} flagged \\Deleted by another "
                "client: left alone (neither fetched nor expunged)")
    return tuple(m for m in messages if not m.deleted)


async def oversized(poller: Poller, account: AccountConfig, session: Session, obj: CommObj,
                    call: Any, folder: str, m: RemoteMessage) -> None:
    """An oversized message seen for the first time: an Error naming it, and a row in
    poller_oversized (`deskgate fetch --list-oversized`)."""
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
    await poller._db(lambda c: state.record_oversized(c, account.name, folder, m.key, m.size,
                                                      account.max_message_size,
                                                      subject[:1000], sender[:1000], mid[:998]))
