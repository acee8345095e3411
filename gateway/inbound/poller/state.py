"""What the poller remembers in the database: keep-mode positions, oversized
messages, the status of each account and rotated OAuth2 refresh tokens.

Plain functions of a Connection, so they run inside BatchWriter jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.store.tables import (
    PollerAccount,
    PollerFolder,
    PollerOversized,
    PollerRetry,
    PollerSeen,
    PollerToken,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _upsert(conn: Connection, table: Any, keys: list[str], values: dict[str, Any]) -> None:
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = ins(table).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}))


# ---------------------------------------------------------------- IMAP keep


def folder_position(conn: Connection, account: str, folder: str) -> tuple[int, int] | None:
    """(uidvalidity, last committed uid) or None when the folder was never read."""
    row = conn.execute(select(PollerFolder.uidvalidity, PollerFolder.last_uid).where(
        PollerFolder.account == account, PollerFolder.folder == folder)).first()
    return (int(row[0]), int(row[1])) if row else None


def set_folder_position(conn: Connection, account: str, folder: str, uidvalidity: int,
                        last_uid: int) -> None:
    _upsert(conn, PollerFolder, ["account", "folder"],
            {"account": account, "folder": folder, "uidvalidity": uidvalidity,
             "last_uid": last_uid, "changed": utcnow()})


def new_uidvalidity(conn: Connection, account: str, folder: str, uidvalidity: int) -> None:
    """The folder was recreated (keep mode): start it at UID 0 of the new
    UIDVALIDITY and drop the retries and oversized messages of any other."""
    mine = f"{uidvalidity}:"
    for table in (PollerRetry, PollerOversized):
        conn.execute(delete(table).where(table.account == account, table.folder == folder,
                                         ~table.key.startswith(mine, autoescape=True)))
    set_folder_position(conn, account, folder, uidvalidity, 0)


# ---------------------------------------------------------------- committed, still on the server
# POP3 keep: the UIDLs committed. IMAP delete/move: the keys ("<uidvalidity>:<uid>")
# of messages committed and flagged \Deleted whose EXPUNGE waits (no UIDPLUS and
# another client's message flagged too); they are not fetched again.


def seen_uidls(conn: Connection, account: str) -> set[str]:
    return set(conn.execute(select(PollerSeen.uidl).where(PollerSeen.account == account))
               .scalars())


def add_seen(conn: Connection, account: str, uidls: Iterable[str]) -> None:
    now = utcnow()
    rows = [{"account": account, "uidl": u, "created": now} for u in uidls]
    if rows:
        ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(ins(PollerSeen).values(rows).on_conflict_do_nothing())


def forget_seen(conn: Connection, account: str, present: Iterable[str]) -> None:
    """Drop remembered keys that are not in `present` (the list stays small)."""
    keep = set(present)
    gone = [u for u in seen_uidls(conn, account) if u not in keep]
    for i in range(0, len(gone), 500):
        conn.execute(delete(PollerSeen).where(PollerSeen.account == account,
                                              PollerSeen.uidl.in_(gone[i:i + 500])))


# ---------------------------------------------------------------- oversized


@dataclass(frozen=True)
class Oversized:
    account: str
    folder: str
    key: str
    size: int
    limit: int | None     # the max_message_size it was left under (None: not known)
    subject: str
    sender: str
    message_id: str
    first_seen: datetime
    last_seen: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "folder": self.folder, "key": self.key,
                "size": self.size, "limit": self.limit, "subject": self.subject,
                "from": self.sender, "message_id": self.message_id, "first_seen": self.first_seen,
                "last_seen": self.last_seen}


def known_oversized(conn: Connection, account: str, folder: str) -> set[str]:
    return set(conn.execute(select(PollerOversized.key).where(
        PollerOversized.account == account, PollerOversized.folder == folder)).scalars())


def record_oversized(conn: Connection, account: str, folder: str, key: str, size: int,
                     limit: int, subject: str, sender: str, message_id: str) -> None:
    now = utcnow()
    _upsert(conn, PollerOversized, ["account", "folder", "key"],
            {"account": account, "folder": folder, "key": key, "size": size,
             "size_limit": limit, "subject": subject, "sender": sender,
             "message_id": message_id, "first_seen": now, "last_seen": now})


def touch_oversized(conn: Connection, account: str, folder: str, keys: Iterable[str],
                    limit: int) -> None:
    """Seen again, over `limit` (the max_message_size now)."""
    keys = list(keys)
    for i in range(0, len(keys), 500):
        conn.execute(update(PollerOversized).where(
            PollerOversized.account == account, PollerOversized.folder == folder,
            PollerOversized.key.in_(keys[i:i + 500])).values(last_seen=utcnow(),
                                                              size_limit=limit))


def oversized_sizes(conn: Connection, account: str, folder: str) -> list[tuple[str, int]]:
    """(key, size) of the messages of one account's folder left as oversized."""
    rows = conn.execute(select(PollerOversized.key, PollerOversized.size).where(
        PollerOversized.account == account, PollerOversized.folder == folder)).all()
    return [(str(r[0]), int(r[1])) for r in rows]


