"""Auto-responses per queue: a commit stage after "store" of the inbound pipeline.

The reply is built, signed and enqueued inside the inbound transaction, so it
exists exactly when the ticket does. It carries Auto-Submitted: auto-replied,
X-Loop and Precedence: bulk and the null envelope sender (RFC 3834). It is
never sent to looping mail or bounces, to addresses matching
postmaster.no_auto_response, to our own system addresses, or more than
max_emails_per_address_per_day times a day to one address (counted in the
database, so shared by all nodes).
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime, timedelta
from email.mime.text import MIMEText

from sqlalchemy import Connection, func, insert, select

from gateway.errors import PermanentError
from gateway.inbound.parse import first_address
from gateway.model import MessageContext
from gateway.outbound.headers import header_safe
from gateway.runtime import Runtime
from gateway.store import repo
from gateway.store.tables import AutoResponse

_CLOSED = ("closed", "merged", "removed")


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, values: dict[str, str]) -> str:
    """{ticket_number} {title} {customer}; unknown placeholders stay as written."""
    return template.format_map(_Missing(values))


def which_template(ctx: MessageContext, rt: Runtime, conn: Connection) -> tuple[str, str]:
    """(kind, template text) for this message, or ("", "") when its queue has none."""
    q = rt.config.queue_by_name(ctx.queue) if ctx.queue else None
    if ctx.action == "new":      # the inbound hot path: no lookup needed
        return ("new", q.auto_response_new) if q is not None else ("", "")
    ticket = repo.ticket_by_id(conn, ctx.ticket_id) if ctx.ticket_id else None
    if ticket is not None:
        q = rt.config.queue_by_name(ticket.queue) or q
    if q is None:
        return "", ""
    if ctx.action == "followup":
        if ticket is not None and ticket.state_type in _CLOSED and q.follow_up == "reject":
            return "reject", q.auto_response_reject
        return "followup", q.auto_response_followup
    return "", ""


def sent_today(conn: Connection, address: str, now: datetime) -> int:
    return int(conn.execute(select(func.count()).select_from(AutoResponse).where(
        AutoResponse.address == address, AutoResponse.sent > now - timedelta(days=1))).scalar()
        or 0)


def suppression(ctx: MessageContext, rt: Runtime, conn: Connection, to: str) -> str:
    """Why no auto-response may go to `to` ('' = it may)."""
    cfg = rt.config
    if ctx.is_bounce:
        return "the message is a bounce"
    if ctx.loop:      # Precedence, X-Loop, Auto-Submitted, List-Id... (gateway.inbound.loop)
        return "the message is looping mail"
    if not to:
        return "no sender address"
    if re.search(cfg.postmaster.no_auto_response, to, re.IGNORECASE):
        return f"{to} matches postmaster.no_auto_response"
    if cfg.address_by_email(to) is not None:
        return f"{to} is a system address"
    limit = cfg.postmaster.max_emails_per_address_per_day
    if sent_today(conn, to, datetime.now(UTC)) >= limit:
        return f"{to} already had {limit} auto-responses today " \
               "(postmaster.max_emails_per_address_per_day)"
    return ""


def auto_response_stage(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    """Queue the auto-response for a stored message, when its queue has one."""
    from gateway.outbound.pipeline import OutboundContext, process_in_transaction
    from gateway.outbound.sender import notify_queued

    if ctx.action not in ("new", "followup") or ctx.parsed is None or ctx.ticket_id is None:
        return
    kind, template = which_template(ctx, rt, conn)
    if not template:
        return
    p = ctx.parsed
    to = first_address(p.reply_to) or p.from_email
    why = suppression(ctx, rt, conn, to)
    if why:
        ctx.log.log("Notice", "AutoResponse", f"no auto-response ({kind}): {why}")
        return
    ticket = repo.ticket_by_id(conn, ctx.ticket_id)
    number = (ticket.number if ticket is not None else ctx.ticket_number) or ""
    name = email.utils.parseaddr(p.from_addr)[0] or to
    body = render(template, {"ticket_number": number, "title": ticket.title if ticket else "",
                             "customer": name})
    reply = MIMEText(body, "plain", "utf-8")
    reply["To"] = header_safe(to)
    subject = header_safe(p.subject or (ticket.title if ticket else "")).strip()
    reply["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    if p.message_id:
        reply["In-Reply-To"] = header_safe(p.message_id)
        reply["References"] = header_safe(p.references + " " + p.message_id).strip()
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Loop"] = "yes"
    reply["Precedence"] = "bulk"
    out = OutboundContext(mail_from="", recipients=[to], raw=b"", msg=reply,
                          source="AutoResponse", account=rt.config.gateway.hostname,
                          kind="auto-response", queue=ticket.queue if ticket else ctx.queue,
                          ticket_id=ctx.ticket_id, ticket_number=number,
                          sender_type="system")
    out.queue_config = rt.config.queue_by_name(out.queue)
    try:
        oid = process_in_transaction(out, rt, conn)
    except PermanentError as exc:
        # e.g. the queue requires encryption and the customer has no key: the
        # auto-response is not sent, the customer's message is stored all the same.
        ctx.log.log("Warn", "AutoResponse", f"no auto-response ({kind}): {exc}")
        return
    conn.execute(insert(AutoResponse).values(address=to, ticket_id=ctx.ticket_id,
                                             outbound_id=oid, sent=datetime.now(UTC)))
    ctx.log.log("Info", "AutoResponse", f"auto-response ({kind}) to <{to}> queued as "
                f"#{oid}")
    notify_queued()

