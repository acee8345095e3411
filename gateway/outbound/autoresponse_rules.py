"""Who gets no auto-response, and the per-address daily count (RFC 3834; OTOBO's
PostMaster auto-reply rules): the inbound commit's auto-response stage asks
suppression() before it requests one (gateway.outbound.autoresponse)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, select, text

from gateway.model import MessageContext
from gateway.runtime import Runtime
from gateway.store.tables import AutoResponse

# What max_emails_per_address_per_day counts; the daily purge keeps twice that, so a
# clock step or a slow purge never drops a count the limit still reads.
LIMIT_WINDOW = timedelta(days=1)
COUNTS_KEPT = 2 * LIMIT_WINDOW


def sent_today(conn: Connection, address: str, now: datetime) -> int:
    return int(conn.execute(select(func.count()).select_from(AutoResponse).where(
        AutoResponse.address == address, AutoResponse.sent > now - LIMIT_WINDOW)).scalar()
        or 0)


def purge_counts(conn: Connection, now: datetime, limit: int) -> int:
    """Delete up to `limit` auto-response counts older than COUNTS_KEPT; how many went."""
    old = select(AutoResponse.id).where(AutoResponse.sent < now - COUNTS_KEPT) \
        .order_by(AutoResponse.id).limit(limit)
    ids = list(conn.execute(old).scalars())
    if ids:
        conn.execute(delete(AutoResponse).where(AutoResponse.id.in_(ids)))
    return len(ids)


# The first key of the advisory locks below ("dgar"), the second is the address's hash.
_LOCK_CLASS = 0x64676172


def counting_alone(conn: Connection, address: str) -> bool:
    """On PostgreSQL, take the address's transaction-scoped advisory lock, so that two
    nodes do not both count an address's auto-responses before either has committed
    its own and both send one over the day's limit. False when another transaction
    holds it (another node answering this address right now): that message gets no
    auto-response. Not waiting for the lock keeps two batches that answer two
    addresses in opposite order from deadlocking. SQLite has one writer at a time."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k, hashtext(:a))"),
                             {"k": _LOCK_CLASS, "a": address.lower()}).scalar())


# RFC 5321 4.5.3.1: 64 + 1 + 255; the length of auto_response.address
_ADDRESS_MAX = 320


# Doors whose empty envelope sender is MAIL FROM:<>. A poller's is empty also when
# the message has no Return-Path, and `deliver`'s when it was run without -f (as
# OTOBO's PostMaster pipe is): the sender is unknown then, not null, and the
# message's Return-Path says which it is.
_ENVELOPE_KNOWN = ("LMTP",)


def null_sender(ctx: MessageContext) -> bool:
    """Whether the message came with the null envelope sender <> (RFC 3834 2: never
    answered automatically). Postfix's pipe passes it as MAILER-DAEMON."""
    mail_from = ctx.envelope.mail_from
    if mail_from:
        return mail_from.lower() == "mailer-daemon"
    if ctx.envelope.source in _ENVELOPE_KNOWN:
        return True
    p = ctx.parsed
    return p is not None and any(k.lower() == "return-path" and v.strip() == "<>"
                                 for k, v in p.headers)


def suppression(ctx: MessageContext, rt: Runtime, conn: Connection, to: str) -> str:
    """Why no auto-response may go to `to` ('' = it may)."""
    cfg = rt.config
    if ctx.is_bounce:
        return "the message is a bounce"
    if ctx.loop:      # Precedence, X-Loop, Auto-Submitted, List-Id... (gateway.inbound.loop)
        return "the message is looping mail"
    if null_sender(ctx):
        return "the message has the null envelope sender <>"
    if not to:
        return "no sender address"
    if len(to) > _ADDRESS_MAX or "\x00" in to:
        # the counter's column refuses it (PostgreSQL), and no reply could reach it
        return f"{to[:80]!r} is not an address a reply can go to"
    if re.search(cfg.postmaster.no_auto_response, to, re.IGNORECASE):
        return f"{to} matches postmaster.no_auto_response"
    p = ctx.parsed
    # mail from ourselves: also when its Reply-To names someone else
    for own in (to, p.from_email if p is not None else "", ctx.envelope.mail_from):
        if own and cfg.address_by_email(own) is not None:
            return f"{own} is a system address"
    if not counting_alone(conn, to):
        return (f"another node is answering {to} at this moment "
                "(postmaster.max_emails_per_address_per_day is counted one node at a time)")
    limit = cfg.postmaster.max_emails_per_address_per_day
    if sent_today(conn, to, rt.clock.now()) >= limit:
        return f"{to} already had {limit} auto-responses today " \
               "(postmaster.max_emails_per_address_per_day)"
    return ""