def _drop_keys(conn: Connection, table: type[PollerOversized] | type[PollerRetry],
               account: str, folder: str, keys: Iterable[str]) -> None:
    """Delete the rows of `keys` of one account's folder, 500 keys per statement."""
    keys = list(keys)
    for i in range(0, len(keys), 500):
        conn.execute(delete(table).where(table.account == account, table.folder == folder,
                                         table.key.in_(keys[i:i + 500])))


def drop_oversized(conn: Connection, account: str, folder: str, keys: Iterable[str]) -> None:
    """Fetched after all (the limit was raised), or gone from the server."""
    _drop_keys(conn, PollerOversized, account, folder, keys)


def forget_oversized(conn: Connection, account: str, folder: str,
                     present: Iterable[str]) -> None:
    """Oversized messages someone removed from the server leave the list."""
    keep = set(present)
    drop_oversized(conn, account, folder,
                   [k for k in known_oversized(conn, account, folder) if k not in keep])


def list_oversized(conn: Connection, account: str | None = None) -> list[Oversized]:
    q = select(PollerOversized).order_by(PollerOversized.account, PollerOversized.first_seen)
    if account:
        q = q.where(PollerOversized.account == account)
    return [Oversized(r.account, r.folder, r.key, r.size, r.size_limit, r.subject, r.sender,
                      r.message_id, r.first_seen, r.last_seen) for r in conn.execute(q).all()]


# ---------------------------------------------------------------- IMAP keep: retries
# Below the folder position: messages that failed for a reason of their own, and
# messages passed over while another client had them flagged \\Deleted.


def record_retry(conn: Connection, account: str, folder: str, key: str, size: int,
                 reason: str) -> None:
    """A message failed for a reason of its own: tried again by the next runs."""
    now = utcnow()
    where = (PollerRetry.account == account, PollerRetry.folder == folder,
             PollerRetry.key == key)
    if conn.execute(select(PollerRetry.key).where(*where)).first() is None:
        conn.execute(insert(PollerRetry).values(account=account, folder=folder, key=key,
                                                size=size, attempts=1, reason=reason,
                                                first_failed=now, last_failed=now))
    else:
        conn.execute(update(PollerRetry).where(*where).values(
            attempts=PollerRetry.attempts + 1, reason=reason, last_failed=now))


def hold_deleted(conn: Connection, account: str, folder: str,
                 messages: Iterable[tuple[str, int]]) -> None:
    """(key, size) of messages passed over while another client has them flagged
    \\Deleted: looked at again by the next runs (0 attempts: none failed)."""
    known = {k for k, _, _ in retries(conn, account, folder)}
    now = utcnow()
    rows = [{"account": account, "folder": folder, "key": k, "size": size, "attempts": 0,
             "reason": "flagged \\Deleted by another client", "first_failed": now,
             "last_failed": now} for k, size in messages if k not in known]
    if rows:    # executemany: one VALUES list of them all could pass a statement's
        conn.execute(insert(PollerRetry), rows)   # parameter limit (65535 on PostgreSQL)


def retries(conn: Connection, account: str, folder: str) -> list[tuple[str, int, int]]:
    """(key, size, attempts) of the messages waiting to be tried again."""
    rows = conn.execute(select(PollerRetry.key, PollerRetry.size, PollerRetry.attempts).where(
        PollerRetry.account == account, PollerRetry.folder == folder)).all()
    return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def drop_retries(conn: Connection, account: str, folder: str, keys: Iterable[str]) -> None:
    """Fetched after all, or gone from the server."""
    _drop_keys(conn, PollerRetry, account, folder, keys)


