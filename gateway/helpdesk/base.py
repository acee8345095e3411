"""What a hand-off to the helpdesk is, and what a connector must do with it.

The hand-off worker (gateway.helpdesk.worker) loads one HandoffItem from the
store, calls `Connector.deliver` on a worker thread and records the result. A
connector holds no per-message state; it turns an item into the helpdesk's
ticket (create) or article (follow-up) and answers with the helpdesk's ticket
id and number, or raises HandoffError (temporary → retry on the schedule,
permanent → failed at once).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.inbound.ticket import is_true
from gateway.model import AttachmentData


def one_line(text: str) -> str:
    """A subject as a helpdesk can store and show it: control characters (line breaks,
    tabs, NUL, bell) and line or paragraph separators as spaces, runs of blanks as one.
    A subject decoded from encoded words may hold any of them; RT drops a line break
    (joining the words around it) and keeps the others."""
    return " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                            for c in text).split())


class HandoffError(Exception):
    """The helpdesk did not take the item. `temporary` decides retry or fail."""

    def __init__(self, text: str, *, temporary: bool = True) -> None:
        super().__init__(text)
        self.temporary = temporary


@dataclass(frozen=True)
class HandoffItem:
    """One processed message to deliver into the helpdesk."""

    id: int                        # hand-off row id
    kind: Literal["create", "followup"]
    key: str                       # idempotency key, stable across retries and nodes
    attempts: int                  # attempts before this one (> 0: a retry; check first)
    ticket_id: int                 # deskgate's ticket id
    article_id: int
    # The helpdesk's ticket, when known (follow-ups after the creation was delivered).
    helpdesk_ticket_id: str
    helpdesk_ticket_number: str
    # The helpdesk queue (deskgate queue mapped through [helpdesk.queues]).
    queue: str
    # deskgate's decisions: the X-header values in effect after trust and filters,
    # keyed without prefix ("Queue", "Priority", "DynamicField-Server",
    # "FollowUp-State", ...), completed with the final queue/priority/state/title/
    # customer of the ticket.
    decisions: dict[str, str]
    # The ticket as deskgate stored it: number, title, queue, state, priority, type,
    # customer_user, customer_no, dynamic_fields, ...
    ticket: dict[str, Any]
    # The article: from, to, cc, reply_to, subject, message_id, in_reply_to,
    # references, content_type, body, body_html, sender_type, is_visible_for_customer,
    # loop.
    article: dict[str, Any]
    attachments: list[AttachmentData]
    crypto: dict[str, Any]         # encrypted, decrypted, signed, signature_valid, signer, ...
    # The message to pass on whole (pipe): the original bytes with the sender's
    # untrusted X-headers removed, or with store_decrypted_body the decrypted MIME.
    mime: bytes
    created: str = ""              # ISO time the message was committed
    # The Message-ID of the newest article of this ticket the helpdesk took earlier
    # ("" when none has one): a follow-up the helpdesk threads by References names it.
    helpdesk_message_id: str = ""

    @property
    def loop(self) -> bool:
        """deskgate found the message looping (the stored article's flag, after a filter's
        Loop; an item without it: a true Loop decision): the helpdesk must not
        auto-respond to it."""
        flag = self.article.get("loop")
        if flag is not None:
            return bool(flag)
        return is_true(str(self.decisions.get("Loop", "")))


@dataclass(frozen=True)
class Delivered:
    """The helpdesk's answer: its ticket id and number when it tells them."""

    ticket_id: str = ""
    ticket_number: str = ""
    detail: str = ""               # for the communication log (e.g. "created", "found")
    log: list[tuple[str, str, str]] = field(default_factory=list)   # (priority, key, value)


class Connector(Protocol):
    """One helpdesk type. `deliver` and `check` block; the worker runs them on threads."""

    type: str          # the [helpdesk] type
    account: str       # for the communication log and metrics: url or command, no secrets

    def deliver(self, item: HandoffItem) -> Delivered: ...

    def check(self) -> list[tuple[str, str, str]]:
        """Log in and look around: (status ok|warn|fail, step, text) per step."""
        ...

    def close(self) -> None: ...
