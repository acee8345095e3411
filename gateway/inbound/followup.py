"""Follow-up detection (commit stage, before routing).

A message continues a ticket when (in this order):
1. it is a DSN reporting on one of our stored outgoing articles (recorded on it);
2. its Subject carries `<ticket_hook><number>` (also `<hook>: <number>`) of an
   existing ticket and the sender is a participant of that ticket (the customer,
   or an address on an earlier article) — unlike OTOBO, a guessed or forwarded
   number does not attach a stranger's mail (switch: followup_requires_participant);
3. its In-Reply-To, then its References (newest first), name a stored article.

Closed tickets follow their queue's follow_up: possible → reopen to
followup_state; reject → the article is stored, the ticket stays as it is;
new-ticket → a new ticket linked to the old one. `decide` only reads, so
`deskgate filter test` can show the decision; `apply` writes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, select, update

from gateway.inbound import bounce as _bounce
from gateway.inbound.parse import addresses
from gateway.inbound.ticket import (
    checked_priority,
    checked_state,
    dynamic_fields,
    is_set,
    pending_ignored,
)
from gateway.inbound.ticket import pending_time as parse_pending_time
from gateway.model import MessageContext
from gateway.runtime import Runtime
from gateway.store import repo
from gateway.store.tables import Article, Ticket

Kind = Literal["followup", "reject", "new-ticket", "bounce"]
_MSGID = re.compile(r"<[^<>\s]+>")
# References (the newest) and In-Reply-To ids (the first) looked up; hostile mail
# may carry thousands
MAX_REFERENCES = 200
# Distinct ticket numbers of a Subject looked up, in order (OTOBO takes the first only);
# hostile mail may name thousands, each a query and a log entry
MAX_SUBJECT_NUMBERS = 10


@dataclass
class Decision:
    """What the follow-up stage found; None-like (kind new) when nothing matched."""

    kind: Kind
    ticket_id: int
    ticket_number: str
    queue: str
    how: str                       # subject | in-reply-to | references | bounce
    reason: str
    ticket_state: str = ""
    ticket_state_type: str = ""
    new_state: str | None = None   # None: unchanged
    article_id: int | None = None  # the outgoing article a bounce reports on
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ticket": self.ticket_number, "queue": self.queue,
                "how": self.how, "reason": self.reason, "state": self.ticket_state,
                "new_state": self.new_state, "bounced_article_id": self.article_id}


@functools.lru_cache(maxsize=8)
def _hook_re(hook: str, system_id: str = "") -> re.Pattern[str]:
    # Our numbers are YYYYMMDD + system_id + counter: a system_id that is not all digits
    # is part of them (a helpdesk's numbers are digits)
    ours = "" if system_id.isdigit() or not system_id else \
        r"\d{8}" + re.escape(system_id) + r"\d+|"
    # \s*(?::\s*)? rather than \s*:?\s*, which tries every split of a run of white space
    return re.compile(re.escape(hook) + r"\s*(?::\s*)?(" + ours + r"\d{4,})", re.IGNORECASE)


def subject_numbers(subject: str, hook: str, system_id: str = "") -> list[str]:
    """Ticket numbers named in a subject, in order, each once ('RE: [Ticket#2026...] x')."""
    if not hook:
        return []
    found = (m.group(1) for m in _hook_re(hook, system_id).finditer(subject))
    # the hook is matched ignoring case; so is our system_id, written as configured
    cut = 8 + len(system_id)
    return list(dict.fromkeys(n if n.isdigit() else n[:8] + system_id + n[cut:]
                              for n in found))


def strip_number(title: str, number: str, hook: str) -> str:
    """The title without `[<hook><number>]` / `<hook>: <number>` (for a linked new ticket)."""
    # as [?\s*<hook>\s*:?\s*<number>\s*]? but linear: white space before the hook is
    # taken from the start of its run only (not tried again from every position in it)
    rx = re.compile(r"(?:\[|(?<!\s)|(?!\s))\s*" + re.escape(hook) + r"\s*(?::\s*)?"
                    + re.escape(number) + r"\s*\]?", re.IGNORECASE)
    out = rx.sub("", title)
    return re.sub(r"\s{2,}", " ", out).strip() or title


def message_ids(value: str) -> list[str]:
    found = _MSGID.findall(value)
    if not found and value.strip() and "@" in value and " " not in value.strip():
        found = [f"<{value.strip().strip('<>')}>"]
    return found


def _article_by_message_id(conn: Connection, mid: str, *, direction: str | None = None
                           ) -> Any:
    rows = repo.articles_by_message_ids(conn, [mid, mid.strip("<>")],
                                        sent_only=direction == "outgoing")
    rows = [r for r in rows if direction is None or r.direction == direction]
    return rows[-1] if rows else None


def _articles_by_message_ids(conn: Connection, ids: list[str]) -> dict[str, Any]:
    """'<id>' → the newest article with that Message-ID (stored with or without <>)."""
    if not ids:
        return {}
    variants = [v for mid in ids for v in (mid, mid.strip("<>"))]
    rows = repo.articles_by_message_ids(conn, variants)
    out: dict[str, Any] = {}
    for r in rows:                  # later (newer) rows win
        key = r.message_id if r.message_id.startswith("<") else f"<{r.message_id}>"
        out[key] = r
    return out


def is_participant(conn: Connection, ticket: Any, sender: str) -> bool:
    """The sender is the ticket's customer or an address on one of its articles."""
    sender = sender.lower()
    if not sender:
        return False
    if sender in (ticket.customer_user.lower(), ticket.customer_no.lower()):
        return True
    rows = conn.execute(select(Article.from_email, Article.from_addr, Article.to_addr,
                               Article.cc_addr, Article.reply_to)
                        .where(Article.ticket_id == ticket.id)).all()
    for r in rows:
        if r.from_email.lower() == sender:
            return True
        vals = [r.from_addr, r.to_addr, r.cc_addr, r.reply_to]
        if any(sender in addresses(v) for v in vals if v):
            return True
    return False