# ---------------------------------------------------------------- account status


@dataclass(frozen=True)
class AccountStatus:
    account: str
    status: str               # Successful | Warning | Failed | Processing | "" (never ran)
    last_start: datetime | None
    last_end: datetime | None
    last_fetched: int
    last_error: str
    last_error_at: datetime | None
    last_success: datetime | None
    communication_id: int | None
    next_attempt: datetime | None = None   # when serve polls it next (None: not planned)

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "status": self.status, "last_start": self.last_start,
                "last_end": self.last_end, "last_fetched": self.last_fetched,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "last_success": self.last_success, "communication_id": self.communication_id,
                "next_attempt": self.next_attempt}


def account_status(conn: Connection, account: str | None = None) -> list[AccountStatus]:
    """The status of one or all accounts that ever ran (another module shows it)."""
    q = select(PollerAccount).order_by(PollerAccount.account)
    if account:
        q = q.where(PollerAccount.account == account)
    return [AccountStatus(r.account, r.status, r.last_start, r.last_end, r.last_fetched,
                          r.last_error, r.last_error_at, r.last_success, r.communication_id,
                          r.next_attempt)
            for r in conn.execute(q).all()]


def close_interrupted(conn: Connection, account: str) -> int | None:
    """A run left "Processing" (its process was killed) is closed as Failed.

    Called by the holder of the account lock, so no other run can be live.
    Returns the id of the communication that was closed.
    """
    from gateway.commlog import Comm, write_comm

    row = conn.execute(select(PollerAccount.status, PollerAccount.communication_id).where(
        PollerAccount.account == account)).first()
    if row is None or row[0] != "Processing" or row[1] is None:
        return None
    comm = Comm("Incoming", "", account, id=int(row[1]))
    obj = comm.obj("Connection")
    obj.log("Error", "Run", f"account {account}: this run was interrupted (the process "
            "ended before it finished); messages not removed are fetched again and "
            "recognised as duplicates")
    obj.close("Failed")
    comm.close("Failed")
    write_comm(conn, comm)
    return comm.id


def run_started(conn: Connection, account: str, comm_id: int | None) -> None:
    row = conn.execute(select(PollerAccount.account).where(
        PollerAccount.account == account)).first()
    values = {"status": "Processing", "last_start": utcnow(), "last_end": None,
              "communication_id": comm_id}
    if row is None:
        conn.execute(insert(PollerAccount).values(account=account, last_fetched=0,
                                                  last_error="", **values))
    else:
        conn.execute(update(PollerAccount).where(PollerAccount.account == account)
                     .values(**values))


def touch_account(conn: Connection, account: str) -> None:
    """A write that tells whether the database takes writes now (after a 451)."""
    conn.execute(update(PollerAccount).where(PollerAccount.account == account)
                 .values(status="Processing"))


def run_finished(conn: Connection, account: str, status: str, fetched: int,
                 error: str) -> None:

    now = utcnow()
    values: dict[str, Any] = {"status": status, "last_end": now, "last_fetched": fetched}
    if error:
        values.update(last_error=error, last_error_at=now)
    else:
        values.update(last_error="", last_success=now)
    conn.execute(update(PollerAccount).where(PollerAccount.account == account).values(**values))


def set_next_attempt(conn: Connection, account: str, when: datetime | None) -> None:
    """When `serve` polls the account next, for `fetch --status` (after its run)."""
    conn.execute(update(PollerAccount).where(PollerAccount.account == account)
                 .values(next_attempt=when))


# ---------------------------------------------------------------- OAuth2


def stored_refresh_token(conn: Connection, account: str) -> tuple[str, str] | None:
    """(refresh_token, fingerprint of the config token it replaced) or None."""
    row = conn.execute(select(PollerToken.refresh_token, PollerToken.config_fingerprint)
                       .where(PollerToken.account == account)).first()
    return (row[0], row[1]) if row else None


def store_refresh_token(conn: Connection, account: str, token: str, fingerprint: str) -> None:
    _upsert(conn, PollerToken, ["account"], {"account": account, "refresh_token": token,
                                             "config_fingerprint": fingerprint,
                                             "changed": utcnow()})
