"""Values passed between pipeline stages. Stages hold no per-message state of
their own; everything about one message lives in its MessageContext."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from gateway.commlog import CommObj
from gateway.commlog_names import Priority
from gateway.errors import SmtpReply

if TYPE_CHECKING:
    from gateway.store import Deferred


@dataclass(frozen=True)
class Envelope:
    """What the door knows before the message is read: who, to whom, through which door."""

    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes
    source: str = "LMTP"           # communication-log account type: LMTP, STDIN, IMAPS, ...
    account: str = ""              # account name, or the peer for LMTP
    trusted: bool = False
    dispatch_queue: str = ""       # set by a poller account with dispatch = "queue"
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # What the MTA said with XFORWARD: the original SMTP client and its own queue ID.
    # For the communication log and the log line only; nothing is decided on them.
    mta_client: str = ""
    mta_queue_id: str = ""

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass
class AttachmentData:
    filename: str
    content_type: str
    content: bytes
    content_id: str = ""
    disposition: str = "attachment"


@dataclass
class Parsed:
    """The message as the pipeline sees it: decoded headers, bodies, attachments."""

    msg: Message
    headers: list[tuple[str, str]]
    subject: str = ""
    from_addr: str = ""
    from_email: str = ""
    to_addr: str = ""
    cc_addr: str = ""
    reply_to: str = ""
    message_id: str = ""
    in_reply_to: str = ""
    references: str = ""
    content_type: str = "text/plain"
    body: str = ""
    body_html: str | None = None
    attachments: list[AttachmentData] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        """First value of a header (decoded), or '' when missing."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return ""

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass
class Crypto:
    encrypted: bool = False
    decrypted: bool = False
    signed: bool = False
    signature_valid: bool | None = None
    signer: str = ""
    method: str = ""        # smime | pgp
    error: str = ""
    # Inline PGP with text outside the signed block(s): that text is marked in the body.
    partially_signed: bool = False
    # Every signature found, in order: {method, signer, key_id, fingerprint, valid, error}.
    signatures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"encrypted": self.encrypted, "decrypted": self.decrypted, "signed": self.signed,
                "signature_valid": self.signature_valid, "signer": self.signer,
                "method": self.method, "error": self.error,
                "partially_signed": self.partially_signed,
                "signatures": [dict(s) for s in self.signatures]}


Action = Literal["new", "followup", "ignore", "quarantine", "duplicate"]

# continue: the next stage runs. deliver: stored. ignore, duplicate: accepted and
# dropped (nothing stored). quarantine: kept raw for the postmaster. tempfail: the
# MTA tries again later.
VerdictKind = Literal["continue", "deliver", "ignore", "duplicate", "quarantine", "tempfail"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a stage decided about a message, as a value.

    A stage returns one (None means continue); gateway.inbound.pipeline.smtp_reply
    is the one place that turns a verdict into the SMTP reply.
    """

    kind: VerdictKind
    reason: str = ""


CONTINUE = Verdict("continue")
DELIVER = Verdict("deliver")


# The comm log priority of a hit, by kind (a filter that matched is routine).
_HIT_PRIORITY: dict[str, Priority] = {"filter": "Info"}


@dataclass(frozen=True, slots=True)
class Hit:
    """One filter or rule evaluated on a message: which, whether it hit, and why.

    `kind` is the stage ("filter", "loop", "bounce"), `name` the filter's or
    rule's name ("" for the stage's own rule). The communication log, the trace
    and `filter test` are all written from these.
    """

    kind: str
    name: str
    hit: bool
    reason: str

    def text(self) -> str:
        return f"{self.name}: {self.reason}" if self.name else self.reason

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "hit": self.hit, "reason": self.reason}


@dataclass
class MessageContext:
    """Per-message state carried through the stages."""

    envelope: Envelope
    log: CommObj
    parsed: Parsed | None = None
    # X-header values in effect, keyed by the name without prefix ("Queue",
    # "DynamicField-Server", "FollowUp-State"); filled by trust, changed by filters.
    params: dict[str, str] = field(default_factory=dict)
    crypto: Crypto = field(default_factory=Crypto)
    loop: bool = False
    is_bounce: bool = False
    bounced_message_id: str = ""
    queue: str = ""
    action: Action = "new"
    ticket_id: int | None = None        # follow-up target
    linked_ticket_id: int | None = None  # new ticket linked to a closed one
    ticket_number: str = ""
    article_id: int | None = None
    handoff_id: int | None = None        # the helpdesk hand-off row committed with the article
    # The classifier's prediction (gateway.classify), made before the commit for a message
    # that would land in the default queue; recorded on the ticket when it is new.
    classification: dict[str, Any] | None = None
    trace: list[str] = field(default_factory=list)   # why things happened (filter test, log)
    # False on the first run of a commit job: the dedupe stage then trusts the unique
    # delivery row instead of looking (a retry of the message looks).
    lookup_duplicates: bool = True
    verdict: Verdict | None = None       # set by the stage that ended the message early
    hits: list[Hit] = field(default_factory=list)   # every filter/rule evaluated, in order
    # The buffer of the writer transaction this run of the commit stages is in (rows
    # written at its end, gateway.store.Deferred); None outside a writer job.
    deferred: Deferred | None = None

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    def record_hit(self, hit: Hit) -> None:
        """Record a filter/rule result; one that hit also goes to the trace and the log."""
        self.hits.append(hit)
        if hit.hit:
            self.trace.append(f"{hit.kind} {hit.name}: {hit.reason}" if hit.name
                              else f"{hit.kind}: {hit.reason}")
            self.log.log(_HIT_PRIORITY.get(hit.kind, "Notice"), hit.kind.capitalize(),
                         hit.text())


@dataclass(frozen=True)
class Outcome:
    """The result of one message for each of its recipients."""

    replies: tuple[SmtpReply, ...]
    action: Action
    ticket_number: str = ""
    article_id: int | None = None
    detail: str = ""
    handoff_id: int | None = None