def _find(ctx: MessageContext, rt: Runtime, conn: Connection, notes: list[str]
          ) -> tuple[Any, str, str, int | None] | None:
    """(ticket row, how, reason, bounced article id) of the ticket this message continues."""
    p = ctx.parsed
    assert p is not None
    if ctx.is_bounce and ctx.bounced_message_id:
        row = _article_by_message_id(conn, ctx.bounced_message_id, direction="outgoing")
        if row is not None:
            t = repo.ticket_by_id(conn, row.ticket_id)
            if t is not None:
                return t, "bounce", (f"DSN reports on outgoing article {row.id} "
                                     f"({ctx.bounced_message_id})"), row.id
        notes.append(f"DSN names {ctx.bounced_message_id}, which is no outgoing article of ours")
    hook = rt.config.gateway.ticket_hook
    numbers = subject_numbers(p.subject, hook, rt.config.gateway.system_id)
    if len(numbers) > MAX_SUBJECT_NUMBERS:
        notes.append(f"Subject names {len(numbers)} ticket numbers; only the first "
                     f"{MAX_SUBJECT_NUMBERS} are looked up")
    for number in numbers[:MAX_SUBJECT_NUMBERS]:
        t = repo.ticket_by_number(conn, number)
        if t is None:
            notes.append(f"Subject names {hook}{number}, which does not exist")
            continue
        if not rt.config.postmaster.followup_requires_participant:
            return t, "subject", f"Subject names {hook}{number}", None
        if rt.config.address_by_email(p.from_email) is not None:
            notes.append(f"Subject names {hook}{number} but the sender {p.from_email} is one of "
                         "our system addresses (on every article, so no proof of participation)")
            continue
        if is_participant(conn, t, p.from_email):
            return t, "subject", (f"Subject names {hook}{number} and {p.from_email} is a "
                                  "participant"), None
        notes.append(f"Subject names {hook}{number} but {p.from_email or 'the sender'} is not "
                     "a participant of that ticket")
    for how, value in (("in-reply-to", p.in_reply_to), ("references", p.references)):
        if not value:           # most new mail: nothing to look up
            continue
        ids = message_ids(value)
        if how == "references":
            ids.reverse()           # the newest reference first
        # one query for them all: thousands would pass the database's parameter limit
        ids = ids[:MAX_REFERENCES]
        found = _articles_by_message_ids(conn, ids)
        for mid in ids:
            row = found.get(mid)
            if row is None:
                continue
            t = repo.ticket_by_id(conn, row.ticket_id)
            if t is not None:
                return t, how, f"{how.title()} names {mid} (article {row.id}, {row.direction})", \
                    None
        if ids:
            notes.append(f"{how.title()} names no stored article")
    return None


def decide(ctx: MessageContext, rt: Runtime, conn: Connection,
           notes: list[str] | None = None) -> Decision | None:
    """Read-only: which ticket this message continues and what happens to it."""
    notes = notes if notes is not None else []
    if ctx.parsed is None:
        return None
    found = _find(ctx, rt, conn, notes)
    if found is None:
        return None
    t, how, reason, bounced = found
    pm = rt.config.postmaster
    d = Decision(kind="followup", ticket_id=t.id, ticket_number=t.number or "", queue=t.queue,
                 how=how, reason=reason, ticket_state=t.state, ticket_state_type=t.state_type,
                 article_id=bounced, notes=notes)
    if how == "bounce":
        d.kind = "bounce"
        return d
    if t.state_type in ("merged", "removed"):
        notes.append(f"ticket {t.number} is {t.state}; opening a new ticket")
        return None
    policy = "possible"
    q = rt.config.queue_by_name(t.queue)
    if q is not None:
        policy = q.follow_up
    closed = t.state_type == "closed"
    if closed and policy == "reject":
        d.kind = "reject"
        d.reason += f"; ticket is {t.state} and queue {t.queue} rejects follow-ups"
        return d
    if closed and policy == "new-ticket":
        d.kind = "new-ticket"
        d.reason += f"; ticket is {t.state} and queue {t.queue} opens a new ticket"
        return d
    keep = is_set(ctx.param("FollowUp-State-Keep"))
    if keep:
        d.new_state = None
    elif ctx.param("FollowUp-State"):
        d.new_state = checked_state(ctx, rt, "FollowUp-State", pm.followup_state)
    elif t.state_type != "new":
        d.new_state = pm.followup_state
    if d.new_state == t.state:
        d.new_state = None
    return d


