"""The store stage (a new ticket, or an article on the follow-up ticket) and the
hand-off stage after it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from gateway.model import MessageContext
from gateway.runtime import Runtime
from gateway.store import repo

_TRUE = ("1", "yes", "true", "on")
# what deskgate documents as false; OTOBO's Perl test of State-Keep knows only "" and "0"
_FALSE = ("", "0", "no", "false", "off")
_REL_TIME = re.compile(r"^\+\s*(\d+)\s*([smhdw])$", re.IGNORECASE)
_REL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def is_true(value: str) -> bool:
    """Ignore, IsVisibleForCustomer: 1, yes, true or on, and (as OTOBO tests
    X-OTOBO-Ignore, /(yes|true)/i) any value holding yes or true; any case."""
    value = value.strip().lower()
    return value in _TRUE or "yes" in value or "true" in value


def is_set(value: str) -> bool:
    """FollowUp-State-Keep: OTOBO keeps the state for any value but empty and 0 (Perl
    truth); deskgate's false words no, false and off keep nothing either."""
    return value.strip().lower() not in _FALSE


def pending_ignored(ctx: MessageContext, key: str, value: str, state: str) -> None:
    """OTOBO sets a pending time only for a pending state: say why this one was not."""
    ctx.log.log("Notice", key, f"pending time {value!r} ignored: state {state!r} is not a "
                "pending state")


def pending_time(value: str, now: datetime | None = None) -> datetime | None:
    """'+12d', '+36h', '2026-12-01 10:00:00' → a datetime; None if unreadable."""
    value = value.strip()
    if not value:
        return None
    now = now or datetime.now(UTC)
    m = _REL_TIME.match(value)
    if m:
        return now + timedelta(seconds=int(m.group(1)) * _REL_UNITS[m.group(2).lower()])
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def checked_state(ctx: MessageContext, rt: Runtime, key: str, default: str) -> str:
    """A state from params when it exists, else the default (an Error is logged, as OTOBO)."""
    value = ctx.param(key)
    if not value:
        return default
    if value in rt.config.postmaster.states:
        return value
    ctx.log.log("Error", key, f"state {value!r} does not exist; using {default!r}")
    return default


def checked_priority(ctx: MessageContext, rt: Runtime, key: str, default: str) -> str:
    value = ctx.param(key)
    if not value:
        return default
    if value in rt.config.postmaster.priorities:
        return value
    ctx.log.log("Error", key, f"priority {value!r} does not exist; using {default!r}")
    return default


def dynamic_fields(ctx: MessageContext, prefix: str = "") -> dict[str, str]:
    lead = f"{prefix}DynamicField-"
    return {k[len(lead):]: v for k, v in ctx.params.items() if k.startswith(lead)}


def article_values(ctx: MessageContext, rt: Runtime, raw_id: int) -> dict[str, object]:
    """The article's columns. As OTOBO's PostMaster, a follow-up's article reads
    FollowUp-SenderType and FollowUp-IsVisibleForCustomer (a new ticket's the names
    without FollowUp-); missing or empty, they are customer and visible."""
    p = ctx.parsed
    assert p is not None
    store_body = rt.config.crypto.store_decrypted_body or not ctx.crypto.decrypted
    body = p.body if store_body else "(encrypted; the decrypted text is not stored)"
    lead = "FollowUp-" if ctx.action == "followup" else ""
    sender_type = ctx.param(f"{lead}SenderType", "customer") or "customer"
    if sender_type not in ("customer", "agent", "system"):
        ctx.log.log("Error", f"{lead}SenderType",
                    f"sender type {sender_type!r} unknown; using customer")
        sender_type = "customer"
    visible = ctx.param(f"{lead}IsVisibleForCustomer", "1")
    return {
        "direction": "incoming", "sender_type": sender_type,
        "is_visible_for_customer": is_true(visible) if visible else True,
        "from_addr": p.from_addr, "from_email": p.from_email, "to_addr": p.to_addr,
        "cc_addr": p.cc_addr, "reply_to": p.reply_to, "subject": p.subject,
        "message_id": p.message_id, "in_reply_to": p.in_reply_to, "references": p.references,
        "content_type": p.content_type, "body": body,
        "body_html": p.body_html if store_body else None,
        # (name, value) pairs: JSON writes a tuple as the list [name, value].
        "headers": p.headers, "loop": ctx.loop,
        "crypto": ctx.crypto.as_dict(), "raw_id": raw_id,
    }


