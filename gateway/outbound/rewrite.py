"""Which queue and ticket an outgoing message belongs to, and the header rewrite.

Queue, in order: `deskgate send --queue`; an X-Deskgate-Queue header from an
authenticated or allowed client; the ticket it replies to (In-Reply-To,
References, ticket number in the Subject); a From address that is a system
address; the submitting user's default_queue; the postmaster default queue.

The rewrite makes From `"Display Name" <queue address>` (RFC 5322 quoting by
email.utils.formataddr), the envelope sender the same address, puts
`[Ticket#N]` in the Subject, strips internal X-headers and Bcc, and adds
Message-ID and Date when missing.
"""

from __future__ import annotations

import email.utils
import io
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32

from sqlalchemy import Connection, select

from gateway.errors import PermanentError
from gateway.inbound.parse import address_header_text, decode_header_value
from gateway.inbound.xheaders import canonical
from gateway.outbound.context import OutboundContext, unique_recipients
from gateway.outbound.headers import header_safe
from gateway.runtime import Runtime
from gateway.store import repo
from gateway.store.tables import Ticket, helpdesk_ref

_POLICY = compat32.clone(linesep="\r\n")
_MSGID_RE = re.compile(r"<[^<>\s]+>")


def serialize(msg: Message) -> bytes:
    """CRLF bytes without re-folding headers or mangling From lines."""
    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(msg)
    return buf.getvalue()


def set_header(msg: Message, name: str, value: str) -> None:
    """Set `name` at the position of its first occurrence (others dropped), else append;
    the value is made safe first (no control characters, no folding)."""
    value = header_safe(value)
    lname = name.lower()
    out: list[tuple[str, str]] = []
    done = False
    for k, v in msg._headers:  # type: ignore[attr-defined]
        if k.lower() == lname:
            if not done:
                out.append((name, value))
                done = True
            continue
        out.append((k, v))
    if not done:
        out.append((name, value))
    msg._headers = out  # type: ignore[attr-defined]


def raw_header(msg: Message, name: str) -> str:
    """The first `name` field's value as stored: 8-bit bytes stay surrogate escapes, so
    written back they are the bytes that came in (msg.get turns them into U+FFFD)."""
    lname = name.lower()
    for k, v in msg._headers:  # type: ignore[attr-defined]
        if k.lower() == lname:
            return str(v)
    return ""


def header_text(msg: Message, name: str) -> str:
    return decode_header_value(msg.get(name, ""))


def from_address(msg: Message) -> str:
    """The address of the first mailbox of From, read from the header as it came (an
    encoded display name spelling an address is a name, not that address)."""
    found = address_header_text(_as_text(msg.get("From", "")))[1]
    return found[0] if found else ""


def _as_text(value: object) -> str:
    """A header value as text: compat32 gives an email.header.Header (not a str) for
    a header with raw 8-bit bytes; its str() is the text with those bytes decoded."""
    return value if isinstance(value, str) else str(value)


def parse_submission(ctx: OutboundContext, rt: Runtime) -> None:
    """Parse the submitted bytes; trusted clients' internal X-headers become params."""
    if ctx.msg is None:
        ctx.msg = message_from_bytes(ctx.raw, policy=compat32)
    if ctx.trusted:
        for name, value in ctx.msg.items():
            key = canonical(name, rt.prefixes) if name[:2].lower() == "x-" else None
            if key is not None:
                ctx.params.setdefault(key, decode_header_value(value))
    if ctx.kind == "message" and not ctx.return_path:
        # The null sender asks for no DSN (RFC 5321 4.5.5): no return path then.
        ctx.return_path = ctx.mail_from


def ticket_number_in(subject: str, hook: str) -> str:
    m = re.search(re.escape(hook) + r":?\s*(\d{6,})", subject, re.IGNORECASE)
    return m.group(1) if m else ""


# Request Tracker names its ticket in every mail it sends: "X-RT-Ticket: rtname #123",
# and "<RT-Ticket-123@organization>" in References.
_RT_TICKET_RE = re.compile(r"#\s*(\d+)\s*$")
_RT_REFERENCE_RE = re.compile(r"<RT-Ticket-(\d+)@[^<>\s]+>")


def helpdesk_ticket_ref(msg: Message, helpdesk: str) -> str:
    """The helpdesk's ticket id a mail from the helpdesk names in its headers, or ''."""
    if helpdesk == "rt-rest2":
        m = _RT_TICKET_RE.search(header_text(msg, "X-RT-Ticket").strip())
        if m:
            return m.group(1)
        m = _RT_REFERENCE_RE.search(header_text(msg, "References") + " "
                                    + header_text(msg, "In-Reply-To"))
        return m.group(1) if m else ""
    return ""


