"""The Received header deskgate puts on a message it queues (RFC 5321 4.4).

Worded as Postfix writes it. Mail from a submission client:

    Received: from client.example ([192.0.2.7])
            by helpdesk.example.org (deskgate) with ESMTPSA id 42
            for <customer@example.com>; Sun, 06 Dec 2026 12:00:00 +0000

the client's HELO/EHLO name and its address (deskgate looks up no reverse DNS
name), the protocol of RFC 3848 (ESMTP, with S after TLS and A after AUTH; SMTP
after HELO), the outbound queue id and the recipient when there is exactly one.
As Postfix by default (smtpd_sasl_authenticated_header = no,
smtpd_tls_received_header = no) it names neither the SASL user nor the TLS
cipher. Mail deskgate makes itself gets the local form of Postfix's pickup
(`deskgate send`: "by host (deskgate, from userid 1000) id 42; date") or of its
bounces (auto-responses, DSNs: "by host (deskgate) id 42; date").

The queue id exists only once the queue row is written, after DKIM signed: the
header goes in below the DKIM-Signature fields, where it would be had it been
added before signing (DKIM signs no Received field, so the signature is the
same), and into the queued bytes only, so a transaction run again adds it once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

# What a HELO name may show: printable ASCII but the comment and literal delimiters
# (a client's "name) (forged" stays inside the from clause); others become "?".
_NOT_IN_NAME = re.compile(r"[^\x21-\x7e]|[()\\]")
_ADDRESS = re.compile(r"[\x21-\x7e]+@[\x21-\x7e]+")


def address_literal(host: str) -> str:
    """The client's address as RFC 5321 writes it: [192.0.2.7], [IPv6:2001:db8::7]
    (an IPv4-mapped IPv6 address as the IPv4 one)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "[" + _NOT_IN_NAME.sub("?", host)[:64] + "]"
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def protocol(*, extended: bool, tls: bool, authenticated: bool) -> str:
    """The `with` value of RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA; SMTP after HELO."""
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


@dataclass(frozen=True)
class Received:
    """What the Received header of one message says, but its queue id and recipient."""

    by: str                         # gateway.hostname
    when: datetime
    helo: str = ""                  # submission: the client's HELO/EHLO name
    client: str = ""                # submission: the client's address
    with_: str = ""                 # submission: ESMTP, ESMTPSA, ... ("": local form)
    uid: int | None = None          # `deskgate send`: the user id that ran it

    @classmethod
    def submission(cls, by: str, *, helo: str, client: str, extended: bool, tls: bool,
                   authenticated: bool, when: datetime | None = None) -> Received:
        return cls(by, when or datetime.now(UTC), helo=helo, client=client,
                   with_=protocol(extended=extended, tls=tls, authenticated=authenticated))

    @classmethod
    def local(cls, by: str, *, uid: int | None = None,
              when: datetime | None = None) -> Received:
        return cls(by, when or datetime.now(UTC), uid=uid)

    def header(self, queue_id: int, recipients: Sequence[str]) -> bytes:
        """The header field (CRLF-terminated, folded as Postfix folds it) for the queue
        row `queue_id` going to `recipients`."""
        date = format_datetime(self.when.astimezone(UTC))
        if not self.with_:
            who = "deskgate" if self.uid is None else f"deskgate, from userid {self.uid}"
            return f"Received: by {self.by} ({who})\r\n\tid {queue_id}; {date}\r\n".encode()
        literal = address_literal(self.client) if self.client else "unknown"
        helo = _NOT_IN_NAME.sub("?", self.helo)[:255] or literal
        lines = [f"Received: from {helo} ({literal})",
                 f"\tby {self.by} (deskgate) with {self.with_} id {queue_id}"]
        # The recipient only when there is one (as Postfix), and only an address that
        # can stand in an ASCII header as it is.
        if len(recipients) == 1 and _ADDRESS.fullmatch(recipients[0]) \
                and not set("<>()\\") & set(recipients[0]):
            lines.append(f"\tfor <{recipients[0]}>; {date}")
        else:
            lines[-1] += f"; {date}"
        return ("\r\n".join(lines) + "\r\n").encode()


def with_received(data: bytes, header: bytes, at: int = 0) -> bytes:
    """`data` with `header` inserted `at` bytes in (after the DKIM-Signature fields
    the DKIM stage put in front)."""
    return data[:at] + header + data[at:]
