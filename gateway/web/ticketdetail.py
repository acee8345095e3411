"""The ticket page's read: a ticket with one page of its articles.

A mail loop that slipped through can leave a ticket with tens of thousands of
articles, so the page reads its articles a page at a time (oldest first, as
`deskgate tickets show` lists them), with only those articles' attachments, and
counts them all, instead of the whole ticket as `tickets show` prints it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from gateway.cli.tickets import find_ticket, helpdesk_state, ticket_summary
from gateway.store.tables import Article, Attachment, Ticket, TicketMove

# The crypto fields of an article and their values when it has none (as `tickets show`).
_CRYPTO: tuple[tuple[str, Any], ...] = (
    ("encrypted", False), ("decrypted", False), ("signed", False), ("signature_valid", None),
    ("signer", ""), ("method", ""), ("error", ""), ("partially_signed", False),
    ("signatures", []))


def read_page(conn: Connection, number: str, ticket_url: str, *, limit: int,
              offset: int) -> dict[str, Any] | None:
    """`tickets show N --json` with the articles offset .. offset+limit-1 (in id order)
    only, and `article_count`, the number of articles in all; None when there is no
    such ticket."""
    t = find_ticket(conn, number)
    if t is None:
        return None
    count = conn.execute(select(func.count()).select_from(Article)
                         .where(Article.ticket_id == t.id)).scalar_one()
    arts = conn.execute(select(Article).where(Article.ticket_id == t.id)
                        .order_by(Article.id).limit(limit).offset(offset)).all()
    atts: dict[int, list[dict[str, Any]]] = {}
    if arts:
        for r in conn.execute(select(Attachment.article_id, Attachment.filename,
                                     Attachment.content_type, Attachment.size)
                              .where(Attachment.article_id.in_([a.id for a in arts]))
                              .order_by(Attachment.id)).all():
            atts.setdefault(r.article_id, []).append(
                {"filename": r.filename, "content_type": r.content_type, "size": r.size})
    linked = None
    if t.linked_ticket_id:
        lt = conn.execute(select(Ticket.number).where(Ticket.id == t.linked_ticket_id)).first()
        linked = lt.number if lt else None
    moves = conn.execute(select(TicketMove).where(TicketMove.ticket_id == t.id)
                         .order_by(TicketMove.id)).all()
    return {
        **ticket_summary(t), "type": t.type, "service": t.service, "sla": t.sla,
        "customer_no": t.customer_no, "owner": t.owner, "responsible": t.responsible,
        "lock": t.lock, "pending_until": t.pending_until, "dynamic_fields": t.dynamic_fields,
        "linked_ticket": linked, "classification": t.classification or {},
        "moves": [{"from_queue": m.from_queue, "to_queue": m.to_queue,
                   "from_priority": m.from_priority, "to_priority": m.to_priority,
                   "by": m.by, "created": m.created} for m in moves],
        "helpdesk": helpdesk_state(conn, t.id, ticket_url),
        "article_count": int(count),
        "articles": [{
            "id": a.id, "message_id": a.message_id, "direction": a.direction,
            "sender_type": a.sender_type, "is_visible_for_customer": a.is_visible_for_customer,
            "from": a.from_addr, "to": a.to_addr, "cc": a.cc_addr, "subject": a.subject,
            "in_reply_to": a.in_reply_to, "references": a.references, "body": a.body,
            "body_html": a.body_html, "loop": a.loop, "created": a.created,
            "transmission_status": a.transmission_status,
            "transmission_error": a.transmission_error,
            "attachments": atts.get(a.id, []),
            "crypto": {k: (a.crypto or {}).get(k, d) for k, d in _CRYPTO},
        } for a in arts],
    }
