"""SQLAlchemy 2 typed models. The schema is created and changed only by Alembic
migrations (gateway/store/migrations); these classes describe it for queries."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Queue(Base):
    """A ticket queue, mirrored from [[queue]]."""

    __tablename__ = "queue"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    address: Mapped[str] = mapped_column(String(320), default="")
    follow_up: Mapped[str] = mapped_column(String(20), default="possible")
    comment: Mapped[str] = mapped_column(Text, default="")
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SystemAddress(Base):
    """A system address, mirrored from [[address]]; never deleted, only invalidated."""

    __tablename__ = "system_address"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    queue: Mapped[str] = mapped_column(String(200), default="")
    valid: Mapped[str] = mapped_column(String(30), default="valid")
    comment: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text, default="")
    in_config: Mapped[bool] = mapped_column(Boolean, default=True)
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TicketCounter(Base):
    """Per-day counter behind ticket numbers (YYYYMMDD + system_id + counter)."""

    __tablename__ = "ticket_counter"
    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Ticket(Base):
    __tablename__ = "ticket"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # NULL with a helpdesk behind deskgate until the hand-off tells the helpdesk's number.
    number: Mapped[str | None] = mapped_column(String(40), unique=True, nullable=True)
    title: Mapped[str] = mapped_column(Text, default="")
    queue: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(100))
    state_type: Mapped[str] = mapped_column(String(20))
    priority: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(100), default="")
    service: Mapped[str] = mapped_column(String(200), default="")
    sla: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    responsible: Mapped[str] = mapped_column(String(200), default="")
    lock: Mapped[str] = mapped_column(String(20), default="unlock")
    customer_no: Mapped[str] = mapped_column(String(200), default="")
    customer_user: Mapped[str] = mapped_column(String(320), default="")
    pending_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dynamic_fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    linked_ticket_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ticket.id"),
                                                         nullable=True)
    # The helpdesk's ticket (empty when standalone or not handed off yet).
    # Indexed over the tickets that have one (partial indexes, 0016): a query looks a
    # ticket up by them with `<> ''` too (helpdesk_ref()), or the database scans.
    helpdesk_ticket_id: Mapped[str] = mapped_column(String(100), default="")
    helpdesk_ticket_number: Mapped[str] = mapped_column(String(100), default="")
    # The classifier's decision on a new ticket ({} when it did not run): queue, priority,
    # confidences, runner-up, whether each was applied (gateway.classify).
    classification: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = tuple(
        Index(f"ix_ticket_{col}", col, sqlite_where=text(f"{col} <> ''"),
              postgresql_where=text(f"{col} <> ''"))
        for col in ("helpdesk_ticket_id", "helpdesk_ticket_number"))


class TicketMove(Base):
    """An agent's correction of a ticket's queue/priority (`deskgate tickets move`);
    the ticket keeps the new values, the classifier learns from them."""

    __tablename__ = "ticket_move"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigId, ForeignKey("ticket.id"), index=True)
    from_queue: Mapped[str] = mapped_column(String(200))
    to_queue: Mapped[str] = mapped_column(String(200))
    from_priority: Mapped[str] = mapped_column(String(100))
    to_priority: Mapped[str] = mapped_column(String(100))
    by: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RawMessage(Base):
    """The bytes of every message as received, whatever happened to it afterwards."""

    __tablename__ = "raw_message"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))     # not indexed: no query looks it up
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Article(Base):
    __tablename__ = "article"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigId, ForeignKey("ticket.id"), index=True)
    direction: Mapped[str] = mapped_column(String(10))          # incoming | outgoing
    sender_type: Mapped[str] = mapped_column(String(20))        # customer | agent | system
    is_visible_for_customer: Mapped[bool] = mapped_column(Boolean, default=True)
    from_addr: Mapped[str] = mapped_column(Text, default="")
    from_email: Mapped[str] = mapped_column(String(320), default="")   # not indexed (0008)
    to_addr: Mapped[str] = mapped_column(Text, default="")
    cc_addr: Mapped[str] = mapped_column(Text, default="")
    reply_to: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    references: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(200), default="text/plain")
    body: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    headers: Mapped[list[Any]] = mapped_column(default=list)     # [[name, value], ...]
    loop: Mapped[bool] = mapped_column(Boolean, default=False)
    crypto: Mapped[dict[str, Any]] = mapped_column(default=dict)
    transmission_status: Mapped[str] = mapped_column(String(20), default="")
    transmission_error: Mapped[str] = mapped_column(Text, default="")
    raw_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("raw_message.id"),
                                               nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Only the articles deskgate sent (0016): an inbound article's Message-ID is found
    # through its deliveries' unique key (gateway.store.repo.articles_by_message_ids), so
    # that a stored message adds its random key to one index, not two.
    __table_args__ = (Index("ix_article_message_id", "message_id",
                            sqlite_where=text("direction <> 'incoming'"),
                            postgresql_where=text("direction <> 'incoming'")),)


class Attachment(Base):
    __tablename__ = "attachment"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("article.id"), index=True)
    filename: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(200), default="application/octet-stream")
    content_id: Mapped[str] = mapped_column(Text, default="")
    disposition: Mapped[str] = mapped_column(String(20), default="attachment")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Delivery(Base):
    """One accepted (message, recipient): makes redeliveries idempotent."""

    __tablename__ = "delivery"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(998))
    content_hash: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(320))
    # the hand-off and `keys redecrypt` read an article's recipients by it (0009)
    article_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    outcome: Mapped[str] = mapped_column(String(20))    # stored | ignored | quarantined
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Message-ID first (0016): the key also finds an inbound article by its Message-ID.
    __table_args__ = (UniqueConstraint("message_id", "content_hash", "recipient",
                                       name="uq_delivery"),)


class Quarantine(Base):
    """Messages the pipeline could not process, kept raw so nothing is lost."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(100))
    envelope_from: Mapped[str] = mapped_column(Text, default="")
    recipients: Mapped[list[Any]] = mapped_column(default=list)
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Communication(Base):
    """Communication log (OTOBO's model): one exchange through one door."""

    __tablename__ = "communication"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transport: Mapped[str] = mapped_column(String(20), default="Email")
    direction: Mapped[str] = mapped_column(String(10))            # Incoming | Outgoing
    status: Mapped[str] = mapped_column(String(20))                # Processing | Successful | ...
    account_type: Mapped[str] = mapped_column(String(20))          # LMTP, IMAPS, SMTP, STDIN, ...
    account: Mapped[str] = mapped_column(String(200), default="")
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CommObject(Base):
    __tablename__ = "comm_object"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    communication_id: Mapped[int] = mapped_column(BigId, ForeignKey("communication.id"),
                                                  index=True)
    type: Mapped[str] = mapped_column(String(20))                  # Connection | Message
    status: Mapped[str] = mapped_column(String(20))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    article_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    outbound_id: Mapped[int | None] = mapped_column(BigId, nullable=True)


