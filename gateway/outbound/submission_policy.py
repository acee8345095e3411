"""What the submission sessions share, and the policy they apply.

Submission holds the configuration access, the users, the outbound pipeline and
the AuthGuard; SubmissionHandler is the aiosmtpd handler: who may submit at
MAIL/RCPT (AUTH or allow_networks), the recipient limit, the EHLO keywords, and
the pipeline at DATA; and the listener's helpers (TLS context, log writer). The
protocol side is SubmissionSession in gateway.outbound.submission.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import func, select

from gateway import metrics
from gateway.commlog import Comm, write_comm
from gateway.commlog_names import CLIENT
from gateway.config import Config, SubmissionUser
from gateway.outbound.context import OutboundContext, unique_recipients
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.outbound.pipeline import QUEUED, OutboundPipeline, SubmitResult
from gateway.outbound.received import Received
from gateway.outbound.submission_replies import (
    AUTH_REQUIRED,
    BAD_RCPT,
    DSN,
    ENHANCEDSTATUSCODES,
    PIPELINING,
    STARTTLS_FIRST,
    TOO_MANY_RCPTS,
)
from gateway.runtime import Runtime
from gateway.store.tables import OutboundMessage

# The listener's logger name, as before these classes had a module of their own.
log = structlog.get_logger("gateway.outbound.submission")


class AuthGuard:
    """Failed AUTH per client address, with an exponential lock-out.

    Attempts whose password check is still running count against the limit too:
    otherwise parallel connections would all pass the check before the first slow
    hash failed (40 connections, 40 checks with max_auth_failures = 3). A client's
    failures are forgotten FORGET_AFTER seconds after its last failure or the end of
    its last lock-out, so an application that mistypes now and then is not locked
    out for a day by failures of weeks ago.
    """

    FORGET_AFTER = 3600.0

    def __init__(self, max_failures: int, backoff: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max(1, max_failures)
        self.backoff = backoff
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}
        self._inflight: dict[str, int] = {}

    def _state(self, client: str) -> tuple[int, float]:
        """(failures, locked until) of a client; (0, 0) once they are forgotten."""
        count, until = self._failures.get(client, (0, 0.0))
        if count and self.clock() > until + self.FORGET_AFTER:
            self._failures.pop(client, None)
            return 0, 0.0
        return count, until

    def locked(self, client: str) -> bool:
        count, until = self._state(client)
        return count >= self.max_failures and self.clock() < until

    def begin(self, client: str) -> bool:
        """Start an attempt; False (refuse it) when locked out or when the failures so
        far plus the attempts in flight reach the limit (one at a time once past it)."""
        if self.locked(client):
            return False
        count, _ = self._state(client)
        inflight = self._inflight.get(client, 0)
        if inflight >= max(1, self.max_failures - count):
            return False
        self._inflight[client] = inflight + 1
        return True

    def end(self, client: str) -> None:
        """An attempt started with begin() is decided (or abandoned)."""
        n = self._inflight.get(client, 0) - 1
        if n > 0:
            self._inflight[client] = n
        else:
            self._inflight.pop(client, None)

    def failed(self, client: str) -> tuple[int, float]:
        """Count one failure; returns (failures, seconds locked out, 0 = not locked)."""
        count, _ = self._state(client)
        count += 1
        lock = 0.0
        if count >= self.max_failures:
            lock = min(self.backoff * 2 ** (count - self.max_failures), 86400.0)
        self._failures[client] = (count, self.clock() + lock)
        if len(self._failures) > 10000:     # forget the oldest entries
            for k in list(self._failures)[:1000]:
                self._failures.pop(k, None)
        return count, lock

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class Submission:
    """What the sessions share: config access, users, the pipeline, the AUTH guard."""

    def __init__(self, runtime: Callable[[], Runtime], pipeline: OutboundPipeline,
                 write_log: Callable[[Comm], None]) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.write_log = write_log
        cfg = runtime().config.submission
        self._guard = AuthGuard(cfg.max_auth_failures, cfg.auth_backoff)
        self._verified: dict[str, float] = {}

    @property
    def guard(self) -> AuthGuard:
        """The AUTH guard with the running configuration's max_auth_failures and
        auth_backoff: a reload decides the next attempt of every client, which keeps
        the failures counted so far (a lock-out under way keeps its end)."""
        cfg = self.runtime().config.submission
        self._guard.max_failures = max(1, cfg.max_auth_failures)
        self._guard.backoff = cfg.auth_backoff
        return self._guard

    @property
    def config(self) -> Config:
        return self.runtime().config

    def allowed_network(self, peer: Any) -> bool:
        host = peer[0] if isinstance(peer, tuple) else ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(n, strict=False)
                   for n in self.config.submission.allow_networks)

    def user(self, name: str) -> SubmissionUser | None:
        for u in self.config.submission.user:
            if u.name == name:
                return u
        return None

    async def verify(self, login: str, password: str) -> SubmissionUser | None:
        from gateway.passwords import DUMMY_HASH, verify_password

        user = self.user(login)
        if user is None:
            # Spend the same time as for a real user, so names cannot be probed.
            await asyncio.get_running_loop().run_in_executor(
                None, verify_password, password, DUMMY_HASH)
            return None
        key = hashlib.sha256(f"{user.name}\0{password}\0{user.password_hash}".encode()).hexdigest()
        if key in self._verified:
            return user
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_password, password, user.password_hash)
        if ok:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[key] = time.monotonic()
            return user
        return None

    def auth_failed(self, peer: Any, login: str) -> None:
        client = peer[0] if isinstance(peer, tuple) else str(peer)
        count, lock = self.guard.failed(client)
        log.warning("submission AUTH failed", client=client, login=login, failures=count,
                    locked_for=lock)
        comm = Comm("Outgoing", "SMTP", peer_text(peer))
        obj = comm.obj("Connection")
        obj.log("Warn", "Auth", f"AUTH failed for {login!r} from {client} ({count} failures"
                + (f"; locked out for {lock:.0f}s" if lock else "") + ")")
        obj.close("Failed")
        comm.close("Failed")
        self.write_log(comm)

    def internal_error(self, peer: Any, command: str, error: BaseException,
                       answered: str) -> None:
        """A command that raised, in the communication log: the command, the cause and
        what the client was answered. Never raises (its caller is answering the client)."""
        try:
            comm = Comm("Outgoing", "SMTP", peer_text(peer))
            obj = comm.obj("Connection")
            obj.log("Error", "Submission", f"{command or '?'}: {type(error).__name__}: "
                    f"{error}"[:3900] + f"; answered {answered}")
            obj.close("Failed")
            comm.close("Failed")
            self.write_log(comm)
        except Exception:
            log.exception("submission: the communication log entry was not written",
                          client=peer_text(peer), command=command)

    async def queued(self, ids: Sequence[int], message_id: str) -> bool:
        """Whether the queue rows of a message are committed (False when the database
        cannot tell). Asked only after the pipeline raised where it may have committed."""
        engine = self.pipeline.writer.engine

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(OutboundMessage).where(
                    OutboundMessage.id.in_(list(ids)),
                    OutboundMessage.message_id == message_id[:998])).scalar_one())

        try:
            return await asyncio.get_running_loop().run_in_executor(None, count) == len(ids)
        except Exception:
            log.exception("submission: cannot tell whether the message was queued",
                          outbound_ids=list(ids))
            return False


def peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


class DsnEnvelope(Envelope):
    """aiosmtpd's envelope with the transaction's DSN parameters (RFC 3461): RET and
    ENVID of its MAIL, NOTIFY and ORCPT of its recipients by address (lower case)."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn = MessageDsn()
        self.dsn_rcpt: dict[str, RecipientDsn] = {}


