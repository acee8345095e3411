"""Wiring of the outbound door into a process: the pipeline, submission listener, sender.

app.py lists `submission_service` and `sender_service` in SERVICE_FACTORIES; the
pipeline object is created once per process (Host.outbound) and shared by both
and by `deskgate send`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from gateway.outbound.pipeline import OutboundPipeline

if TYPE_CHECKING:
    from gateway.interfaces import Host
    from gateway.outbound.sender import Sender
    from gateway.outbound.submission import SubmissionService

log = structlog.get_logger(__name__)


def outbound_pipeline(gw: Host, *, one_shot: bool = False) -> OutboundPipeline:
    """The process's outbound pipeline (created on first use). A `one_shot` process
    (`deskgate send`) reserves ticket numbers one at a time, so it uses what it takes."""
    if gw.outbound is None:
        gw.outbound = OutboundPipeline(lambda: gw.runtime, gw.writer, gw.executor,
                                       number_block=1 if one_shot else 20)
    return gw.outbound


def submission_service(gw: Host) -> SubmissionService | None:
    from gateway.outbound.submission import Submission, SubmissionService, comm_writer

    listen = gw.config.submission.listen
    tls_listen = gw.config.submission.tls_listen
    if not (listen or tls_listen):
        return None
    from gateway.limits import FD_MARGIN

    sub = Submission(lambda: gw.runtime, outbound_pipeline(gw), comm_writer(gw.writer))
    svc = SubmissionService(sub, listen, tls_listen=tls_listen,
                            lmtp_reserve=gw.config.lmtp.max_sessions + FD_MARGIN)
    gw.limits["submission"] = svc.limit
    gw.reload_hooks.append(svc.reload)      # a renewed certificate, for new connections
    return svc


def sender_service(gw: Host) -> Sender | None:
    from gateway.outbound.sender import Sender

    relay = gw.config.relay
    if relay.mode == "smtp" and not relay.host:
        log.warning("no [relay] host: outbound messages stay queued until one is configured")
        return None
    sender = Sender(lambda: gw.runtime, gw.writer, engine=gw.engine)
    outbound_pipeline(gw).on_queued = sender.poke
    gw.reload_hooks.append(sender.reload)
    return sender