class CommEntry(Base):
    __tablename__ = "comm_entry"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    object_id: Mapped[int] = mapped_column(BigId, ForeignKey("comm_object.id"), index=True)
    # not indexed (0016): a communication's entries are read through its objects
    communication_id: Mapped[int] = mapped_column(BigId)
    priority: Mapped[str] = mapped_column(String(10))              # Error Warn Notice Info Debug
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboundMessage(Base):
    """A message in the durable outbound queue, bytes included: one row per copy (a
    message split by encryption has several, all on the same article)."""

    __tablename__ = "outbound_message"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default="message")  # message|auto-response|dsn
    queue: Mapped[str] = mapped_column(String(200), default="")
    sender: Mapped[str] = mapped_column(String(320), default="")       # envelope sender, '' = <>
    return_path: Mapped[str] = mapped_column(String(320), default="")  # DSNs go here
    submitter: Mapped[str] = mapped_column(String(200), default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    ticket_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    article_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str] = mapped_column(String(200), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    warned: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # DSN (RFC 3461, 0017): MAIL FROM's RET (FULL | HDRS) and ENVID, decoded; '' = not given
    dsn_ret: Mapped[str] = mapped_column(String(4), default="", server_default="")
    dsn_envid: Mapped[str] = mapped_column(String(100), default="", server_default="")
    __table_args__ = (Index("ix_outbound_message_due", "status", "next_attempt"),
                      Index("ix_outbound_message_article_id", "article_id"))


class OutboundRecipient(Base):
    """One recipient of an outbound message with its own outcome."""

    __tablename__ = "outbound_recipient"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    outbound_id: Mapped[int] = mapped_column(BigId, ForeignKey("outbound_message.id",
                                                               ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_code: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # DSN (RFC 3461, 0017): RCPT TO's NOTIFY (NEVER, or SUCCESS,FAILURE,DELAY or some of
    # them) and ORCPT (addr-type;address, decoded); '' = not given
    dsn_notify: Mapped[str] = mapped_column(String(30), default="", server_default="")
    dsn_orcpt: Mapped[str] = mapped_column(String(500), default="", server_default="")


class AutoResponse(Base):
    """Auto-responses sent, counted per address for max_emails_per_address_per_day."""

    __tablename__ = "auto_response"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    ticket_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    outbound_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    sent: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_auto_response_address_sent", "address", "sent"),)


class AutoResponseRequest(Base):
    """An auto-response decided by the inbound commit, not yet built: the outbound sender
    turns it into queue rows (rewrite, S/MIME/PGP, DKIM) and deletes it in one
    transaction, so it is sent once even when the gateway stops in between."""

    __tablename__ = "auto_response_request"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ticket_id: Mapped[int] = mapped_column(BigId)
    ticket_number: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))          # new | followup | reject
    address: Mapped[str] = mapped_column(String(320))
    counter_id: Mapped[int] = mapped_column(BigId)        # its auto_response row
    data: Mapped[bytes] = mapped_column(LargeBinary)      # the unsigned message
    # Builds started (counted before each; the database's failures are not), when to build it
    # again and why the last one failed; given up when relay.retry runs out.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")


# ---------------------------------------------------------------- mailbox poller


class PollerFolder(Base):
    """IMAP `keep` mode: the UIDVALIDITY and highest committed UID of a folder."""

    __tablename__ = "poller_folder"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    folder: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PollerSeen(Base):
    """Committed messages the server still holds: POP3 `keep` mode's UIDLs (POP3 has
    no ordered UIDs); IMAP delete/move mode's flagged \\Deleted awaiting EXPUNGE."""

    __tablename__ = "poller_seen"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidl: Mapped[str] = mapped_column(String(100), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PollerOversized(Base):
    """Messages over the account's max_message_size, left on the server."""

    __tablename__ = "poller_oversized"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account: Mapped[str] = mapped_column(String(200), index=True)
    folder: Mapped[str] = mapped_column(String(500))
    key: Mapped[str] = mapped_column(String(200))        # "<uidvalidity>:<uid>" or the UIDL
    size: Mapped[int] = mapped_column(BigInteger)
    # The max_message_size it was left under (None: recorded before 0010): IMAP keep
    # mode reads past it, so it is fetched only once the configured limit is larger.
    size_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(Text, default="")
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("account", "folder", "key", name="uq_poller_oversized"),)


class PollerRetry(Base):
    """IMAP `keep` mode: messages below the folder position that failed temporarily
    for a reason of their own (each run tries them again until one succeeds), or
    that another client had flagged \\Deleted (attempts 0; fetched once unflagged)."""

    __tablename__ = "poller_retry"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    folder: Mapped[str] = mapped_column(String(500), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)   # "<uidvalidity>:<uid>"
    size: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    reason: Mapped[str] = mapped_column(Text, default="")
    first_failed: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_failed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PollerAccount(Base):
    """Status of a poller account: the last run and the last error (never silent)."""

    __tablename__ = "poller_account"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="")   # Successful | Warning | Failed
    last_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_fetched: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    last_success: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    communication_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # When `serve` polls the account next (after a failure: the retry), as planned by
    # the node that ran it last; an IDLE account is polled sooner when mail arrives.
    next_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)


