"""The communication page's read: one page of a communication's objects.

A poll run is one communication with a Message object per fetched message (up to
`max_messages_per_run`, 2000 by default, each with its entries), so the page shows
its objects a page at a time, with only those objects' entries read, instead of
the whole communication as `deskgate log show` prints it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from gateway import commlog_views as views
from gateway.commlog_names import priorities_at_least
from gateway.store.tables import Article, CommEntry, CommObject, Communication, Ticket


def read_page(conn: Connection, comm_id: int, *, priority: str | None, limit: int,
              offset: int) -> dict[str, Any] | None:
    """`log show ID --json` for the objects offset .. offset+limit-1 (in id order), and
    `object_count`, the number of objects in all; None when there is no such
    communication. `priority` limits the entries as there ('Warn' → Warn, Error)."""
    row = conn.execute(select(Communication).where(Communication.id == comm_id)).first()
    if row is None:
        return None
    o_ = CommObject
    count = conn.execute(select(func.count()).select_from(o_)
                         .where(o_.communication_id == comm_id)).scalar_one()
    objs = conn.execute(select(o_.id, o_.type, o_.status, o_.start, o_.end, o_.article_id,
                               o_.outbound_id, Ticket.number.label("ticket_number"))
                        .outerjoin(Article, Article.id == o_.article_id)
                        .outerjoin(Ticket, Ticket.id == Article.ticket_id)
                        .where(o_.communication_id == comm_id)
                        .order_by(o_.id).limit(limit).offset(offset)).all()
    by_obj: dict[int, list[dict[str, Any]]] = {}
    if objs:
        eq = select(CommEntry).where(CommEntry.object_id.in_([o.id for o in objs]))
        if priority:
            eq = eq.where(CommEntry.priority.in_(priorities_at_least(priority)))
        for e in conn.execute(eq.order_by(CommEntry.id)).all():
            by_obj.setdefault(e.object_id, []).append(
                {"priority": e.priority, "key": e.key, "value": e.value,
                 "time": views.utc(e.time)})
    return {"id": row.id, "direction": row.direction, "status": row.status,
            "account_type": row.account_type, "account": row.account,
            "start": views.utc(row.start), "end": views.utc(row.end),
            "transport": row.transport, "object_count": int(count),
            "objects": [{"id": o.id, "type": o.type, "status": o.status,
                         "start": views.utc(o.start), "end": views.utc(o.end),
                         "article_id": o.article_id, "outbound_id": o.outbound_id,
                         "ticket_number": o.ticket_number, "entries": by_obj.get(o.id, [])}
                        for o in objs]}
