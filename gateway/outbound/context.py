"""The per-message state of the outbound path: one outgoing message and its copies.

Defined next to nothing but the types it holds, so the outbound stages (rewrite,
crypto, DKIM, queue) import it without importing the pipeline that runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Literal

from gateway.commlog import CommObj
from gateway.config import QueueConfig, SubmissionUser
from gateway.model import Parsed
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.outbound.received import Received

Kind = Literal["message", "auto-response", "dsn"]


def unique_recipients(addresses: Iterable[str]) -> list[str]:
    """The envelope recipients, each address once in order, as first spelt.

    A relay keeps a recipient's case (RFC 5321 2.4: only the destination host may
    fold a local part, and Postfix relays RCPT TO as it came), while two spellings
    of one address are one recipient, as Postfix's cleanup drops duplicates.
    """
    seen: dict[str, str] = {}
    for a in addresses:
        seen.setdefault(a.lower(), a)
    return list(seen.values())


@dataclass
class OutboundCopy:
    """One form of the message for some of its recipients (one outbound queue row)."""

    recipients: list[str]
    msg: Message
    data: bytes = b""                   # final bytes (after DKIM)
    crypto: dict[str, Any] = field(default_factory=dict)
    outbound_id: int | None = None
    signed: int = 0                     # bytes of DKIM-Signature fields the stage put first


@dataclass
class OutboundContext:
    """One outgoing message on its way through the stages.

    Normally one copy goes to all recipients: `msg`, then `data`. A stage may split
    the message into `copies` (crypto does, when only some recipients have a key);
    `msg` is then the first copy, and a later stage that changes the message must
    change every copy.
    """

    mail_from: str                      # envelope sender as submitted
    recipients: list[str]
    raw: bytes                          # as submitted
    log: CommObj = field(default_factory=lambda: CommObj("Message"))
    source: str = "SMTP"                # communication-log account type: SMTP, STDIN, ...
    account: str = ""                   # user name or peer
    user: SubmissionUser | None = None
    trusted: bool = False               # authenticated or from allow_networks
    kind: Kind = "message"
    requested_queue: str = ""           # `deskgate send --queue`
    msg: Message | None = None          # compat32 message; stages change it in place or swap it
    params: dict[str, str] = field(default_factory=dict)   # internal X-headers (trusted only)
    queue: str = ""
    queue_config: QueueConfig | None = None
    ticket_id: int | None = None
    ticket_number: str = ""
    helpdesk_number: str = ""           # the helpdesk's number from the Subject (with [helpdesk])
    helpdesk_ref: str = ""              # the helpdesk's ticket id its mail names (RT)
    new_ticket: bool = False
    sender: str = ""                    # envelope sender after rewrite ('' = null sender)
    from_email: str = ""                # the system address in From
    return_path: str = ""               # where DSNs go ('' = nobody)
    message_id: str = ""
    data: bytes = b""                   # final bytes (after DKIM)
    crypto: dict[str, Any] = field(default_factory=dict)   # filled by the crypto stage
    copies: list[OutboundCopy] = field(default_factory=list)   # empty: one copy, to all
    article: Parsed | None = None       # the message as stored (taken before "crypto")
    article_id: int | None = None
    outbound_id: int | None = None      # the first queue row
    outbound_ids: list[int] = field(default_factory=list)   # one queue row per copy
    sender_type: str = "agent"
    trace: list[str] = field(default_factory=list)
    # The DSN parameters (RFC 3461) the submission client gave: RET/ENVID, and
    # NOTIFY/ORCPT by recipient (lower case); none for other sources.
    dsn: MessageDsn = field(default_factory=MessageDsn)
    dsn_rcpt: dict[str, RecipientDsn] = field(default_factory=dict)
    # The Received header the queue rows get (gateway.outbound.received; None: none),
    # and the bytes of DKIM-Signature fields in front of `data` it goes below.
    received: Received | None = None
    signed: int = 0

    def final_copies(self) -> list[OutboundCopy]:
        """What goes into the queue: the copies, or the message itself to every recipient."""
        if self.copies:
            return self.copies
        assert self.msg is not None
        return [OutboundCopy(list(self.recipients), self.msg, self.data, self.crypto,
                             signed=self.signed)]
