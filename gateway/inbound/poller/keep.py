"""after_fetch = "keep": what the poller remembers of mail it leaves on the server.

IMAP keeps a folder position (UIDVALIDITY and the highest UID handled in
order) and, below it, the messages to fetch again (poller_retry: failed for a
reason of their own, or held while another client had them flagged \\Deleted)
and those left as oversized. POP3 keeps the UIDLs it has seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.commlog import CommObj
from gateway.config import AccountConfig
from gateway.inbound.poller import state
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.session import RemoteMessage, Session, plural

if TYPE_CHECKING:
    from gateway.inbound.poller.run import Poller


async def start_position(poller: Poller, account: AccountConfig, folder: str,
                         uidvalidity: int) -> tuple[int, int | None]:
    """IMAP keep: the UID the folder was handled up to (0 after a UIDVALIDITY change),
    and the UIDVALIDITY it was handled under when that changed (else None)."""
    pos = await poller._db(lambda c: state.folder_position(c, account.name, folder))
    if pos is None:
        return 0, None
    if pos[0] == uidvalidity:
        return pos[1], None
    return 0, pos[0]


async def new_uidvalidity(poller: Poller, account: AccountConfig, obj: CommObj, folder: str,
                          old: int, uidvalidity: int, listed: int) -> None:
    """IMAP keep, once the folder is listed under its new UIDVALIDITY: one Notice, and
    the folder starts again at UID 0. Every message is fetched again; those stored
    before (the same bytes, Message-ID and account) are dropped as duplicates."""
    obj.log("Notice", "UIDVALIDITY", f"{folder}: UIDVALIDITY changed from {old} to "
            f"{uidvalidity}; {plural(listed, 'message')} seen again, duplicates are dropped")
    # The old UIDs name nothing now: what was remembered under them (retries,
    # oversized messages) goes; the messages are listed again under new UIDs.
    await poller._db(lambda c: state.new_uidvalidity(c, account.name, folder, uidvalidity))


async def below_mark(poller: Poller, account: AccountConfig, session: Session, obj: CommObj,
                     call: Any, folder: str, uidvalidity: int, below: int
                     ) -> tuple[list[RemoteMessage], int]:
    """IMAP keep: the messages below the folder position to look at again: those
    that failed for a reason of their own, those held while another client had
    them flagged \\Deleted, and those left as oversized (fetched once they fit
    max_message_size; the others are returned too, so the run counts them as
    still waiting, and those gone from the server leave the oversized list).
    Also: how many of them carry \\Deleted now (they are not fetched)."""
    def read(c: Any) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
        return (state.retries(c, account.name, folder),
                state.oversized_sizes(c, account.name, folder))

    failed, rows = await poller._db(read)
    again: list[RemoteMessage] = []
    failures: set[str] = set()   # the others were held while flagged \\Deleted
    for key, size, attempts in failed:
        uv, _, uid = key.partition(":")
        if uv == str(uidvalidity) and uid.isdigit() and int(uid) <= below:
            again.append(RemoteMessage(key=key, ref=uid, size=size, uid=int(uid)))
            if attempts > 0:
                failures.add(key)
    retried = len(again)
    for key, size in rows:
        uv, _, uid = key.partition(":")
        if uv != str(uidvalidity) or not uid.isdigit() or int(uid) > below:
            continue     # another UIDVALIDITY, or above the mark (listed anyway)
        again.append(RemoteMessage(key=key, ref=uid, size=size, uid=int(uid)))
    # Their flags and sizes now: one another client flagged \\Deleted meanwhile is not
    # fetched (a retry gone from the server is fetched as vanished, which forgets it).
    now: dict[int, RemoteMessage] = {}
    if again and isinstance(session, ImapSession):
        now = await call(session.lookup, sorted({m.uid for m in again}))
    big = again[retried:]
    gone = [m.key for m in big if m.uid not in now]
    if gone:
        await poller._db(lambda c: state.drop_oversized(c, account.name, folder, gone))
        obj.log("Info", "Oversized", f"{plural(len(gone), 'message')} left as oversized "
                f"{'is' if len(gone) == 1 else 'are'} no longer on the server: no longer "
                "listed")
    again = again[:retried] + [now[m.uid] for m in big if m.uid in now]
    flagged = {m.key for m in again if m.uid in now and now[m.uid].deleted}
    n_failed = len(failures - flagged)
    if n_failed:
        obj.log("Info", "Retry", f"{plural(n_failed, 'message')} that failed before: "
                "trying " + ("it" if n_failed == 1 else "them") + " again")
    n_unheld = sum(1 for m in again[:retried]
                   if m.key not in failures and m.key not in flagged)
    if n_unheld:
        obj.log("Info", "Deleted", f"{plural(n_unheld, 'message')} another client had "
                "flagged \\Deleted no longer " + ("carries the flag: fetching it" if n_unheld == 1
                                                   else "carry the flag: fetching them"))
    fit = sum(1 for m in again[retried:]
              if m.key not in flagged and not account.oversized(m.size))
    if fit > 0:
        obj.log("Info", "Oversized", f"{plural(fit, 'message')} left as oversized "
                f"{'fits' if fit == 1 else 'fit'} {account.size_limit_text} now: fetching "
                + ("it" if fit == 1 else "them"))
    out = {m.key: now.get(m.uid, m) for m in again if m.key not in flagged}
    return sorted(out.values(), key=lambda m: m.uid), len(flagged)


async def note_position(poller: Poller, account: AccountConfig, folder: str, uidvalidity: int,
                        mark: int, listed: tuple[RemoteMessage, ...],
                        held: list[RemoteMessage], handled: set[str],
                        left: list[tuple[RemoteMessage, str]], again: set[str]) -> None:
    """IMAP keep, after a connection's work: remember how far every message is handled
    (UIDs in order); a message that failed stays below the mark.

    A message left for the next run is remembered in poller_retry, so the mark
    moves past it and the messages after it are not fetched again. So is a
    message flagged \\Deleted by another client: fetched should the flag be taken
    back.
    """
    left_keys = {m.key for m, _ in left}
    held_keys = {m.key for m in held}
    position = mark
    for m in listed:
        if m.key not in handled and m.key not in left_keys and m.key not in held_keys:
            break
        position = m.uid
    done_again = [k for k in again if k in handled]

    def note(c: Any) -> None:
        for m, reason in left:
            state.record_retry(c, account.name, folder, m.key, m.size, reason)
        state.hold_deleted(c, account.name, folder, [(m.key, m.size) for m in held])
        state.drop_retries(c, account.name, folder, done_again)
        if position != mark:
            state.set_folder_position(c, account.name, folder, uidvalidity, position)
    if left or held or done_again or position != mark:
        await poller._db(note)


async def remember_seen(poller: Poller, account: AccountConfig, todo: list[RemoteMessage],
                        handled: set[str], listed: tuple[RemoteMessage, ...]) -> None:
    """POP3 keep, after a connection's work: the UIDLs handled are seen; those no
    longer listed are forgotten."""
    fresh = [m.key for m in todo if m.key in handled]
    present = [m.key for m in listed]

    def remember(c: Any) -> None:
        state.add_seen(c, account.name, fresh)
        state.forget_seen(c, account.name, present)
    await poller._db(remember)