def find_ticket(conn: Connection, msg: Message, hook: str, helpdesk: str = ""
                ) -> tuple[int, str, str] | None:
    """(id, number, queue) of the ticket a message replies to, or None."""
    ref = helpdesk_ticket_ref(msg, helpdesk)
    if ref:
        row = conn.execute(select(Ticket.id, Ticket.number, Ticket.queue)
                           .where(Ticket.helpdesk_ticket_id == ref,
                                  helpdesk_ref(Ticket.helpdesk_ticket_id))
                           .order_by(Ticket.id).limit(1)).first()
        if row is not None:
            return row.id, row.number or "", row.queue
    ids = _MSGID_RE.findall(header_text(msg, "In-Reply-To") + " "
                            + header_text(msg, "References"))
    if ids:
        found = repo.articles_by_message_ids(conn, ids[-20:])
        row = (conn.execute(select(Ticket.id, Ticket.number, Ticket.queue)
                            .where(Ticket.id == found[-1].ticket_id)).first()
               if found else None)
        if row is not None:
            return row.id, row.number or "", row.queue
    number = ticket_number_in(header_text(msg, "Subject"), hook)
    if number:
        t = repo.ticket_by_number(conn, number)
        if t is not None:
            return t.id, t.number or "", t.queue
    return None


def resolve(ctx: OutboundContext, rt: Runtime, conn: Connection,
            allocate: Callable[[], str] | None = None) -> None:
    """Decide queue and ticket, and give a new ticket its number. Re-runnable.

    With `allocate` (a TicketNumbers.take) the connection is only read from, so
    submission can resolve on a worker thread instead of in the writer."""
    cfg = rt.config
    msg = ctx.msg
    assert msg is not None
    if ctx.kind == "dsn":
        return
    trace: list[str] = []
    queue = ""
    if ctx.requested_queue:
        q = cfg.queue_by_name(ctx.requested_queue)
        if q is None:
            raise PermanentError(f"queue {ctx.requested_queue!r} does not exist")
        queue = q.name
        trace.append(f"queue {queue} requested")
    if not queue and ctx.params.get("Queue"):
        q = cfg.queue_by_name(ctx.params["Queue"])
        if q is not None:
            queue = q.name
            trace.append(f"queue {queue} from X-header")
        else:
            ctx.log.log("Error", "Queue", f"queue {ctx.params['Queue']!r} from X-header does "
                        "not exist; ignored")
    if ctx.ticket_id is None:
        found = find_ticket(conn, msg, cfg.gateway.ticket_hook, cfg.helpdesk.type)
        if found is not None:
            ctx.ticket_id, ctx.ticket_number, tqueue = found
            ctx.new_ticket = False
            if not queue:
                queue = tqueue
                trace.append(f"queue {queue} from ticket {ctx.ticket_number}")
    if not queue:
        addr = cfg.address_by_email(from_address(msg))
        if addr is not None and addr.queue and cfg.queue_by_name(addr.queue):
            queue = cfg.queue_by_name(addr.queue).name  # type: ignore[union-attr]
            trace.append(f"queue {queue} from system address {addr.email}")
    if not queue and ctx.user is not None and ctx.user.default_queue:
        queue = ctx.user.default_queue
        trace.append(f"queue {queue}: default of user {ctx.user.name}")
    if not queue:
        queue = ctx.queue or cfg.postmaster.default_queue
        trace.append(f"queue {queue} (default)")
    ctx.queue = queue
    ctx.queue_config = cfg.queue_by_name(queue)
    if cfg.helpdesk.enabled:
        # The helpdesk numbers its tickets: a reply keeps the number its Subject carries
        # (adopted by a ticket that has none yet), a message without one gets none.
        number = ticket_number_in(header_text(msg, "Subject"), cfg.gateway.ticket_hook)
        if number and number != ctx.ticket_number:
            ctx.helpdesk_number = number
            ctx.ticket_number = ctx.ticket_number or number
        if ctx.ticket_id is None:
            ctx.new_ticket = True
            # The helpdesk's mail for a ticket whose hand-off it has not answered yet
            # (RT mails its auto-reply while it creates the ticket): the new ticket keeps
            # the helpdesk's id and is merged into the handed-off one when that answer comes.
            ctx.helpdesk_ref = helpdesk_ticket_ref(msg, cfg.helpdesk.type)
            trace.append(f"new ticket (the helpdesk's {number})" if number
                         else "new ticket (no number: the helpdesk numbers tickets)")
    elif ctx.ticket_id is None:
        ctx.new_ticket = True
        ctx.ticket_number = (allocate() if allocate is not None
                             else repo.next_ticket_number(conn, cfg.gateway.system_id))
        trace.append(f"new ticket {ctx.ticket_number}")
    ctx.trace = trace
    ctx.log.log("Info", "Queue", "; ".join(trace))


