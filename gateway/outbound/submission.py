"""SMTP submission listener (aiosmtpd on the serve loop).

STARTTLS is offered on `listen` when tls_cert/tls_key are set; AUTH PLAIN and LOGIN
only after TLS (aiosmtpd answers 538 before). On `tls_listen` (implicit TLS, RFC 8314,
Postfix's smtpd_tls_wrappermode) the connection starts with the TLS handshake: no
STARTTLS, AUTH at once, the same policy; a failed handshake is logged and counted as
a refused connection, and the listener goes on; a PLAIN authorization identity other than
the user's own is refused, and so is an empty response ("=" as the initial one), as a
wrong password is; AUTH inside a mail transaction is 503, STARTTLS inside TLS 554
(Postfix's replies). Clients inside allow_networks may submit without AUTH;
everyone else gets 530 at MAIL ("Must issue a STARTTLS command first" while
STARTTLS is offered and unused): never an open relay.
Password checks (scrypt) run on a worker thread. Failed AUTH is counted per
client address, and so are the attempts still being checked; past
max_auth_failures the client is locked out for a while that doubles with every
further failure, and a Warn is logged.

aiosmtpd runs the session; DATA is read in bulk by gateway.smtpdata instead of
aiosmtpd's line-by-line loop (only CRLF.CRLF ends a message, lines of any
length, over max_message_size refused with 552 5.3.4 without holding the message).
EHLO advertises PIPELINING (aiosmtpd reads one command line at a time from its
stream, so a pipelined group is answered in order) and ENHANCEDSTATUSCODES, so
aiosmtpd's own replies get an enhanced code on their way out (push). A command
that raises is answered 451 4.3.0 with a generic text (handle_exception), not
aiosmtpd's permanent 500 with the exception's text; the cause is logged. MAIL and
RCPT are deskgate's own (the path syntax of submission_syntax, Postfix's 501/555
replies; the bare postmaster of RFC 5321 4.5.1 is postmaster@<gateway.hostname>;
DSN's RET/ENVID and NOTIFY/ORCPT of RFC 3461, gateway.outbound.dsn_params),
HELP is 214 and VRFY is disabled (502 5.5.1), as in Postfix.

This module is the protocol side (SubmissionSession) and the listener
(SubmissionService). MAIL and RCPT are in gateway.outbound.submission_envelope, AUTH
in submission_auth, a connection's communication log in submission_connection_log,
the connections of tls_listen in submission_tls_listen; what the sessions share and
the policy at MAIL/RCPT/DATA are in submission_policy, the reply texts in
submission_replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from collections.abc import Sequence
from typing import Any, cast

import structlog
from aiosmtpd.smtp import (
    MISSING,
    Envelope,
    Session,
    TLSSetupException,
    syntax,
)

from gateway import metrics
from gateway.config import Config
from gateway.errors import InUse
from gateway.limits import IdleTimer, SessionLimit, idle_timeout, refusal, too_many_errors
from gateway.outbound.submission_connection_log import ConnectionLog
from gateway.outbound.submission_envelope import EnvelopeCommands
from gateway.outbound.submission_policy import (
    AuthGuard,
    DsnEnvelope,
    Submission,
    SubmissionHandler,
    comm_writer,
    command_of,
    no_authenticator,
    peer_text,
    server_tls_context,
)
from gateway.outbound.submission_record import SubmissionRecord, transaction
from gateway.outbound.submission_replies import (
    AIOSMTPD_SIZE,
    AIOSMTPD_TOO_MANY,
    AUTH_BAD,
    AUTH_OK,
    AUTH_REQUIRED,
    BAD_RCPT,
    DATA_SYNTAX,
    ENHANCED_BY_CODE,
    ENHANCEDSTATUSCODES,
    HELP,
    HELP_STARTTLS,
    INTERNAL_ERROR,
    LOCKED_OUT,
    NEED_RCPT,
    NO_VALID_RCPTS,
    PIPELINING,
    SIZE_EXCEEDED,
    STRICT_ASCII,
    TLS_ACTIVE,
    TOO_MANY_RCPTS,
    VRFY_DISABLED,
    with_enhanced_code,
)
from gateway.outbound.submission_tls_listen import TlsFirst
from gateway.portowner import in_use_by
from gateway.smtpdata import DATA_GO_AHEAD, read_data

# Importable from here as before the policy and the replies had modules of their own.
__all__ = ["AIOSMTPD_SIZE", "AIOSMTPD_TOO_MANY", "AUTH_BAD", "AUTH_OK", "AUTH_REQUIRED",
           "BAD_RCPT", "DATA_SYNTAX", "ENHANCEDSTATUSCODES", "ENHANCED_BY_CODE",
           "INTERNAL_ERROR", "LOCKED_OUT",
           "NEED_RCPT", "PIPELINING", "SIZE_EXCEEDED", "STRICT_ASCII", "TOO_MANY_RCPTS",
           "AuthGuard", "Submission", "SubmissionHandler", "SubmissionService",
           "SubmissionSession", "comm_writer", "server_tls_context", "with_enhanced_code"]

log = structlog.get_logger(__name__)
logging.getLogger("mail.log").setLevel(logging.WARNING)

class _Session(Session):
    """aiosmtpd's Session without its warning on every write of the legacy
    `login_data` (aiosmtpd itself sets it after each successful AUTH, so each login
    logged "Session.login_data is deprecated" at warning level)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class SubmissionSession(IdleTimer, ConnectionLog, EnvelopeCommands):
    """One submission connection; AUTH checks run off the event loop. MAIL and RCPT
    are EnvelopeCommands' (submission_envelope), AUTH is SubmissionAuth's
    (submission_auth), the communication log of the connection ConnectionLog's
    (submission_connection_log)."""

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _create_envelope(self) -> Envelope:
        return DsnEnvelope()

    def __init__(self, sub: Submission, limit: SessionLimit | None = None, *,
                 implicit_tls: bool = False, **kw: Any) -> None:
        super().__init__(SubmissionHandler(sub), authenticator=no_authenticator, **kw)
        self.sub = sub
        self.implicit_tls = implicit_tls  # a connection of tls_listen: TLS from the start
        self._limit = limit
        self._admitted: Any = None      # the peer counted in the limit, until released
        self._refused = False
        self._data = bytearray()        # the message being received
        self._in_data = False
        self._data_active = 0.0         # when the idle timer was last re-armed by data
        # The greeting and the replies to EHLO/HELO carry no enhanced code (RFC 2034 3).
        self._greeted = False
        self._in_ehlo = False
        # The communication log: a record from the first problem on (none while all
        # goes well), and the command whose refusal it would note.
        self._record: SubmissionRecord | None = None
        self._cmd: tuple[str, str] | None = None
        self._stage = ""                # "during DATA" ... until the message is answered
        self._txn = ""                  # the transaction of DATA, as the log names it
        self._timed_out = False
        self._quit = False

    @property
    def data_buffered(self) -> int:
        """Bytes of the message being received that the session holds."""
        return len(self._data)

    def admitted(self, peer: Any) -> None:
        """tls_listen: the connection was counted in the limit when it was accepted,
        before its handshake; the session releases it when it ends."""
        self._admitted = (peer,)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not the STARTTLS switch, nor a tls_listen connection counted at accept.
        if self.transport is None and self._limit is not None and self._admitted is None:
            peer = transport.get_extra_info("peername")
            if self._limit.admit(peer) is not None:
                self._refused = True
                cast(asyncio.Transport, transport).write(refusal(self.hostname))
                transport.close()
                return
            self._admitted = (peer,)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused or self.transport is None:    # None: tls_listen, never connected
            return
        if self._admitted is not None and self._limit is not None:
            self._limit.release(self._admitted[0])
            self._admitted = None
        self._log_connection(error)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        """aiosmtpd's push, with its 502 after too many unknown commands answered 421
        (the session closes either way; a 5xx would read as a refusal of the mail), and
        an enhanced status code added to its replies that have none: ENHANCEDSTATUSCODES
        is advertised, so every reply but the greeting and EHLO/HELO's carries one."""
        if status == AIOSMTPD_TOO_MANY:
            status = too_many_errors(self.hostname)
        elif not self._greeted:
            self._greeted = True        # aiosmtpd's first push is the greeting
        elif isinstance(status, str) and not self._in_ehlo:
            status = with_enhanced_code(status)
        if isinstance(status, str) and status[:1] in ("4", "5"):
            self._refusal(status)
        elif isinstance(status, str) and status[:1] != "3":
            self._cmd = None
        await super().push(status)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    async def handle_exception(self, error: Exception) -> str:
        """A command that raised (a bug, an error nobody caught) is answered 451 4.3.0
        with a generic text, a temporary refusal the client retries, instead of
        aiosmtpd's permanent 500 carrying the exception's text; the cause goes to the
        log and the communication log. aiosmtpd pushes the reply and reads the next
        command (after a failed STARTTLS handshake it closes the connection instead)."""
        assert self.session is not None
        peer = self.session.peer
        if isinstance(error, TLSSetupException):
            log.info("submission STARTTLS handshake failed", client=peer_text(peer),
                     error=repr(error.__cause__ or error))
            self._note().warn("STARTTLS", f"handshake failed: {error.__cause__ or error}"[:500])
            return INTERNAL_ERROR
        if isinstance(error, asyncio.IncompleteReadError | ConnectionError):
            # The client went away: the connection's communication says so.
            log.info("submission client gone", client=peer_text(peer), error=repr(error))
            return INTERNAL_ERROR
        command = command_of(error)
        log.error("submission command failed; answered 451 4.3.0", command=command,
                  client=peer_text(peer), exc_info=error)
        self.sub.internal_error(peer, command, error, INTERNAL_ERROR[:9])
        return INTERNAL_ERROR

    def _timeout_cb(self) -> None:
        self._timed_out = True
        if self.transport is not None and not self.transport.is_closing():
            cast(asyncio.Transport, self.transport).write(idle_timeout(self.hostname))
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, refused once TLS is active (RFC 3207 4), with Postfix's
        reply: aiosmtpd started a second handshake inside TLS, which broke the session."""
        if not arg and (self._tls_protocol is not None or self.implicit_tls):
            await self.push(TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (replies, hooks, decode_data) with the message read in bulk."""
        sender = self.envelope.mail_from if self.envelope is not None else None
        self._cmd = ("DATA", f"message from <{'' if sender == '<>' else sender}>"
                     if sender else "")
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            # Postfix's replies: no transaction yet, or every RCPT of it refused.
            await self.push(NO_VALID_RCPTS if self.envelope.mail_from else NEED_RCPT)
            return
        if arg:
            await self.push(DATA_SYNTAX)
            return
        await self.push(DATA_GO_AHEAD)
        self._data_active = self.loop.time()
        self._in_data = True
        # Until the message is answered: what the log says when the connection is lost.
        self._stage, self._txn = "during DATA", transaction(self.envelope)
        try:
            raw = await read_data(self._reader, self._data, self.data_size_limit)
        finally:
            self._in_data = False
            self._data = bytearray()
        self._stage = ""
        if raw is None:
            await self.push(SIZE_EXCEEDED)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        content: str | bytes = raw
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = raw.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = raw.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push(STRICT_ASCII)
                    return
        self.envelope.content = content
        self.envelope.original_content = raw
        self._stage = "before the final reply"
        try:
            status = await self._call_handler_hook("DATA")
        except Exception:
            self._stage = ""            # answered 451 by handle_exception
            raise
        finally:
            # The transaction ends with the reply to the message, whatever it is (RFC 5321
            # 4.1.1.4), also 451 after an exception: the next MAIL needs no RSET.
            self._set_post_data_state()  # type: ignore[no-untyped-call]
        self._stage = ""
        await self.push("250 OK" if status is MISSING else status)

    def data_received(self, data: bytes) -> None:
        """Message data counts as activity for the idle timeout (re-armed at most ten
        times per timeout): a large message on a slow link is not cut off while it arrives."""
        if self._in_data:
            now = self.loop.time()
            if now - self._data_active >= min(1.0, self._timeout_duration / 10):
                self._data_active = now
                self._reset_timeout()
        super().data_received(data)

    async def smtp_QUIT(self, arg: str) -> None:
        """aiosmtpd's QUIT; a transaction the client leaves open with it is its choice,
        not a lost one."""
        self._quit = not arg
        await super().smtp_QUIT(arg)

    async def smtp_HELP(self, arg: str | None) -> None:
        """214 and the commands, whatever the topic (RFC 5321); an idle command as NOOP."""
        self._idle_command()
        await self.push(HELP_STARTTLS if self.tls_context is not None and
                        self._tls_protocol is None else HELP)

    async def smtp_VRFY(self, arg: str | None) -> None:
        """Disabled (Postfix's disable_vrfy_command): confirms and echoes nothing; idle."""
        self._idle_command()
        await self.push(VRFY_DISABLED)