class SubmissionHandler:
    """aiosmtpd handler: policy at MAIL/RCPT, the pipeline at DATA."""

    def __init__(self, sub: Submission) -> None:
        self.sub = sub

    def _may_submit(self, session: Session) -> bool:
        return bool(session.authenticated) or self.sub.allowed_network(session.peer)

    @staticmethod
    def _refusal(server: SMTP) -> str:
        """530 for a client that may not submit: STARTTLS first while it is offered and
        not used (AUTH is offered only after it), else AUTH."""
        if server.tls_context is not None and server._tls_protocol is None:
            return STARTTLS_FIRST
        return AUTH_REQUIRED

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """aiosmtpd's EHLO reply with PIPELINING first and ENHANCEDSTATUSCODES and DSN
        last among the keywords (the session adds the codes to aiosmtpd's replies), and
        SIZE 0 where aiosmtpd lists no SIZE because there is no limit (RFC 1870)."""
        session.host_name = hostname
        size = [] if server.data_size_limit else ["250-SIZE 0"]
        return [responses[0], PIPELINING, *size, *responses[1:-1], ENHANCEDSTATUSCODES,
                DSN, responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self._may_submit(session):
            log.info("submission refused: not authenticated", client=peer_text(session.peer))
            return self._refusal(server)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self._may_submit(session):
            return self._refusal(server)
        if len(envelope.rcpt_tos) >= self.sub.config.submission.max_recipients:
            return TOO_MANY_RCPTS
        if "@" not in address or any(c in address for c in " <>"):
            return BAD_RCPT
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self._may_submit(session):
            return self._refusal(server)
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        user = getattr(session, "deskgate_user", None)
        # aiosmtpd hands the null sender over as "<>"
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        # A recipient given twice (in any case) is sent to once, as first spelt: Postfix's
        # cleanup drops duplicates, and a relay keeps the local part's case (RFC 5321 2.4).
        recipients = unique_recipients(envelope.rcpt_tos)
        ctx = OutboundContext(mail_from=mail_from, recipients=recipients, raw=raw,
                              source="SMTP", account=peer_text(session.peer), user=user,
                              trusted=True)
        if isinstance(envelope, DsnEnvelope):
            ctx.dsn, ctx.dsn_rcpt = envelope.dsn, dict(envelope.dsn_rcpt)
        how = (f"AUTH as {user.name}" if user is not None
               else "no AUTH, client in allow_networks")
        tls = tls_of(server)
        # The trace header of RFC 5321 4.4, as Postfix's smtpd writes it by default.
        ctx.received = Received.submission(
            self.sub.config.gateway.hostname, helo=session.host_name or "",
            client=session.peer[0] if isinstance(session.peer, tuple) else "",
            extended=bool(session.extended_smtp), tls=tls != "no TLS",
            authenticated=bool(session.authenticated))
        ctx.log.log("Info", CLIENT, f"{peer_text(session.peer)} HELO {session.host_name}, "
                    f"{tls}, {how}")
        t0 = time.perf_counter()
        try:
            result = await self.sub.pipeline.submit(ctx)
        except Exception as exc:
            # Nothing queued: the session's handle_exception answers 451 4.3.0. Queued
            # before it raised: 250, as a 4xx would have the client send it twice.
            ids = list(ctx.outbound_ids)
            if not ids or not await self.sub.queued(ids, ctx.message_id):
                raise
            log.error("submission command failed after the message was queued; "
                      "answered 250", command="DATA", client=peer_text(session.peer),
                      outbound_ids=ids, exc_info=exc)
            self.sub.internal_error(session.peer, "DATA", exc, "250")
            result = SubmitResult(QUEUED, ids[0], ctx.ticket_number, ctx.article_id,
                                  ctx.message_id, tuple(ids))
        reply = result.reply
        text = reply.text if not result.outbound_id else "queued as " + ", ".join(
            str(i) for i in result.outbound_ids or (result.outbound_id,))
        try:    # counted after the queue commit: a failure here must not answer 4xx
            metrics.PIPELINE_SECONDS.labels("submission").observe(time.perf_counter() - t0)
            metrics.MESSAGES.labels("submission", "in", "queued" if result.outbound_id else
                                    "tempfail" if reply.temporary else "rejected").inc()
        except Exception:
            log.exception("submission: metrics not counted", outbound_id=result.outbound_id)
        return f"{reply.code} {reply.enhanced} {text}"


def tls_of(server: SMTP) -> str:
    """How a session's connection is protected, for the communication log: STARTTLS,
    implicit TLS (a connection of tls_listen, TLS from its first byte) or no TLS."""
    if server._tls_protocol is not None:
        return "STARTTLS"
    if server.transport is not None and server.transport.get_extra_info("ssl_object"):
        return "implicit TLS"
    return "no TLS"


def command_of(error: BaseException) -> str:
    """The command whose smtp_* method raised (aiosmtpd runs each command in one), from
    the traceback; '' when none is on it."""
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_name
        if name.startswith("smtp_"):
            return name[5:]
        tb = tb.tb_next
    return ""


def no_authenticator(*_: Any) -> AuthResult:
    """aiosmtpd's authenticator, never used: the session checks passwords itself."""
    return AuthResult(success=False)


def server_tls_context(cfg: Config) -> ssl.SSLContext | None:
    sub = cfg.submission
    if not (sub.tls_cert and sub.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cfg.path(sub.tls_cert)), str(cfg.path(sub.tls_key)))
    return ctx


def comm_writer(writer: Any) -> Callable[[Comm], None]:
    def write(comm: Comm) -> None:
        writer.submit(lambda conn: write_comm(conn, comm), isolated=True)
    return write
