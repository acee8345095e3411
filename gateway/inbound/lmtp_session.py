"""The LMTP dialogue of one connection (RFC 2033): commands, envelope, delivery.

LmtpConnection (lmtp_connection.py) splits command lines and messages out of
the input; this class answers them. After DATA, one reply per accepted
recipient, in RCPT order. PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8,
SIZE and XFORWARD are offered; BDAT/CHUNKING is not.

XFORWARD (Postfix's XFORWARD_README) names the original SMTP client and the MTA's
queue ID of the next transaction; they reach the message's communication log and
its log line (queue_id=) and nothing else: no filter or route reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar

import structlog
from structlog.contextvars import bind_contextvars

from gateway import errors, metrics
from gateway.errors import SmtpReply
from gateway.inbound.lmtp_connection import PAUSE_AT, LmtpBackend, LmtpConnection, peer_name
from gateway.inbound.lmtp_record import forwarded_client
from gateway.inbound.lmtp_syntax import (
    BAD_SYNTAX,
    BAD_UTF8,
    BYE,
    COMMAND_LIMIT,
    EXPN_NO,
    LINE_TOO_LONG,
    MAIL_LIMIT,
    NEED_LHLO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    RSET_OK,
    VRFY_CANNOT,
    XFORWARD_ATTRS,
    XFORWARD_IN_MAIL,
    XFORWARD_OK,
    least_quoted_path,
    parse_path,
    parse_xforward,
    syntax_reply,
)
from gateway.limits import IDLE_COMMANDS, SessionLimit, too_many_errors
from gateway.model import Outcome
from gateway.smtpdata import DATA_GO_AHEAD

# Importers take these from here: the listener, `deskgate deliver`, the tests.
__all__ = ["PAUSE_AT", "LmtpBackend", "LmtpSession", "least_quoted_path", "parse_path",
           "peer_name"]

log = structlog.get_logger(__name__)

# Unknown commands a client may send before it is disconnected.
BOGUS_LIMIT = 5

# Why the backend refused a recipient, for the refused-recipients counter.
_BACKEND_REASONS = {errors.RCPT_UNKNOWN: "unknown", errors.RCPT_INVALID: "invalid",
                    errors.RCPT_TEMP_INVALID: "temporarily_invalid"}

_LHLO_REPLY = ("250-{host}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
               "250-8BITMIME\r\n250-SMTPUTF8\r\n250-XFORWARD " + " ".join(XFORWARD_ATTRS)
               + "\r\n250 SIZE {size}")


class LmtpSession(LmtpConnection):
    """One LMTP connection: the dialogue on the lines and messages LmtpConnection reads."""

    _COMMANDS: ClassVar[dict[str, Callable[[LmtpSession, str], None]]]

    def __init__(self, backend: LmtpBackend, *, max_message_size: int, max_recipients: int,
                 hostname: str, timeout: float = 300,
                 loop: asyncio.AbstractEventLoop | None = None,
                 limit: SessionLimit | None = None) -> None:
        super().__init__(backend, max_message_size=max_message_size, hostname=hostname,
                         timeout=timeout, loop=loop, limit=limit)
        self.max_recipients = max_recipients
        self._bogus = 0
        self._lhlo = ""
        self._from: str | None = None
        self._rcpts: list[str] = []
        # XFORWARD attributes for the next transaction (None: none sent); an unknown
        # value ([UNAVAILABLE]) is None.
        self._xforward: dict[str, str | None] | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ input

    def _command(self, line: bytes) -> None:
        verb_b, _, arg_b = line.partition(b" ")
        try:
            verb = verb_b.decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        if not verb:
            self._refuse("Reply", BAD_SYNTAX)
            return
        if len(line) > (MAIL_LIMIT if verb == "MAIL" else COMMAND_LIMIT):
            self._refuse("Reply", LINE_TOO_LONG)
            return
        handler = self._COMMANDS.get(verb)
        if handler is None:
            self._unknown(verb)
            return
        try:
            arg = arg_b.strip().decode("utf-8")
        except UnicodeDecodeError:
            # Postfix's answer; an address the store cannot encode would be taken at
            # MAIL/RCPT and then fail every delivery attempt with 451.
            self._refuse("Reply", BAD_UTF8)
            return
        if verb not in IDLE_COMMANDS:
            self._deadline = self._loop.time() + self.timeout
        try:
            handler(self, arg)
        except Exception:
            log.exception("LMTP command failed", command=verb, peer=self._peer)
            self._refuse("Reply", str(errors.TEMPFAIL))

    # ------------------------------------------------------------ commands

    def _unknown(self, verb: str) -> None:
        self._bogus += 1
        if self._bogus >= BOGUS_LIMIT:
            self._refuse("Reply", too_many_errors(self.hostname))
            self._close()
            return
        shown = f' "{verb}"' if len(verb) <= 16 and verb.isalnum() else ""
        self._refuse("Reply", f"500 5.5.1 Error: command{shown} not recognized")

    def _reset(self) -> None:
        self._from = None
        self._rcpts = []
        self._xforward = None
        self._record.ended()

    def smtp_LHLO(self, arg: str) -> None:
        if not arg:
            self._refuse("LHLO", syntax_reply("LHLO hostname"))
            return
        self._reset()
        self._lhlo = arg
        self._record.lhlo(arg)
        self._reply(_LHLO_REPLY.format(host=self.hostname, size=self.data_size_limit))

    def smtp_XFORWARD(self, arg: str) -> None:
        """Attributes of the next transaction's original client (XFORWARD_README): each
        command overwrites the attributes it names; [UNAVAILABLE] erases one."""
        if not self._lhlo:
            self._refuse("XFORWARD", NEED_LHLO)
            return
        if self._from is not None:
            self._refuse("XFORWARD", XFORWARD_IN_MAIL)
            return
        attrs = parse_xforward(arg)
        if isinstance(attrs, str):
            self._refuse("XFORWARD", attrs)
            return
        if self._xforward is None:
            self._xforward = attrs
        else:
            self._xforward.update(attrs)
        self._reply(XFORWARD_OK)

    def smtp_MAIL(self, arg: str) -> None:
        if not self._lhlo:
            self._refuse("MAIL", NEED_LHLO)
            return
        if self._from is not None:
            self._refuse("MAIL", NESTED_MAIL)
            return
        parsed = parse_path(arg, "FROM:")
        if parsed is None:
            self._refuse("MAIL", syntax_reply("MAIL FROM:<address> [parameters]"), f"MAIL {arg}")
            return
        addr, params = parsed
        for p in params:
            key, _, value = p.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not (value.isascii() and value.isdigit()):   # not '²', which int() refuses
                    self._refuse("MAIL", errors.SYNTAX, f"<{addr}> {p}")
                    return
                if int(value) > self.data_size_limit > 0:
                    self._refuse("MAIL", errors.TOO_BIG, f"<{addr}> {p}")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self._refuse("MAIL", "501 5.5.4 BODY must be 7BIT or 8BITMIME",
                                 f"<{addr}> {p}")
                    return
            elif key not in ("SMTPUTF8", "RET", "ENVID", "AUTH"):
                self._refuse("MAIL", f"555 5.5.4 MAIL parameter {key} not supported",
                             f"<{addr}> {p}")
                return
        self._from = addr
        self._rcpts = []
        self._record.mail(addr)
        self._reply(errors.SENDER_OK)

    def _refuse_rcpt(self, reason: str, reply: SmtpReply | str, subject: str) -> None:
        """Refuse a recipient and count it; accepted recipients are not counted."""
        text = str(reply)
        metrics.LMTP_RCPT_REFUSED.labels(text[:3], reason).inc()
        self._refuse("RCPT", text, subject)

    def smtp_RCPT(self, arg: str) -> None:
        if self._from is None:
            self._refuse_rcpt("sequence", NEED_MAIL, f"RCPT {arg}")
            return
        parsed = parse_path(arg, "TO:")
        if parsed is None or "@" not in parsed[0]:
            if parsed is None or parsed[0].lower() != "postmaster":
                self._refuse_rcpt("syntax", errors.BAD_ADDRESS if parsed else errors.SYNTAX,
                                  f"RCPT {arg}")
                return
            # RFC 5321 4.5.1: the bare postmaster is accepted, as the gateway's own.
            parsed = f"postmaster@{self.hostname}", parsed[1]
        addr, params = parsed
        for p in params:
            # DSN's NOTIFY and ORCPT are ignored, as RET and ENVID are at MAIL.
            key = p.partition("=")[0].upper()
            if key not in ("NOTIFY", "ORCPT"):
                self._refuse_rcpt("parameter", f"555 5.5.4 RCPT parameter {key} not supported",
                                  f"<{addr}> {p}")
                return
        if len(self._rcpts) >= self.max_recipients:
            self._refuse_rcpt("too_many", errors.TOO_MANY_RCPTS, f"<{addr}>")
            return
        reply = self.backend.rcpt_status(addr)
        if not reply.ok:
            own = f"postmaster@{self.hostname}".lower()
            if reply != errors.RCPT_UNKNOWN or addr.lower() != own:
                self._refuse_rcpt(_BACKEND_REASONS.get(reply, "other"), reply, f"<{addr}>")
                return
            # The gateway's postmaster is accepted even when it is no system address
            # (RFC 5321 4.5.1); the pipeline routes it like mail to an unknown address.
            reply = errors.RCPT_OK
        self._rcpts.append(addr)
        self._record.rcpt()
        self._reply(reply)

    def smtp_DATA(self, arg: str) -> None:
        if arg:
            self._refuse("DATA", syntax_reply("DATA"))
            return
        if self._from is None:
            self._refuse("DATA", NEED_MAIL)
            return
        if not self._rcpts:
            self._refuse("DATA", NEED_RCPT, f"from <{self._from}>")
            return
        self._record.data()
        self._reply(DATA_GO_AHEAD)
        # What follows DATA in the buffer is message data; the leading CRLF stands for
        # the one that ended the DATA line (see _scan_data).
        self._buf = bytearray(b"\r\n") + self._buf
        self._in_data = True

    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self._refuse("Reply", syntax_reply("RSET"))
            return
        self._reset()
        self._reply(RSET_OK)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(errors.OK)

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._refuse("Reply", syntax_reply("QUIT"))
            return
        # QUIT before DATA leaves no message behind: the client's choice, not a lost
        # connection (a transaction cannot be open after DATA: input waits for its replies).
        self._reset()
        self._reply(BYE)
        self._close()

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self._refuse("Reply", syntax_reply("VRFY <address>"))
            return
        self._reply(VRFY_CANNOT)

    def smtp_EXPN(self, arg: str) -> None:
        self._refuse("Reply", EXPN_NO)

    def smtp_HELP(self, arg: str) -> None:
        self._reply("214 2.0.0 Supported commands: " + " ".join(sorted(self._COMMANDS)))

    # ------------------------------------------------------------ delivery

    def _message(self, raw: bytes | None) -> None:
        """The final dot arrived: refuse an over-size message or start its delivery."""
        rcpts, mail_from = self._rcpts, self._from or ""
        self._from, self._rcpts = None, []
        forwarded = self._xforward
        if forwarded is not None:          # it applied to this transaction only
            self._xforward = None
        record = self._record
        if raw is None:
            record.refused("DATA", f"message from <{mail_from}>", str(errors.TOO_BIG))
            record.too_big()
            self._reply("\r\n".join(str(errors.TOO_BIG) for _ in rcpts))
            record.ended()
            return
        record.delivering()
        self._busy = True
        self._task = self._loop.create_task(self._deliver(mail_from, rcpts, raw, forwarded))

    async def _deliver(self, mail_from: str, rcpts: list[str], raw: bytes,
                       forwarded: dict[str, str | None] | None) -> None:
        outcome: Outcome | None = None
        try:
            if forwarded is None:
                outcome = await self.backend.deliver(mail_from, rcpts, raw, self._peer)
            else:
                queue_id = forwarded.get("IDENT") or ""
                if queue_id:
                    # This task's context only: the message's log lines get queue_id=.
                    bind_contextvars(queue_id=queue_id)
                outcome = await self.backend.deliver(
                    mail_from, rcpts, raw, self._peer, client=forwarded_client(forwarded),
                    queue_id=queue_id)
            replies: Sequence[SmtpReply] = outcome.replies
        except Exception as exc:
            logging.getLogger(__name__).exception("delivery failed")
            replies = [errors.TEMPFAIL] * len(rcpts)
            self._record.raised = exc       # for the Warn of record.message
        # RFC 2033: one reply per accepted recipient, in RCPT order.
        self._out += [r.wire for r in replies]
        self._record.message(outcome)
        self._record.ended()
        self._busy = False
        self._task = None
        if self._transport is None:
            self._out = []
            return
        self._deadline = self._loop.time() + self.timeout
        if not self._write_paused:
            self._resume_reading()
        self._process()
        if self._eof and not self._busy:
            self._close()


LmtpSession._COMMANDS = {
    name[5:]: getattr(LmtpSession, name) for name in dir(LmtpSession)
    if name.startswith("smtp_")
}