class TicketNumbers:
    """Ticket numbers for outgoing messages, reserved from the shared per-day counter
    in blocks, so a submission needs no write of its own to learn its number.

    Numbers stay unique across processes and nodes (the counter is advanced
    atomically); a block's unused numbers are skipped when the process stops, which
    is why one-shot processes use blocks of 1.
    """

    def __init__(self, reserve: Callable[[str, int], int], system_id: Callable[[], str],
                 block: int = 20) -> None:
        self.reserve = reserve          # (day, count) → the last number of the block
        self.system_id = system_id
        self.block = block
        self._lock = threading.Lock()
        self._day = ""
        self._next = 1
        self._end = 0

    def take(self) -> str:
        day = datetime.now(UTC).strftime("%Y%m%d")
        with self._lock:
            if day != self._day or self._next > self._end:
                end = self.reserve(day, self.block)
                self._day, self._next, self._end = day, end - self.block + 1, end
            n = self._next
            self._next += 1
        return f"{day}{self.system_id()}{n:05d}"


def reserve_numbers(conn: Connection, day: str, count: int) -> int:
    """Advance the day's ticket counter by `count`; returns its new value."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from gateway.store.tables import TicketCounter

    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = ins(TicketCounter).values(day=day, value=count).on_conflict_do_update(
        index_elements=["day"], set_={"value": TicketCounter.value + count})
    return int(conn.execute(stmt.returning(TicketCounter.value)).scalar_one())


def system_from(ctx: OutboundContext, rt: Runtime) -> tuple[str, str]:
    """(display name, address) for From: the queue's system address."""
    cfg = rt.config
    candidates = []
    if ctx.queue_config is not None and ctx.queue_config.address:
        candidates.append(ctx.queue_config.address)
    assert ctx.msg is not None
    own = cfg.address_by_email(from_address(ctx.msg))
    if own is not None and own.valid == "valid":
        candidates.append(own.email)
    default_q = cfg.queue_by_name(cfg.postmaster.default_queue)
    if default_q is not None and default_q.address:
        candidates.append(default_q.address)
    for address in candidates:
        a = cfg.address_by_email(address)
        return (a.display_name if a else ""), address
    raise PermanentError(f"queue {ctx.queue!r} has no system address to send from")


def rewrite(ctx: OutboundContext, rt: Runtime) -> None:
    msg = ctx.msg
    assert msg is not None
    cfg = rt.config
    prefixes = tuple(p.lower() for p in cfg.gateway.header_prefixes)
    for name in {k for k in msg if k.lower().startswith(prefixes) or k.lower() == "bcc"}:
        del msg[name]
    if ctx.kind != "dsn":
        display, address = system_from(ctx, rt)
        set_header(msg, "From", email.utils.formataddr((display, address), charset="utf-8")
                   if display else address)
        ctx.from_email = address
        ctx.sender = "" if ctx.kind == "auto-response" else address
        if ctx.ticket_number and not cfg.helpdesk.enabled:
            hook = cfg.gateway.ticket_hook
            subject_raw = raw_header(msg, "Subject")
            if ticket_number_in(decode_header_value(subject_raw), hook) != ctx.ticket_number:
                tag = f"[{hook}{ctx.ticket_number}]"
                set_header(msg, "Subject", f"{tag} {subject_raw}".rstrip())
    if "Date" not in msg:
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    if "Message-ID" not in msg:
        domain = (ctx.from_email or cfg.gateway.hostname).rpartition("@")[2] or "localhost"
        msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    ctx.message_id = str(msg["Message-ID"]).strip()


def recipients_from_headers(msg: Message) -> list[str]:
    """To, Cc and Bcc addresses (for `deskgate send` without -r), unique, in order, each
    as first written: a relay keeps a recipient's case (RFC 5321 2.4)."""
    found: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in msg.get_all(name, []):
            text, addrs = address_header_text(_as_text(value))
            # address_header_text lower-cases; the header's own spelling of each
            spelt: dict[str, str] = {}
            for _, a in email.utils.getaddresses([text]):
                spelt.setdefault(a.lower(), a)
            found += [spelt.get(a, a) for a in addrs]
    return unique_recipients(found)
