"""The HandoffItem of a claimed outbox row: read from the store and built on a worker
thread, each row on its own, so a row that cannot be read or built fails alone
(an ItemError recorded as its attempt) and never holds back the rows claimed with it.
"""

from __future__ import annotations

from typing import Literal

import structlog
from sqlalchemy import Engine

from gateway.helpdesk import outbox
from gateway.helpdesk.base import HandoffError, HandoffItem
from gateway.helpdesk.mime import decrypted_mime, strip_prefixed
from gateway.model import AttachmentData
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

def build_item(rt: Runtime, c: outbox.Claimed, loaded: outbox.Loaded,
               recipients: list[str]) -> HandoffItem:
    """The HandoffItem of a claimed row: decisions completed with the stored ticket."""
    cfg = rt.config
    t, a = loaded.ticket, dict(loaded.article)
    if not a.get("message_id"):
        a["message_id"] = outbox.message_id_for(c.key, cfg.gateway.hostname)
    kind: Literal["create", "followup"] = "followup" if c.kind == "followup" else "create"
    if kind == "followup" and not t.get("helpdesk_ticket_id") and not loaded.earlier_delivered:
        # The helpdesk never saw this ticket (stored before the hand-off was configured,
        # or its creation was deleted from the outbox): it is new to the helpdesk.
        kind = "create"
    decisions = {str(k): str(v) for k, v in c.decisions.items() if v is not None}
    decisions.pop("BodyDecrypted", None)
    for key, value in (("Queue", t["queue"]), ("Priority", t["priority"]),
                       ("State", t["state"]), ("Title", t["title"]), ("Type", t["type"]),
                       ("CustomerUser", t["customer_user"]), ("CustomerNo", t["customer_no"])):
        if value and kind == "create":
            decisions[key] = str(value)
    for name, value in (t.get("dynamic_fields") or {}).items():
        if kind == "create":
            decisions.setdefault(f"DynamicField-{name}", str(value))
    crypto = dict(a.get("crypto") or {})
    mime = loaded.raw
    if crypto.get("decrypted") and cfg.crypto.store_decrypted_body and mime:
        plain = decrypted_mime(mime, rt, recipients, a.get("from_email") or "", a)
        if plain is not None:
            mime = plain
    mime = strip_prefixed(mime, cfg.gateway.header_prefixes) if mime else mime
    article = {
        "from": a["from_addr"], "from_email": a["from_email"], "to": a["to_addr"],
        "cc": a["cc_addr"], "reply_to": a["reply_to"], "subject": a["subject"],
        "message_id": a["message_id"], "in_reply_to": a["in_reply_to"],
        "references": a["references"], "content_type": a["content_type"], "body": a["body"],
        "body_html": a["body_html"], "sender_type": a["sender_type"],
        "is_visible_for_customer": a["is_visible_for_customer"],
    }
    atts = [AttachmentData(filename=r.filename, content_type=r.content_type,
                           content=bytes(r.content), content_id=r.content_id,
                           disposition=r.disposition) for r in loaded.attachments]
    return HandoffItem(
        id=c.id, kind=kind, key=c.key, attempts=c.earlier + c.attempts, ticket_id=c.ticket_id,
        article_id=c.article_id, helpdesk_ticket_id=t.get("helpdesk_ticket_id") or "",
        helpdesk_ticket_number=t.get("helpdesk_ticket_number") or "",
        queue=cfg.helpdesk.helpdesk_queue(t["queue"]), decisions=decisions,
        ticket={k: v for k, v in t.items()}, article=article, attachments=atts,
        crypto=crypto, mime=mime, created=c.created.isoformat())


class ItemError(HandoffError):
    """A claimed row that never reached the connector: its item could not be read or
    built from the store (temporary: retried on the schedule), or its ticket or article
    is gone (permanent). deskgate's side, not the helpdesk's."""


MISSING = "the ticket or article no longer exists"


def read_items(engine: Engine, rt: Runtime, claimed: list[outbox.Claimed]
               ) -> dict[int, HandoffItem | ItemError]:
    """The items of claimed rows by row id, loaded and built on the calling (worker)
    thread, each on its own: a row whose stored data cannot be read or built gets an
    ItemError and the others are delivered."""
    try:
        with engine.connect() as conn:
            loaded = outbox.load(conn, claimed)
    except Exception:
        log.exception("hand-off: reading the claimed rows failed; reading them one by one",
                      handoffs=len(claimed))
        return {c.id: _read_one(engine, rt, c) for c in claimed}
    return {c.id: _build(rt, c, loaded.get(c.id)) for c in claimed}


def _read_one(engine: Engine, rt: Runtime, c: outbox.Claimed) -> HandoffItem | ItemError:
    try:
        with engine.connect() as conn:
            loaded = outbox.load(conn, [c])
    except Exception as exc:
        log.exception("hand-off: reading the row failed", handoff=c.id)
        return ItemError(f"reading the stored ticket or article failed: "
                         f"{type(exc).__name__}: {exc}"[:2000])
    return _build(rt, c, loaded.get(c.id))


def _build(rt: Runtime, c: outbox.Claimed, loaded: outbox.Loaded | None
           ) -> HandoffItem | ItemError:
    if loaded is None:
        return ItemError(MISSING, temporary=False)
    try:
        return build_item(rt, c, loaded, loaded.recipients)
    except Exception as exc:
        log.exception("hand-off: building the item failed", handoff=c.id)
        return ItemError(f"building the hand-off from the stored ticket and article failed: "
                         f"{type(exc).__name__}: {exc}"[:2000])
