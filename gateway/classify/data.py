"""Training data from the store: each ticket's subject and first customer article,
labelled with the ticket's final queue and priority (after agents' moves)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text

from gateway.classify.text import message_text
from gateway.store.tables import Article, Ticket, TicketMove


@dataclass
class Example:
    """One labelled ticket."""

    text: str
    queue: str
    priority: str


def load_examples(conn: Connection, *, since: datetime | None = None,
                  exclude_queues: tuple[str, ...] = ()) -> list[Example]:
    """Tickets (created since `since`) outside the excluded queues, oldest first.

    On PostgreSQL the read runs without the session's statement timeout (60 s by
    default, gateway.store.db): on a big store it may take longer, and it is an
    admin's batch job, not a delivery that must answer in time."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL statement_timeout = 0"))   # this transaction only
    first = (select(Article.ticket_id, func.min(Article.id).label("article_id"))
             .where(Article.direction == "incoming", Article.sender_type == "customer")
             .group_by(Article.ticket_id).subquery())
    q = (select(Ticket.queue, Ticket.priority, Article.subject, Article.body, Article.body_html)
         .join(first, first.c.ticket_id == Ticket.id)
         .join(Article, Article.id == first.c.article_id)
         .order_by(Ticket.id))
    if since is not None:
        q = q.where(Ticket.created >= since)
    excluded = {x.lower() for x in exclude_queues}
    return [Example(message_text(r.subject, r.body, r.body_html), r.queue, r.priority)
            for r in conn.execute(q) if r.queue.lower() not in excluded]


def moves_since(conn: Connection, when: datetime | None) -> int:
    """Queue/priority corrections recorded since `when` (all when None)."""
    q = select(func.count()).select_from(TicketMove)
    if when is not None:
        q = q.where(TicketMove.created > when)
    return int(conn.execute(q).scalar_one())


def move_ticket(conn: Connection, ticket: Any, *, queue: str, priority: str,
                by: str = "") -> None:
    """Change a ticket's queue/priority and record the correction."""
    from gateway.store.repo import update_ticket, utcnow

    now = utcnow()
    conn.execute(insert(TicketMove).values(
        ticket_id=ticket.id, from_queue=ticket.queue, to_queue=queue,
        from_priority=ticket.priority, to_priority=priority, by=by, created=now))
    update_ticket(conn, ticket.id, queue=queue, priority=priority, changed=now)