def _ticket_changes(ctx: MessageContext, rt: Runtime, t: Any, d: Decision) -> dict[str, Any]:
    pm = rt.config.postmaster
    vals: dict[str, Any] = {}
    if d.new_state is not None:
        vals["state"] = d.new_state
        vals["state_type"] = pm.states.get(d.new_state, "open")
        if vals["state_type"] != "pending":
            vals["pending_until"] = None
    pend = ctx.param("FollowUp-State-PendingTime")
    # the state the ticket is left in (OTOBO sets a pending time for a pending one only)
    if pend and vals.get("state_type", t.state_type) != "pending":
        pending_ignored(ctx, "FollowUp-State-PendingTime", pend, vals.get("state", t.state))
    elif pend:
        when = parse_pending_time(pend)
        if when is None:
            ctx.log.log("Error", "FollowUp-State-PendingTime", f"{pend!r} is not a time")
        else:
            vals["pending_until"] = when
    if ctx.param("FollowUp-Priority"):
        vals["priority"] = checked_priority(ctx, rt, "FollowUp-Priority", t.priority)
    if ctx.param("FollowUp-Queue"):
        name = rt.config.queue_named(ctx.param("FollowUp-Queue"))
        if name is None:
            ctx.log.log("Error", "FollowUp-Queue", f"queue {ctx.param('FollowUp-Queue')!r} does "
                        f"not exist; ticket stays in {t.queue}")
        else:
            vals["queue"] = name
    simple = {"Title": "title", "Type": "type", "Service": "service", "SLA": "sla",
              "Owner": "owner", "Responsible": "responsible", "Lock": "lock",
              "CustomerNo": "customer_no", "CustomerUser": "customer_user"}
    for name, col in simple.items():
        value = ctx.param(f"FollowUp-{name}")
        if value:
            vals[col] = value[:1000] if col == "title" else value
    dfs = dynamic_fields(ctx, "FollowUp-")
    if dfs:
        vals["dynamic_fields"] = {**(t.dynamic_fields or {}), **dfs}
    return vals


def apply(ctx: MessageContext, rt: Runtime, conn: Connection, d: Decision) -> None:
    """Write the decision: ticket changes, bounce record, and the ctx for the store stage."""
    p = ctx.parsed
    assert p is not None
    hook = rt.config.gateway.ticket_hook
    ctx.trace.append(f"follow-up: {d.reason}")
    if d.kind == "new-ticket":
        ctx.linked_ticket_id = d.ticket_id
        if not ctx.param("Title"):
            ctx.params["Title"] = strip_number(p.subject, d.ticket_number, hook) or "(no subject)"
        ctx.log.log("Notice", "FollowUp", f"{d.reason}; new ticket linked to {d.ticket_number}")
        return
    ctx.action = "followup"
    ctx.ticket_id, ctx.ticket_number, ctx.queue = d.ticket_id, d.ticket_number, d.queue
    if d.kind == "bounce":
        info = _bounce.parse_dsn(p.msg)
        status = "failed"
        if info is not None and info.action in ("delayed", "delivered", "relayed", "expanded"):
            status = info.action
        error = info.error if info is not None else "delivery failed"
        conn.execute(update(Article).where(Article.id == d.article_id).values(
            transmission_status=status, transmission_error=error[:4000]))
        ctx.log.log("Notice", "Bounce", f"recorded on outgoing article {d.article_id} of ticket "
                    f"{d.ticket_number}: {status}: {error}")
        return
    if d.kind == "reject":
        ctx.log.log("Notice", "FollowUp", f"{d.reason}; article stored, ticket {d.ticket_number} "
                    f"stays {d.ticket_state}")
        return
    t = conn.execute(select(Ticket).where(Ticket.id == d.ticket_id)).first()
    assert t is not None
    vals = _ticket_changes(ctx, rt, t, d)
    if vals:
        repo.update_ticket(conn, d.ticket_id, **vals)
        ctx.queue = vals.get("queue", d.queue)
    state = vals.get("state", t.state)
    ctx.log.log("Info", "FollowUp", f"{d.reason}; ticket {d.ticket_number} "
                f"{'now ' + state if 'state' in vals else 'stays ' + t.state}")


def followup_stage(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    if ctx.action != "new" or ctx.parsed is None:
        return
    notes: list[str] = []
    d = decide(ctx, rt, conn, notes)
    for n in notes:
        ctx.trace.append(f"follow-up: {n}")
        ctx.log.log("Info", "FollowUp", n)
    if d is not None:
        apply(ctx, rt, conn, d)

