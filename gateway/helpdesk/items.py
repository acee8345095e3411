"""The HandoffItem of a claimed outbox row: read from the store and built on a worker
thread, each row on its own, so a row that cannot be read or built fails alone
(an ItemError recorded as its attempt) and never holds back the rows claimed with it.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog
from sqlalchemy import Engine

from gateway.helpdesk import outbox
from gateway.helpdesk.base import HandoffError, HandoffItem
from gateway.helpdesk.mime import (
    DecryptLater,
    decrypted_mime,
    is_message_id,
    strip_prefixed,
)
from gateway.helpdesk.setfields import set_body, set_headers, with_set_values
from gateway.model import AttachmentData
from gateway.outbound.queue import retry_delay
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

# The connectors that pass the message on whole (HandoffItem.mime). The others send the
# stored article, whose body and attachments are already the decrypted ones (with
# `crypto.store_decrypted_body`): for them the message is not decrypted again.
PASSES_MIME = frozenset({"otobo-postmaster"})

# What an attempt's build has to say in its communication log, by (row id, attempts
# before it): taken by gateway.helpdesk.recording when the attempt is recorded.
_NOTES: dict[tuple[int, int], str] = {}


def take_note(c: outbox.Claimed) -> str:
    """The build's note of this attempt ("" when none), once."""
    return _NOTES.pop((c.id, c.attempts), "")


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
    atts = [AttachmentData(filename=r.filename, content_type=r.content_type,
                           content=bytes(r.content), content_id=r.content_id,
                           disposition=r.disposition) for r in loaded.attachments]
    mime = loaded.raw
    if crypto.get("decrypted") and cfg.crypto.store_decrypted_body and mime \
            and cfg.helpdesk.type in PASSES_MIME:
        mime = _decrypted(rt, c, mime, recipients, a, crypto, atts)
    mime = strip_prefixed(mime, cfg.gateway.header_prefixes) if mime else mime
    if mime and cfg.helpdesk.type in PASSES_MIME:
        # The helpdesk makes its article (and finds follow-ups) from this message: it
        # carries what the postmaster filters set, as deskgate's article does.
        mime = with_set_values(
            mime, set_headers(loaded.raw, a.get("headers")),
            set_body(mime, a, crypto, cfg.crypto.store_decrypted_body))
    article = {
        "from": a["from_addr"], "from_email": a["from_email"], "to": a["to_addr"],
        "cc": a["cc_addr"], "reply_to": a["reply_to"], "subject": a["subject"],
        "message_id": a["message_id"], "in_reply_to": a["in_reply_to"],
        "references": a["references"], "content_type": a["content_type"], "body": a["body"],
        "body_html": a["body_html"], "sender_type": a["sender_type"],
        "is_visible_for_customer": a["is_visible_for_customer"],
        # deskgate found it looping (auto-reply, list, bounce; a filter's Loop set or
        # cleared it): the connectors keep the helpdesk from auto-responding to it
        "loop": bool(a.get("loop")),
    }
    return HandoffItem(
        id=c.id, kind=kind, key=c.key, attempts=c.earlier + c.attempts, ticket_id=c.ticket_id,
        article_id=c.article_id, helpdesk_ticket_id=t.get("helpdesk_ticket_id") or "",
        helpdesk_ticket_number=t.get("helpdesk_ticket_number") or "",
        queue=cfg.helpdesk.helpdesk_queue(t["queue"]), decisions=decisions,
        ticket={k: v for k, v in t.items()}, article=article, attachments=atts,
        crypto=crypto, mime=mime, created=c.created.isoformat(),
        helpdesk_message_id=_taken_message_id(loaded, cfg.helpdesk.type))


def _taken_message_id(loaded: outbox.Loaded, helpdesk: str) -> str:
    """The Message-ID of the newest earlier article of the ticket this helpdesk took,
    in a form a helpdesk can look up by References ("" when there is none)."""
    for took, mid in loaded.delivered_message_ids:
        if took == helpdesk and is_message_id(mid):
            return mid
    return ""


def _decrypted(rt: Runtime, c: outbox.Claimed, raw: bytes, recipients: list[str],
               a: dict[str, Any], crypto: dict[str, Any], atts: list[AttachmentData]
               ) -> bytes:
    """The decrypted MIME for the helpdesk. A temporary failure (gpg not answering) is
    a failed attempt, retried on the schedule; the last attempt of the schedule, and a
    permanent failure, hand over what the store holds, the article's text, HTML and
    attachments `atts` (a ticket that arrives without its plaintext MIME beats no
    ticket) with a note in the attempt's log."""
    last = retry_delay(rt.config.helpdesk.retry, c.attempts + 1) is None
    try:
        got = decrypted_mime(raw, rt, recipients, str(a.get("from_email") or ""), a,
                             later=not last, attachments=atts)
    except DecryptLater as exc:
        raise ItemError(f"decrypting the stored message again failed: {exc}; "
                        "tried again on the schedule (its last attempt hands over what "
                        "the store holds)") from None
    if got.failure:
        what = (_stored_what(a, atts) if got.mime is not None
                else "the message as received (encrypted)")
        why = "retries exhausted" if got.temporary else "permanent error"
        if got.mime is None:
            # Its crypto results must not tell the helpdesk the body is decrypted.
            crypto["decrypted"] = False
            crypto["error"] = f"decrypting again at hand-off failed: {got.failure}"
        _NOTES[(c.id, c.attempts)] = (f"the helpdesk gets {what}: decrypting the stored "
                                      f"message again failed ({why}): {got.failure}")[:4000]
    return got.mime if got.mime is not None else raw


def _stored_what(a: dict[str, Any], atts: list[AttachmentData]) -> str:
    """What the fallback built from the store holds, for the attempt's note."""
    held = (["its HTML"] if a.get("body_html") else []) + (
        [f"{len(atts)} attachment{'s' if len(atts) != 1 else ''}"] if atts else [])
    if not held:
        return "the stored text of the article as text/plain (no attachments, no HTML)"
    return (f"the stored text of the article with {' and '.join(held)}, as stored "
            "(rebuilt from the store, not the original MIME)")


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
    except ItemError as exc:
        log.warning("hand-off: the item cannot be built now", handoff=c.id, error=str(exc))
        return exc
    except Exception as exc:
        log.exception("hand-off: building the item failed", handoff=c.id)
        return ItemError(f"building the hand-off from the stored ticket and article failed: "
                         f"{type(exc).__name__}: {exc}"[:2000])