class SubmissionService:
    """The listeners of [submission] listen (STARTTLS) and tls_listen (implicit TLS)."""

    name = "submission"

    def __init__(self, sub: Submission, listen: Sequence[str], *, lmtp_reserve: int = 0,
                 tls_listen: Sequence[str] = ()) -> None:
        self.sub = sub
        self.listen = listen
        self.tls_listen = tls_listen
        self.handshakes: set[asyncio.Task[None]] = set()
        c = sub.config.submission
        # Submission may never take the descriptors LMTP needs (lmtp_reserve).
        self.limit = SessionLimit("submission", "SMTP", "Outgoing", c.max_sessions,
                                  sub.write_log, max_per_ip=c.max_sessions_per_ip,
                                  fd_reserve=lmtp_reserve)
        self.servers: list[asyncio.AbstractServer] = []
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        self.handshake_timeout = c.timeout
        # The certificate new connections get; reload loads the files again.
        self.tls: ssl.SSLContext | None = None

    def reload(self, cfg: Config) -> None:
        """Reload hook: tls_cert and tls_key are read again, for new connections (those
        open keep theirs), so a renewed certificate needs no restart. A pair that does
        not load is logged as an error naming the files and the certificate in use is
        kept; so is one removed while tls_listen sockets are open. The session limits
        and the handshake timeout of tls_listen take the new values."""
        sub = cfg.submission
        self.limit.max_sessions = sub.max_sessions
        self.limit.max_per_ip = sub.max_sessions_per_ip
        if self.limit.fd_reserve:
            from gateway.limits import FD_MARGIN

            self.limit.fd_reserve = cfg.lmtp.max_sessions + FD_MARGIN
        self.handshake_timeout = sub.timeout
        try:
            tls = server_tls_context(cfg)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("submission certificate not reloaded; new connections keep the "
                      "previous one", tls_cert=str(cfg.path(sub.tls_cert)),
                      tls_key=str(cfg.path(sub.tls_key)), error=repr(exc)[:300])
            return
        if tls is None and self.tls is not None and self.tls_listen:
            log.error("submission certificate not reloaded: tls_listen is open and needs "
                      "one; new connections keep the previous one")
            return
        if tls is not None:
            log.info("submission certificate loaded", tls_cert=str(cfg.path(sub.tls_cert)))
        self.tls = tls

    def handshake_failed(self, peer: Any, error: BaseException) -> None:
        """A connection of tls_listen whose TLS handshake failed: logged as a failed
        STARTTLS handshake is (a Warning communication), and counted with the refused
        connections."""
        log.info("submission TLS handshake failed", client=peer_text(peer),
                 error=repr(error)[:300])
        self.limit.refused_total += 1
        metrics.SESSIONS_REFUSED.labels(self.name).inc()
        record = SubmissionRecord(peer_text(peer))
        record.warn("TLS", f"implicit TLS handshake failed: {error or type(error).__name__}"
                    [:500])
        try:
            self.sub.write_log(record.finish())
        except Exception:
            log.exception("submission: the connection was not logged", client=peer_text(peer))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.sub.config
        self.tls = tls = server_tls_context(cfg)

        def factory(implicit_tls: bool = False) -> SubmissionSession:
            # The certificate of the moment: reload may have loaded a renewed one.
            c, tls = self.sub.config.submission, self.tls
            # On tls_listen the connection is TLS already: no STARTTLS, AUTH at once.
            return SubmissionSession(self.sub, self.limit, data_size_limit=c.max_message_size,
                                     enable_SMTPUTF8=True, hostname=cfg.gateway.hostname,
                                     ident="ESMTP deskgate",
                                     tls_context=None if implicit_tls else tls,
                                     timeout=c.timeout, auth_require_tls=not implicit_tls,
                                     implicit_tls=implicit_tls, loop=loop)

        def tls_first() -> asyncio.Protocol:
            assert self.tls is not None     # check: tls_listen needs tls_cert/tls_key
            return TlsFirst(self, self.tls, factory(implicit_tls=True))

        specs = [(spec, False) for spec in self.listen]
        specs += [(spec, True) for spec in self.tls_listen]
        for spec, implicit in specs:
            host, _, port = spec.rpartition(":")
            what = "submission tls_listen" if implicit else "submission"
            if not port.isdigit():      # unix:PATH; the config check refuses it
                for s in self.servers:
                    s.close()
                raise InUse(f"{what} {spec}: cannot listen: not HOST:PORT (submission "
                            "listens on TCP only)")
            try:
                server = await loop.create_server(tls_first if implicit else factory,
                                                  host.strip("[]"), int(port))
            except OSError as exc:
                for s in self.servers:
                    s.close()
                if exc.errno == errno.EADDRINUSE:
                    raise InUse(f"{what} {spec} is in use by {in_use_by(int(port))}"
                                ) from None
                raise InUse(f"{what} {spec}: cannot listen: {exc.strerror}") from None
            self.servers.append(server)
            (self.tls_ports if implicit else self.ports).append(
                server.sockets[0].getsockname()[1])
        log.info("submission listening", listen=list(self.listen), starttls=tls is not None,
                 tls_listen=list(self.tls_listen))

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        for task in list(self.handshakes):      # handshakes not yet done
            task.cancel()
        for s in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 10)
