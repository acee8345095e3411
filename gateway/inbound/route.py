"""Routing: which queue a new ticket goes to."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.inbound.parse import addresses
from gateway.model import MessageContext
from gateway.runtime import Runtime

# The headers OTOBO's dispatching (PostMaster::DestQueue) reads, in its order: a
# Bcc to a system address shows only in Delivered-To/X-Original-To of fetched mail.
_BEFORE_TO = ("Resent-To", "Envelope-To")
_AFTER_CC = ("Delivered-To", "X-Original-To")


def candidates(ctx: MessageContext) -> Iterator[str]:
    """Envelope recipients first; the headers are parsed only when those did not decide."""
    yield from ctx.envelope.recipients
    p = ctx.parsed
    if p is not None:
        for name in _BEFORE_TO:
            for value in p.header_all(name):
                yield from addresses(value)
        yield from addresses(p.to_addr)
        yield from addresses(p.cc_addr)
        for name in _AFTER_CC:
            for value in p.header_all(name):
                yield from addresses(value)


def route(ctx: MessageContext, rt: Runtime) -> None:
    """Queue from X-header/filter, else the account's queue, else the first system
    address among the recipients (envelope, then the headers OTOBO reads), else the
    default queue."""
    cfg = rt.config
    wanted = ctx.param("Queue")
    if wanted:
        name = cfg.queue_named(wanted)
        if name is not None:
            ctx.queue = name
            ctx.trace.append(f"queue {name} from X-header/filter")
            return
        ctx.log.log("Error", "Queue", f"queue {wanted!r} from X-header/filter does not exist; "
                    "ignored (routing by account, system address, then default queue)")
    if ctx.envelope.dispatch_queue:
        ctx.queue = ctx.envelope.dispatch_queue
        ctx.trace.append(f"queue {ctx.queue} from the mail account (dispatch = queue)")
        return
    for rcpt in candidates(ctx):
        addr = cfg.address_by_email(rcpt)
        if addr is not None and addr.queue and addr.valid == "valid":
            q = cfg.queue_by_name(addr.queue)
            ctx.queue = q.name if q is not None else addr.queue
            ctx.trace.append(f"queue {ctx.queue} from system address {addr.email}")
            return
    ctx.queue = cfg.postmaster.default_queue
    ctx.trace.append(f"queue {ctx.queue} (default)")
