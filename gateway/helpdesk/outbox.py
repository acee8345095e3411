"""The hand-off outbox: enqueue with the article, claim in order per ticket, record, admin.

Plain functions of a Connection, so they join the caller's transaction. The row
is written in the transaction that stores the article, before the MTA gets 250;
a worker on any node claims due rows with a lease (`FOR UPDATE SKIP LOCKED` on
PostgreSQL plus a compare-and-set everywhere). A row is only due when every
earlier row of its ticket is delivered, so a follow-up never overtakes the
creation of its ticket.

This module writes a row with its article and reads back what the worker hands
off; claiming, leases and outcomes are in outbox_claim, the attempts that ended
without an outcome in outbox_expiry, the operator's side in outbox_admin. Their
names are importable from here too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from gateway.helpdesk.outbox_admin import Removed as Removed
from gateway.helpdesk.outbox_admin import Retried as Retried
from gateway.helpdesk.outbox_admin import Stats as Stats
from gateway.helpdesk.outbox_admin import attempt_note as attempt_note
from gateway.helpdesk.outbox_admin import list_handoffs as list_handoffs
from gateway.helpdesk.outbox_admin import remove as remove
from gateway.helpdesk.outbox_admin import retry_now as retry_now
from gateway.helpdesk.outbox_admin import show as show
from gateway.helpdesk.outbox_admin import stats as stats
from gateway.helpdesk.outbox_admin import status_of as status_of
from gateway.helpdesk.outbox_admin import ticket_state as ticket_state
from gateway.helpdesk.outbox_claim import Claimed as Claimed
from gateway.helpdesk.outbox_claim import Outcome as Outcome
from gateway.helpdesk.outbox_claim import absorb as absorb
from gateway.helpdesk.outbox_claim import adopt_number as adopt_number
from gateway.helpdesk.outbox_claim import claim as claim
from gateway.helpdesk.outbox_claim import next_due as next_due
from gateway.helpdesk.outbox_claim import record_delivered as record_delivered
from gateway.helpdesk.outbox_claim import record_failure as record_failure
from gateway.helpdesk.outbox_claim import renew as renew
from gateway.helpdesk.outbox_expiry import LOST as LOST
from gateway.helpdesk.outbox_expiry import Lost as Lost
from gateway.helpdesk.outbox_expiry import expire as expire
from gateway.outbound.queue import _aware, utcnow
from gateway.store.repo import insert_handoff
from gateway.store.tables import Article, Attachment, Delivery, Handoff, RawMessage, Ticket

# ----------------------------------------------------------------- enqueue

def enqueue(conn: Connection, *, ticket_id: int, article_id: int, kind: str, helpdesk: str,
            decisions: dict[str, str]) -> int:
    """The outbox row of one stored article (inside the storing transaction)."""
    now = utcnow()
    return insert_handoff(conn, {
        "ticket_id": ticket_id, "article_id": article_id, "kind": kind,
        "key": f"dg-{uuid.uuid4().hex}", "helpdesk": helpdesk, "status": "pending",
        "attempts": 0, "earlier_attempts": 0, "cycle_started": now, "next_attempt": now,
        "lease_until": None,
        "claimed_by": "",
        "last_error": "", "decisions": decisions, "created": now, "updated": now,
        "delivered": None})


# ----------------------------------------------------------------- loading

@dataclass(frozen=True)
class Loaded:
    """What the worker reads for one claimed row (on its own connection)."""

    ticket: dict[str, Any]
    article: dict[str, Any]
    attachments: list[Any]
    raw: bytes
    recipients: list[str]         # the envelope recipients it was delivered to
    earlier_delivered: bool       # an earlier row of this ticket reached the helpdesk
    # (helpdesk type, Message-ID) of the articles of earlier rows of this ticket that
    # reached a helpdesk, newest first; articles without a Message-ID left out
    delivered_message_ids: tuple[tuple[str, str], ...] = ()


_TICKET_KEYS = ("number", "title", "queue", "state", "priority", "type", "service", "sla",
                "owner", "responsible", "lock", "customer_no", "customer_user",
                "pending_until", "dynamic_fields", "helpdesk_ticket_id",
                "helpdesk_ticket_number")
_ARTICLE_KEYS = ("direction", "sender_type", "is_visible_for_customer", "from_addr",
                 "from_email", "to_addr", "cc_addr", "reply_to", "subject", "message_id",
                 "in_reply_to", "references", "content_type", "body", "body_html", "crypto",
                 "headers", "loop")


def load(conn: Connection, claimed: list[Claimed]) -> dict[int, Loaded]:
    """Ticket, article, attachments, raw bytes, recipients and the Message-IDs the
    helpdesk took of claimed rows, by row id, in one query per table (a row whose
    ticket or article is gone is left out)."""
    if not claimed:
        return {}
    tickets = {t.id: t for t in conn.execute(select(Ticket).where(
        Ticket.id.in_({c.ticket_id for c in claimed}))).all()}
    articles = {a.id: a for a in conn.execute(select(Article).where(
        Article.id.in_({c.article_id for c in claimed}))).all()}
    raw_ids = {a.raw_id for a in articles.values() if a.raw_id is not None}
    raws = {r.id: bytes(r.data or b"") for r in conn.execute(select(
        RawMessage.id, RawMessage.data).where(RawMessage.id.in_(raw_ids))).all()} \
        if raw_ids else {}
    atts: dict[int, list[Any]] = {}
    for r in conn.execute(select(Attachment).where(Attachment.article_id.in_(articles))
                          .order_by(Attachment.id)).all():
        atts.setdefault(r.article_id, []).append(r)
    rcpts: dict[int, list[str]] = {}
    for article_id, rcpt in conn.execute(select(Delivery.article_id, Delivery.recipient)
                                         .where(Delivery.article_id.in_(articles))).all():
        if article_id is not None:
            rcpts.setdefault(article_id, []).append(rcpt)
    delivered: dict[int, list[tuple[int, str, str]]] = {}
    for tid, hid, helpdesk, mid in conn.execute(
            select(Handoff.ticket_id, Handoff.id, Handoff.helpdesk, Article.message_id)
            .outerjoin(Article, Article.id == Handoff.article_id)
            .where(Handoff.ticket_id.in_(tickets), Handoff.status == "delivered")
            .order_by(Handoff.id.desc())).all():
        delivered.setdefault(tid, []).append((hid, helpdesk or "", (mid or "").strip()))
    out: dict[int, Loaded] = {}
    for c in claimed:
        t, a = tickets.get(c.ticket_id), articles.get(c.article_id)
        if t is None or a is None:
            continue
        earlier = [(h, mid) for hid, h, mid in delivered.get(c.ticket_id, ()) if hid < c.id]
        ticket = {k: getattr(t, k) for k in _TICKET_KEYS}
        pending = _aware(t.pending_until)
        ticket["pending_until"] = pending.isoformat() if pending else ""
        out[c.id] = Loaded(
            ticket=ticket, article={k: getattr(a, k) for k in _ARTICLE_KEYS},
            attachments=atts.get(a.id, []),
            raw=raws.get(a.raw_id, b"") if a.raw_id is not None else b"",
            recipients=rcpts.get(a.id, []),
            earlier_delivered=bool(earlier),
            delivered_message_ids=tuple((h, mid) for h, mid in earlier if mid))
    return out


def message_id_for(key: str, hostname: str) -> str:
    """A Message-ID for an article that came without one, stable for its hand-off."""
    return f"<{key}@{hostname or 'localhost'}>"
