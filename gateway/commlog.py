"""Communication log (OTOBO's model): communication → objects → entries.

A door builds a `Comm` in memory while it works and writes it with
`write_comm(conn, comm)` inside the same transaction as the article it produced,
so logging costs one batch of inserts and never a commit of its own. Long-lived
exchanges (a poll run) can `open_comm` first and `finish_comm` at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection, insert, update

from gateway.commlog_names import PRIORITIES as PRIORITIES
from gateway.commlog_names import Priority
from gateway.commlog_names import Status as Status
from gateway.store import Deferred, Prepared
from gateway.store.tables import CommEntry, CommObject, Communication


def now() -> datetime:
    return datetime.now(UTC)


def storable(text: str) -> str:
    """Text PostgreSQL takes: NUL and lone surrogates (bytes a command-line argument
    could not decode) become U+FFFD. A refused log entry fails the quarantine's
    transaction too, so the message would be answered 4xx on every attempt."""
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


@dataclass(slots=True)
class Entry:
    priority: Priority
    key: str
    value: str
    time: datetime = field(default_factory=now)


@dataclass
class CommObj:
    """A Connection or Message object with its entries."""

    type: Literal["Connection", "Message"]
    status: Status = "Processing"
    start: datetime = field(default_factory=now)
    end: datetime | None = None
    article_id: int | None = None
    outbound_id: int | None = None
    entries: list[Entry] = field(default_factory=list)
    id: int | None = None

    def log(self, priority: Priority, key: str, value: object) -> None:
        text = str(value)
        if "\x00" in text or not text.isascii():
            text = storable(text)
        self.entries.append(Entry(priority, key, text))

    def close(self, status: Status) -> None:
        self.status = status
        self.end = now()


@dataclass
class Comm:
    direction: Literal["Incoming", "Outgoing"]
    account_type: str
    account: str = ""
    status: Status = "Processing"
    start: datetime = field(default_factory=now)
    end: datetime | None = None
    objects: list[CommObj] = field(default_factory=list)
    id: int | None = None

    def obj(self, type_: Literal["Connection", "Message"]) -> CommObj:
        o = CommObj(type_)
        self.objects.append(o)
        return o

    def close(self, status: Status | None = None) -> None:
        """End it; without a status, derive one from the objects (worst wins)."""
        if status is None:
            statuses = {o.status for o in self.objects}
            status = ("Failed" if "Failed" in statuses else
                      "Warning" if "Warning" in statuses or "Processing" in statuses else
                      "Successful")
        self.status = status
        self.end = now()


_INS_COMM = Prepared(insert(Communication).returning(Communication.id), "communication.insert")
_INS_OBJ = Prepared(insert(CommObject).returning(CommObject.id), "comm_object.insert")
_INS_ENTRY = Prepared(insert(CommEntry), "comm_entry.insert")


def _comm_row(comm: Comm) -> dict[str, object]:
    return {"transport": "Email", "direction": comm.direction, "status": comm.status,
            "account_type": comm.account_type, "account": comm.account, "start": comm.start,
            "end": comm.end}


def _obj_row(o: CommObj, comm_id: int | None) -> dict[str, object]:
    return {"communication_id": comm_id, "type": o.type, "status": o.status, "start": o.start,
            "end": o.end, "article_id": o.article_id, "outbound_id": o.outbound_id}


def _take_entries(o: CommObj, comm_id: int | None) -> list[dict[str, object]]:
    """The object's new entries as rows (it must have its id); they leave the object."""
    rows: list[dict[str, object]] = [
        {"object_id": o.id, "communication_id": comm_id, "priority": e.priority, "key": e.key,
         "value": e.value, "time": e.time} for e in o.entries]
    o.entries = []
    return rows


def write_comm(conn: Connection, comm: Comm) -> int:
    """Insert (or update, when opened before) the communication with its new objects."""
    if comm.id is None:
        comm.id = _INS_COMM.execute(conn, _comm_row(comm))
    else:
        conn.execute(update(Communication).where(Communication.id == comm.id)
                     .values(status=comm.status, end=comm.end))
    entries: list[dict[str, object]] = []
    for o in comm.objects:
        if o.id is None:
            o.id = _INS_OBJ.execute(conn, _obj_row(o, comm.id))
        else:
            conn.execute(update(CommObject).where(CommObject.id == o.id).values(
                status=o.status, end=o.end, article_id=o.article_id,
                outbound_id=o.outbound_id))
        entries += _take_entries(o, comm.id)
    _INS_ENTRY.executemany(conn, entries)
    return comm.id


def _flush_comms(conn: Connection, comms: list[Comm]) -> None:
    """Communications, their objects and entries: three statements for a whole batch."""
    for comm, cid in zip(comms, _INS_COMM.insert_rows(conn, [_comm_row(c) for c in comms]),
                         strict=True):
        comm.id = cid
    pairs = [(o, c.id) for c in comms for o in c.objects]
    ids = _INS_OBJ.insert_rows(conn, [_obj_row(o, cid) for o, cid in pairs])
    entries: list[dict[str, object]] = []
    for (o, cid), oid in zip(pairs, ids, strict=True):
        o.id = oid
        entries += _take_entries(o, cid)
    _INS_ENTRY.insert_rows(conn, entries)


def add_comm(conn: Connection, comm: Comm, later: Deferred | None = None) -> None:
    """Like write_comm for a finished communication whose id nobody needs now: with
    `later` (the writer transaction's buffer) it is written with the others of the
    batch, at the end of the transaction."""
    if later is None or comm.id is not None or any(o.id is not None for o in comm.objects):
        write_comm(conn, comm)
        return
    later.add_item("commlog", _flush_comms, comm)