class PollerToken(Base):
    """OAuth2 refresh token of an account as last rotated by the token endpoint."""

    __tablename__ = "poller_token"
    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    refresh_token: Mapped[str] = mapped_column(Text)
    # sha256 of the refresh token in the config when this row was written: a new
    # token in the config (the operator re-consented) wins over the stored one.
    config_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ---------------------------------------------------------------- helpdesk hand-off


class Handoff(Base):
    """Outbox of the helpdesk hand-off: one row per stored article, committed with it,
    delivered in order per ticket by a worker holding a lease."""

    __tablename__ = "handoff"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigId, ForeignKey("ticket.id"))
    article_id: Mapped[int] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(20))                   # create | followup
    key: Mapped[str] = mapped_column(String(100))                   # idempotency key
    helpdesk: Mapped[str] = mapped_column(String(30))               # [helpdesk] type
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)       # of the current cycle
    # attempts of the cycles before `deskgate handoff retry` started a fresh one
    earlier_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the current cycle began: queued, or `deskgate handoff retry`. A row whose
    # attempts are interrupted twice in a row is deferred, then failed, by the time since.
    cycle_started: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str] = mapped_column(String(200), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    decisions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (Index("ix_handoff_due", "status", "next_attempt"),
                      Index("ix_handoff_ticket", "ticket_id", "id"),
                      UniqueConstraint("key", name="uq_handoff_key"))


def sent_by_us(direction: Any) -> ColumnElement[bool]:
    """`direction <> 'incoming'`, the condition of ix_article_message_id (a literal, for
    SQLite to use the partial index)."""
    return direction != literal_column("'incoming'")  # type: ignore[no-any-return]


def helpdesk_ref(column: Any) -> ColumnElement[bool]:
    """`column <> ''` for Ticket.helpdesk_ticket_id or helpdesk_ticket_number, written as
    their partial indexes' condition (a literal, not a bound parameter): a lookup by one
    of them adds it, or SQLite does not use the index."""
    return column != literal_column("''")  # type: ignore[no-any-return]