def store(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    """Write the raw message, the ticket (when new) and the article."""
    p = ctx.parsed
    assert p is not None
    env = ctx.envelope
    now = rt.clock.now()
    raw_id = repo.insert_raw(conn, env.raw, env.sha256, created=now)
    cfg = rt.config
    pm = cfg.postmaster
    if ctx.action == "new" or ctx.ticket_id is None:
        # With a helpdesk behind deskgate the number is the helpdesk's, told by the hand-off.
        number = (None if cfg.helpdesk.enabled
                  else repo.next_ticket_number(conn, cfg.gateway.system_id, now,
                                                 ctx.deferred))
        state = checked_state(ctx, rt, "State", pm.default_state)
        param = ctx.params.get      # ctx.param, a dozen times
        title = param("Title", "") or p.subject or "(no subject)"
        state_type = pm.states.get(state, "new")
        pending = param("State-PendingTime", "")
        pending_until = None
        if pending and state_type != "pending":
            pending_ignored(ctx, "State-PendingTime", pending, state)
        elif pending:
            pending_until = pending_time(pending, now)
            if pending_until is None:
                # as for FollowUp-State-PendingTime: stored, with an Error entry that says why
                ctx.log.log("Error", "State-PendingTime", f"{pending!r} is not a time")
        ctx.ticket_id = repo.insert_ticket(
            conn, number=number, title=title[:1000], queue=ctx.queue or pm.default_queue,
            state=state, state_type=state_type,
            priority=checked_priority(ctx, rt, "Priority", pm.default_priority),
            type=param("Type", pm.default_type), service=param("Service", ""),
            sla=param("SLA", ""), owner=param("Owner", ""),
            responsible=param("Responsible", ""), lock=param("Lock", "unlock") or "unlock",
            customer_no=param("CustomerNo", "") or p.from_email,
            customer_user=param("CustomerUser", "") or p.from_email,
            pending_until=pending_until,
            dynamic_fields=dynamic_fields(ctx),
            linked_ticket_id=ctx.linked_ticket_id,
            classification=ctx.classification or {}, created=now, changed=now,
        )
        ctx.ticket_number = number or ""
        ctx.action = "new"
    ctx.article_id = repo.insert_article(conn, p.attachments,
                                         ticket_id=ctx.ticket_id, created=now,
                                         **article_values(ctx, rt, raw_id))
    ctx.log.article_id = ctx.article_id
    ctx.log.log("Info", "Ticket", f"{'new ticket' if ctx.action == 'new' else 'follow-up to'} "
                f"{ctx.ticket_number or '(number from the helpdesk)'} in queue {ctx.queue}, "
                f"article {ctx.article_id}")


def handoff(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    """With a [helpdesk], the stored article's hand-off row, in the same transaction."""
    helpdesk = rt.config.helpdesk
    if not helpdesk.enabled or ctx.action not in ("new", "followup") or ctx.article_id is None:
        return
    from gateway.helpdesk.outbox import enqueue

    assert ctx.ticket_id is not None
    ctx.handoff_id = enqueue(conn, ticket_id=ctx.ticket_id, article_id=ctx.article_id,
                             kind="create" if ctx.action == "new" else "followup",
                             helpdesk=helpdesk.type, decisions=dict(ctx.params))
    ctx.log.log("Info", "Handoff", f"queued for the helpdesk ({helpdesk.type}) as "
                f"hand-off #{ctx.handoff_id}")
