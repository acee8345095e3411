"""MAIL FROM and RCPT TO of the submission listener: the envelope.

A mixin of SubmissionSession (gateway.outbound.submission): the path syntax of
gateway.outbound.submission_syntax, the parameters EHLO advertises (DSN's RET/ENVID
and NOTIFY/ORCPT of RFC 3461 parsed by gateway.outbound.dsn_params), Postfix's
501/555 replies to anything else; the bare postmaster of RFC 5321 4.5.1 is
postmaster@<gateway.hostname>. The policy at MAIL and RCPT is SubmissionHandler's.
"""

from __future__ import annotations

from gateway.outbound.dsn_params import (
    MessageDsn,
    RecipientDsn,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
)
from gateway.outbound.submission_auth import SubmissionAuth
from gateway.outbound.submission_policy import DsnEnvelope
from gateway.outbound.submission_replies import (
    BAD_ENVID,
    BAD_NOTIFY,
    BAD_ORCPT,
    BAD_RECIPIENT,
    BAD_RET,
    BAD_SENDER,
    BAD_SIZE,
    MAIL_SYNTAX,
    NEED_MAIL,
    NESTED_MAIL,
    RCPT_SYNTAX,
    SIZE_EXCEEDED,
    unsupported_option,
)
from gateway.outbound.submission_syntax import split_path


class EnvelopeCommands(SubmissionAuth):
    """MAIL and RCPT of a submission session (mixed into SubmissionSession); MAIL's
    AUTH parameter is taken wherever AUTH is offered (SubmissionAuth)."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL FROM with the path syntax of gateway.outbound.submission_syntax and the
        parameters EHLO advertises (SIZE, BODY, SMTPUTF8, RET and ENVID of DSN, each of
        those two once, and AUTH wherever AUTH is: Exim adds AUTH=<> once it has
        authenticated; its value is not used, since the sender is rewritten); anything
        else gets Postfix's 501 or 555 reply."""
        self._cmd = ("MAIL", f"MAIL {arg or ''}"[:300])
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.envelope is not None and self.session is not None
        if self.envelope.mail_from:
            await self.push(NESTED_MAIL)
            return
        if arg is None or arg[:5].upper() != "FROM:" or not arg[5:].strip():
            await self.push(MAIL_SYNTAX)
            return
        path = split_path(arg[5:])
        if path is None:
            await self.push(BAD_SENDER)
            return
        address, params = path
        if params and not self.session.extended_smtp:     # HELO: no parameter advertised
            await self.push(unsupported_option(params[0]))
            return
        options: list[str] = []
        smtputf8 = False
        ret = envid = None
        for param in params:
            key, eq, value = param.partition("=")
            key = key.upper()
            if key == "AUTH" and value and self._auth_offered():
                continue
            if key == "RET" and eq:
                # RFC 3461 4.3; a second RET is refused as a bad one (Postfix)
                if ret is not None or (ret := parse_ret(value)) is None:
                    await self.push(BAD_RET)
                    return
                continue
            if key == "ENVID" and eq:
                if envid is not None or (envid := parse_envid(value)) is None:
                    await self.push(BAD_ENVID)
                    return
                continue
            if key == "SIZE":
                if not (value.isascii() and value.isdigit()):
                    await self.push(BAD_SIZE)
                    return
                if self.data_size_limit and int(value) > self.data_size_limit:
                    await self.push(SIZE_EXCEEDED)
                    return
            elif key == "SMTPUTF8" and not eq and self.enable_SMTPUTF8:
                smtputf8 = True
            elif not (key == "BODY" and value.upper() in ("7BIT", "8BITMIME")):
                await self.push(unsupported_option(param))
                return
            options.append(param.upper())
        self.envelope.smtp_utf8 = smtputf8
        # aiosmtpd's envelope holds the null sender as '<>' ('' is no MAIL)
        status = await self.event_handler.handle_MAIL(
            self, self.session, self.envelope, address or "<>", options)
        if status.startswith("250") and isinstance(self.envelope, DsnEnvelope):
            self.envelope.dsn = MessageDsn(ret or "", envid or "")
        await self.push(status)

    async def smtp_RCPT(self, arg: str | None) -> None:
        """RCPT TO with the path syntax of gateway.outbound.submission_syntax; the
        parameters NOTIFY and ORCPT (DSN, RFC 3461) once each, anything else 555; the
        null path is no recipient; the bare postmaster (any case) is
        postmaster@<gateway.hostname>."""
        self._cmd = ("RCPT", f"RCPT {arg or ''}"[:300])
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.mail_from:
            await self.push(NEED_MAIL)
            return
        if arg is None or arg[:3].upper() != "TO:" or not arg[3:].strip():
            await self.push(RCPT_SYNTAX)
            return
        path = split_path(arg[3:])
        if path is None or not path[0]:
            await self.push(BAD_RECIPIENT)
            return
        address, params = path
        notify = orcpt = None
        for param in params:
            key, eq, value = param.partition("=")
            key = key.upper()
            if key == "NOTIFY" and eq and self.session.extended_smtp:
                # RFC 3461 4.1; a second NOTIFY is refused as a bad one (Postfix)
                if notify is not None or (notify := parse_notify(value)) is None:
                    await self.push(BAD_NOTIFY)
                    return
            elif key == "ORCPT" and eq and self.session.extended_smtp:
                if orcpt is not None or (orcpt := parse_orcpt(value)) is None:
                    await self.push(BAD_ORCPT)
                    return
            else:
                await self.push(unsupported_option(param))
                return
        if "@" not in address and address.lower() == "postmaster":
            # RFC 5321 4.5.1: the bare postmaster is accepted, as the gateway's own (as
            # the LMTP listener takes it, and Postfix appends @$myorigin).
            address = f"postmaster@{self.hostname}"
        status = await self.event_handler.handle_RCPT(
            self, self.session, self.envelope, address, [])
        dsn = RecipientDsn(notify or "", orcpt or "")
        if status.startswith("250") and dsn and isinstance(self.envelope, DsnEnvelope):
            # A recipient given twice keeps what it was first given (it is sent once).
            self.envelope.dsn_rcpt.setdefault(address.lower(), dsn)
        await self.push(status)
