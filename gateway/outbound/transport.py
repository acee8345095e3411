"""Handing a message to the smarthost ([relay]) or into a Maildir (mode = "maildir").

smtplib is blocking: the sender runs these on worker threads, never on the event
loop. Connections are pooled and reused across messages. TLS certificates are
verified (the system store, or `tls_ca_file` to pin a private CA); AUTH is used
when `user` is set and never over a connection without TLS unless
`security = "none"` was chosen explicitly.

Every reply knows the server that gave it and the command it answered (Reply), and
every failure without a reply is written as Postfix writes it, so that the queue,
the communication log and DSNs give the reason as a Postfix admin reads it ("host
relay[192.0.2.1] said: 550 ... (in reply to RCPT TO command)", "connect to
relay[192.0.2.1]:25: Connection refused"; see `said`).
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config, RelayConfig
from gateway.outbound.dsn_params import DsnRequest, orcpt_param, xtext_encode
from gateway.outbound.headers import needs_smtputf8
from gateway.textsafe import address_refusal, reply_line, shown

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


@dataclass
class Attempt:
    """What happened on the wire, for the communication log and the queue."""

    # Per recipient, in order; a reply's text as smtplib gives it (a multi-line one with
    # LF between its lines: see reply_line).
    codes: list[tuple[int, str]] = field(default_factory=list)
    # A failure of the whole attempt, on one line (reply_line, shown): temporary for all
    # recipients unless permanent_error.
    error: str = ""
    permanent_error: bool = False   # e.g. 5xx to MAIL FROM or DATA
    # The server's reply that failed the whole attempt, (code, text) as smtplib gives it
    # (the text without its code); (0, "") when no reply did (a timeout, a crash).
    refusal: tuple[int, str] = (0, "")
    log: list[tuple[str, str, str]] = field(default_factory=list)   # (priority, key, value)
    # DSN (RFC 3461): the next hop announced DSN and got the message's parameters, so
    # success notices are its to send (dsn_passed); deskgate itself delivered the
    # message to its destination (final: the Maildir transport).
    dsn_passed: bool = False
    final: bool = False

    def note(self, priority: str, key: str, value: str) -> None:
        self.log.append((priority, key, value))

    def refused(self, reply: Reply, *, permanent: bool) -> None:
        """The whole attempt failed with the server's `reply`."""
        self.refusal = reply
        self.error = said(reply)
        self.permanent_error = permanent


class Reply(tuple[int, str]):
    """A server's reply (code, text as smtplib gives it) that knows where it came from:
    `host`, the server as Postfix names it ("name[address]"; "" for a refusal of
    deskgate's own), and `command`, what it answered ("RCPT TO", "end of DATA",
    "greeting", ...). It compares and unpacks as the pair (code, text)."""

    host: str
    command: str

    def __new__(cls, code: int, text: str, host: str = "", command: str = "") -> Reply:
        self = super().__new__(cls, (code, text))
        self.host, self.command = host, command
        return self


def said(reply: tuple[int, str]) -> str:
    """Why a recipient was not delivered, on one line, as Postfix writes it in its log,
    its queue listing and its bounces: the server and the command the reply answered
    ("host mx.example.org[192.0.2.1] said: 550 5.1.1 ... (in reply to RCPT TO
    command)"). A reply of deskgate's own, or a failure without a reply (code 0, whose
    text says already what happened), as it is."""
    code, text = reply
    line = reply_line(code, text) if code else shown(text)
    host = reply.host if isinstance(reply, Reply) else ""
    if not code or not host:
        return line
    command = reply.command if isinstance(reply, Reply) else ""
    if command == "greeting":
        return f"host {host} refused to talk to me: {line}"
    if command == "STARTTLS":
        return f"TLS is required, but host {host} refused to start TLS: {line}"
    if command == "AUTH":
        return f"SASL authentication failed; server {host} said: {line}"
    return f"host {host} said: {line} (in reply to {command} command)"


# What a failure without a reply was, as RFC 3463 subject.detail of its Status (as
# Postfix reports them), by how its text starts.
_FAILURE_STATUS = (("connect to ", "4.1"), ("lost connection with ", "4.2"),
                   ("conversation with ", "4.2"), ("Host or domain name not found", "4.3"),
                   ("TLS is required, but was not offered", "7.4"),
                   ("Server certificate not verified", "7.5"), ("Cannot start TLS", "7.5"),
                   ("SASL authentication failed", "7.0"))


def failure_status(text: str) -> str:
    """The subject.detail of a failure without a reply (its text as the transport wrote
    it): "4.1" for a failed connect, "0.0" when nothing more is known."""
    return next((status for start, status in _FAILURE_STATUS if text.startswith(start)),
                "0.0")


def host_name(host: str) -> str:
    """The server's name in a `said` host ("name[address]" → "name")."""
    return host.rpartition("[")[0] if host.endswith("]") else host


# An address holding CR or LF can go on no SMTP command line: smtplib refuses it
# (ValueError) or its address parser sends it to another address (for
# "a@x>\r\nRCPT TO:<b@y" to a@x). Nor may any other control character (NUL, TAB, ESC,
# DEL, a C1 control such as NEL: RFC 5321 and 6531 allow none in a path), which
# smtplib would hand over as it is. Such an address (queued before `deskgate send`
# refused them, or by another path) fails at once and for good, as Postfix fails an
# address of bad syntax, and the message's other recipients are still sent. The
# Maildir transport does the same: written into its Return-Path or
# X-Deskgate-Envelope-To line, such an address would add header lines of its own.
# The refusal, and the escaping of addresses and replies for logs, the queue and
# DSNs, are gateway.textsafe's.


class Transport:
    """Delivers one message to its recipients; returns per-recipient (code, text)."""

    name = "SMTP"
    account = ""

    def deliver(self, sender: str, recipients: Sequence[str], data: bytes, *,
                dsn: DsnRequest | None = None) -> Attempt:
        """An address with a control character fails at once (see address_refusal); the
        other recipients go to `_send`. `dsn`: the message's DSN parameters (RFC 3461),
        one RecipientDsn per recipient, passed on where the next hop takes them."""
        att = Attempt()
        if refused := address_refusal(sender, sender=True):
            att.codes = [refused] * len(recipients)
            att.note("Error", "MailFrom", f"<{shown(sender)}>: {refused[0]} {refused[1]}; "
                     "not sent")
            return att
        bad = {i: refused for i, r in enumerate(recipients)
               if (refused := address_refusal(r)) is not None}
        if not bad:
            self._send(att, sender, recipients, data, dsn)
            return att
        for i, refused in sorted(bad.items()):
            att.note("Error", "Recipient", f"<{shown(recipients[i])}>: "
                     f"{refused[0]} {refused[1]}; not sent")
        good = [r for i, r in enumerate(recipients) if i not in bad]
        if dsn is not None:
            dsn = DsnRequest(dsn.message, tuple(d for i, d in enumerate(dsn.recipients)
                                                if i not in bad))
        if good:
            self._send(att, sender, good, data, dsn)
        # An attempt that failed as a whole gives the others its error (temporary or not).
        rest = iter(att.codes if len(att.codes) == len(good) else
                    [error_reply(att)] * len(good))
        att.codes = [bad[i] if i in bad else next(rest) for i in range(len(recipients))]
        return att

    def _send(self, att: Attempt, sender: str, recipients: Sequence[str],
              data: bytes, dsn: DsnRequest | None = None) -> None:
        """Deliver to `recipients`, none of whose addresses (nor `sender`) holds a
        control character; sets att.codes (one per recipient) or att.error."""
        raise NotImplementedError

    def close(self) -> None:
        """Close pooled connections."""


def tls_context(cfg: RelayConfig, root: Config | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cfg.tls_ca_file:
        path = root.path(cfg.tls_ca_file) if root else Path(cfg.tls_ca_file)
        ctx = ssl.create_default_context(cafile=str(path))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# Postfix's names for the commands a reply answered ("in reply to RCPT TO command").
_COMMANDS = {"MAIL": "MAIL FROM", "RCPT": "RCPT TO", "DATA": "DATA", "EHLO": "EHLO",
             "HELO": "HELO", "STARTTLS": "STARTTLS", "AUTH": "AUTH", "RSET": "RSET",
             "NOOP": "NOOP", "QUIT": "QUIT"}
# What was under way when a connection was lost or timed out ("while ..."), by the
# command last sent ("": none yet).
_DOING = {"": "receiving the initial server greeting",
          "EHLO": "performing the EHLO handshake", "HELO": "performing the HELO handshake",
          "STARTTLS": "performing the TLS handshake",
          "AUTH": "performing the SASL authentication",
          "MAIL FROM": "sending MAIL FROM", "RCPT TO": "sending RCPT TO",
          "DATA": "sending DATA command", "message body": "sending message body",
          "end of DATA": "sending end of data -- message may be sent more than once"}


class _Failed(Exception):
    """A connection that could not be used: why, as a server's Reply or a text."""

    def __init__(self, why: Reply | str) -> None:
        super().__init__(str(why))
        self.why = why


class _Client(smtplib.SMTP):
    """smtplib's client that knows the server it talks to (`peer`, "name[address]", the
    name as configured) and what it last sent (`command`, in Postfix's words; "" before
    the first command, while the greeting is awaited)."""

    def __init__(self, host: str, *, local_hostname: str, timeout: float,
                 context: ssl.SSLContext | None = None) -> None:
        super().__init__(local_hostname=local_hostname, timeout=timeout)
        self._host = host           # the name STARTTLS verifies, as smtplib keeps it
        self.peer = host
        self.command = ""
        self.implicit_tls = context   # TLS from the start (security = "tls")

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        """Each address of `host` in turn, as create_connection does, naming the one
        tried (for "connect to name[address]:port: Connection refused")."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Failed(f"Host or domain name not found. Name service error for "
                          f"name={shown(host)}: {exc.strerror}") from exc
        error: OSError | None = None
        for family, kind, proto, _, address in found:
            self.peer = f"{host}[{address[0]}]"
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            if self.implicit_tls is None:
                return sock
            return self.implicit_tls.wrap_socket(sock, server_hostname=self._host)
        why = ("Connection timed out" if isinstance(error, TimeoutError)
               else error.strerror or str(error) if error else "no address")
        raise _Failed(f"connect to {shown(self.peer)}:{port}: {why}")

    def putcmd(self, cmd: str, args: str = "") -> None:
        # AUTH LOGIN's continuation lines are no commands of their own.
        self.command = _COMMANDS.get(cmd.upper(), self.command)
        super().putcmd(cmd, args)

    def getreply(self) -> tuple[int, bytes]:
        reply = super().getreply()
        if self.command == "DATA" and reply[0] == 354:
            self.command = "message body"
        return reply

    def send(self, s: ReadableBuffer | str) -> None:
        super().send(s)
        if self.command == "message body":
            self.command = "end of DATA"

    def reply(self, code: int, text: bytes | str) -> Reply:
        """The server's reply to the command last sent."""
        return Reply(code, _text(text), shown(self.peer), self.command or "greeting")

    def failure(self, exc: Exception) -> Reply | str:
        """What `exc`, raised while talking to the server, means, as Postfix says it."""
        peer = shown(self.peer)
        if isinstance(exc, _Failed):
            return exc.why
        if isinstance(exc, smtplib.SMTPResponseException):
            return self.reply(exc.smtp_code, exc.smtp_error)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"Server certificate not verified: host {peer}: certificate verify "
                    f"failed: {exc.verify_message}")
        if isinstance(exc, ssl.SSLError) and self.command in ("", "STARTTLS"):
            return f"Cannot start TLS: handshake failure with host {peer}: {exc.reason or exc}"
        if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
            doing = _DOING.get(self.command, f"sending {self.command}")
            if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
                return f"conversation with {peer} timed out while {doing}"
            return f"lost connection with {peer} while {doing}"
        return shown(f"{type(exc).__name__}: {exc}")


# Seconds the DATA phase may take, the answer to the final dot included (Postfix's
# smtp_data_done_timeout): relay.timeout bounds every other command.
DATA_DONE_TIMEOUT = 600.0


class SmtpTransport(Transport):
    name = "SMTP"

    def __init__(self, cfg: RelayConfig, *, local_hostname: str, root: Config | None = None,
                 pool_size: int = 4) -> None:
        self.cfg = cfg
        self.local_hostname = local_hostname
        self.account = f"{cfg.host}:{cfg.port}"
        self.ssl = tls_context(cfg, root) if cfg.security != "none" else None
        self._pool: list[_Client] = []
        self._lock = threading.Lock()
        self.pool_size = pool_size

    def _data(self, conn: _Client, data: bytes) -> tuple[int, bytes]:
        """DATA, the message and the smarthost's answer to the final dot, which may take
        as long as DATA_DONE_TIMEOUT: a content scan there is normal, and a timeout
        would send the message again although the smarthost may have taken it."""
        sock = conn.sock
        if sock is not None:
            sock.settimeout(max(self.cfg.timeout, DATA_DONE_TIMEOUT))
        try:
            return conn.data(data)
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(self.cfg.timeout)

    def _connect(self, att: Attempt) -> _Client:
        """A new connection, greeted, with TLS and AUTH as configured; raises _Failed
        saying why not."""
        cfg = self.cfg
        conn = _Client(cfg.host, local_hostname=self.local_hostname, timeout=cfg.timeout,
                       context=self.ssl if cfg.security == "tls" else None)
        try:
            code, text = conn.connect(cfg.host, cfg.port)
            if code != 220:
                raise _Failed(conn.reply(code, text))
            if cfg.security == "tls":
                att.note("Info", "TLS", f"implicit TLS to {shown(conn.peer)}:{cfg.port}, "
                         "certificate verified")
            else:
                att.note("Info", "Connect", f"connected to {shown(conn.peer)}:{cfg.port}")
            _hello(conn)
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise _Failed("TLS is required, but was not offered by host "
                                  f"{shown(conn.peer)}")
                conn.starttls(context=self.ssl)
                _hello(conn)
                att.note("Info", "TLS", "STARTTLS done, certificate verified")
            if cfg.user:
                try:
                    conn.login(cfg.user, str(cfg.password or ""))
                except smtplib.SMTPResponseException:
                    raise
                except smtplib.SMTPException as exc:
                    raise _Failed(f"SASL authentication failed: server {shown(conn.peer)} "
                                  f"offered no supported authentication mechanism") from exc
                att.note("Info", "Auth", f"authenticated as {cfg.user}")
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise _Failed(conn.failure(exc)) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    def _get(self, att: Attempt) -> _Client:
        with self._lock:
            conn = self._pool.pop() if self._pool else None
        if conn is not None:
            try:
                code, _ = conn.rset()
                if code == 250:
                    att.note("Debug", "Connect", f"reusing the connection to {self.account}")
                    return conn
            except (smtplib.SMTPException, OSError):
                pass
            with contextlib.suppress(Exception):
                conn.close()
        return self._connect(att)

    def _put(self, conn: _Client) -> None:
        with self._lock:
            if len(self._pool) < self.pool_size:
                self._pool.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.quit()

    def _send(self, att: Attempt, sender: str, recipients: Sequence[str],
              data: bytes, dsn: DsnRequest | None = None) -> None:
        """Connect (or reuse a connection) and send; sets att.codes or att.error. The
        DSN parameters go to a relay that announces DSN, as Postfix's smtp client passes
        them on; to one that does not, none (deskgate then sends the success notices)."""
        try:
            conn = self._get(att)
        except _Failed as exc:
            if isinstance(exc.why, Reply):
                # An AUTH/greeting refusal is ours to fix: retried, even a 5xx
                # (error_reply).
                att.refused(exc.why, permanent=False)
            else:
                att.error = exc.why
            att.note("Error", "Connect", att.error)
            return
        keep = False
        try:
            options: list[str] = []
            if not (sender.isascii() and all(r.isascii() for r in recipients)):
                # RFC 6531: a non-ASCII address needs SMTPUTF8 on every hop; a relay
                # without it can never take this message, so each recipient fails now
                # (5.6.7) instead of being retried for the whole schedule.
                if not conn.has_extn("smtputf8"):
                    reply = (553, "5.6.7 SMTPUTF8 is required, but was not offered by "
                             f"host {shown(conn.peer)}")
                    att.codes = [reply] * len(recipients)
                    att.note("Error", "MailFrom", f"<{shown(sender)}>: {reply[0]} {reply[1]}")
                    keep = True
                    return
                options.append("SMTPUTF8")
            elif needs_smtputf8(data):
                # UTF-8 header fields (RFC 6532), or a DSN returning them (RFC 6533),
                # with an ASCII envelope: SMTPUTF8 where the relay offers it; to one
                # that does not they go as 8-bit content, as before, rather than not at
                # all (a DSN to an ASCII return path must still arrive).
                if conn.has_extn("smtputf8"):
                    options.append("SMTPUTF8")
                else:
                    att.note("Notice", "MailFrom", "UTF-8 header fields sent without "
                             "SMTPUTF8: the relay does not offer it")
            if not data.isascii() and conn.has_extn("8bitmime"):
                # RFC 6152: 8-bit content is announced (DKIM re-encodes what it may,
                # a part under a signature keeps its bytes).
                options.append("BODY=8BITMIME")
            rcpt_options: list[list[str]] = [[] for _ in recipients]
            if dsn is not None:
                if conn.has_extn("dsn"):
                    options += _dsn_mail(dsn)
                    rcpt_options = _dsn_rcpt(dsn)
                    att.dsn_passed = True
                    att.note("Info", "DSN", f"{shown(conn.peer)} announces DSN: the "
                             "message's DSN parameters are passed on")
                else:
                    att.note("Info", "DSN", f"{shown(conn.peer)} does not announce DSN: "
                             "success notices asked for come from deskgate (relayed)")
            keep = self._transactions(conn, att, sender, recipients, data, options,
                                      rcpt_options)
        finally:
            if keep:
                self._put(conn)
            else:
                with contextlib.suppress(Exception):
                    conn.close()

    def _transactions(self, conn: _Client, att: Attempt, sender: str,
                      recipients: Sequence[str], data: bytes, options: list[str],
                      rcpt_options: Sequence[list[str]]) -> bool:
        """One transaction for every recipient, then at once a following one for those
        the smarthost refused with "452 too many recipients" (RFC 5321 4.5.3.1.10) in a
        transaction that delivered others, as Postfix's client does: a recipient limit
        is no failure of the message and costs no retry interval. Sets att.codes (or
        att.error); returns whether the connection may be reused."""
        replies: list[tuple[int, str] | None] = [None] * len(recipients)
        todo = list(range(len(recipients)))
        while True:
            t = Attempt(log=att.log)
            keep = self._transaction(conn, t, sender, [recipients[i] for i in todo], data,
                                     options, [rcpt_options[i] for i in todo])
            if t.error:
                att.error, att.permanent_error = t.error, t.permanent_error
                att.refusal = t.refusal
            if len(t.codes) != len(todo):
                # The transaction failed as a whole: its error is the answer for every
                # recipient an earlier transaction did not deliver.
                if any(r is not None for r in replies):
                    fill = error_reply(t)
                    for i in todo:
                        replies[i] = fill
                    att.codes = [r for r in replies if r is not None]
                return keep
            for i, reply in zip(todo, t.codes, strict=True):
                replies[i] = reply
            later = [i for i, (code, text) in zip(todo, t.codes, strict=True)
                     if _too_many(code, text)]
            delivered = any(200 <= code < 300 for code, _ in t.codes)
            if not (later and delivered and keep):
                break
            code, text = t.codes[todo.index(later[0])]
            att.note("Info", "Recipients", f"{len(later)} recipient(s) refused with "
                     f"{reply_line(code, text)}: sent in a following transaction")
            todo = later
        att.codes = [r for r in replies if r is not None]
        return keep

    def _transaction(self, conn: _Client, att: Attempt, sender: str,
                     recipients: Sequence[str], data: bytes, options: list[str],
                     rcpt_options: Sequence[list[str]]) -> bool:
        """MAIL, RCPT for each recipient (with its parameters), DATA; returns whether the
        connection may be reused."""
        keep = False
        try:
            code, text = conn.mail(sender, options)
            att.note("Debug", "MailFrom", f"<{shown(sender)}>: {reply_line(code, _text(text))}")
            if code != 250:
                att.codes = [conn.reply(code, text)] * len(recipients)
                return _reset(conn)
            accepted = []
            for r, ropts in zip(recipients, rcpt_options, strict=True):
                code, text = conn.rcpt(r, ropts)
                if code == 421:
                    # The server closes the connection (RFC 5321 3.8): its reply is the
                    # answer for every recipient of the transaction, and is retried.
                    att.refused(conn.reply(code, text), permanent=False)
                    att.codes = [att.refusal] * len(recipients)
                    att.note("Error", "Recipients", att.error)
                    return False
                att.codes.append(conn.reply(code, text))
                if code in (250, 251):
                    accepted.append(r)
            if not accepted:
                return _reset(conn)
            code, text = self._data(conn, data)
            done = conn.reply(code, text)
            att.note("Info", "Data", said(done) if code != 250 else reply_line(*done))
            att.codes = [done if r[0] in (250, 251) else r for r in att.codes]
            keep = code == 250 or 400 <= code < 600
        except smtplib.SMTPDataError as exc:
            # The DATA command refused: the recipients taken at RCPT get that answer, the
            # others keep their own (a 450 at RCPT is retried, a 550 is not retried).
            att.refused(conn.reply(exc.smtp_code, exc.smtp_error),
                        permanent=500 <= exc.smtp_code < 600)
            reply = att.refusal
            att.codes = ([reply if r[0] in (250, 251) else r for r in att.codes]
                         if len(att.codes) == len(recipients) else [])
            keep = 400 <= exc.smtp_code < 600
            att.note("Error", "Data", att.error)
        except smtplib.SMTPResponseException as exc:
            # A reply inside the transaction (e.g. 554 to DATA) means what it says.
            att.refused(conn.reply(exc.smtp_code, exc.smtp_error),
                        permanent=500 <= exc.smtp_code < 600)
            att.codes = []
            keep = 400 <= exc.smtp_code < 600
            att.note("Error", "Transaction", att.error)
        except (smtplib.SMTPException, OSError) as exc:
            why = conn.failure(exc)
            att.error = why if isinstance(why, str) else said(why)
            att.codes = []
            att.note("Error", "Transaction", att.error)
        return keep

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for c in pool:
            with contextlib.suppress(Exception):
                c.quit()


def _hello(conn: _Client) -> None:
    """EHLO, or HELO where EHLO is refused (as Postfix falls back); a refused HELO
    refuses the connection (SMTPHeloError, retried: ours to fix)."""
    code, _ = conn.ehlo()
    if not 200 <= code < 300:
        code, text = conn.helo()
        if not 200 <= code < 300:
            raise smtplib.SMTPHeloError(code, text)


def _dsn_mail(dsn: DsnRequest) -> list[str]:
    """MAIL FROM's RET and ENVID, as they were given (ENVID xtext-encoded again)."""
    m = dsn.message
    return ([f"RET={m.ret}"] if m.ret else []) + (
        [f"ENVID={xtext_encode(m.envid)}"] if m.envid else [])


def _dsn_rcpt(dsn: DsnRequest) -> list[list[str]]:
    """Each recipient's NOTIFY and ORCPT, as given: none that was not (RFC 3461 5.2.1
    forbids adding a NOTIFY)."""
    return [([f"NOTIFY={d.notify}"] if d.notify else [])
            + ([orcpt_param(d.orcpt)] if d.orcpt else []) for d in dsn.recipients]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _too_many(code: int, text: str) -> bool:
    """A refusal of a recipient for the number of recipients (RFC 5321 4.5.3.1.10: 452,
    or the 552 of RFC 821 that clients should read as temporary)."""
    return code == 452 or (code == 552 and text.startswith("5.5.3"))


def _reset(conn: _Client) -> bool:
    """RSET after a transaction the server refused; whether the connection may be
    reused. A server that closed the connection after its refusal (MAIL FROM answered
    554, then gone) leaves that refusal as the answer, not the closed connection."""
    try:
        return conn.rset()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def error_reply(att: Attempt) -> tuple[int, str]:
    """The (code, text) every recipient gets from an attempt that failed as a whole: the
    server's reply as it gave it (its code once, before the text, as for a reply to
    RCPT), or code 0 (temporary) with the error when no reply did. A 5xx that refused
    the connection rather than the message is retried (see retried)."""
    if att.refusal[0]:
        return att.refusal
    return 0, att.error or "not delivered"


def retried(att: Attempt, reply: tuple[int, str]) -> bool:
    """Whether a recipient's 5xx `reply` is the attempt's refusal of the connection
    (greeting, HELO, STARTTLS, AUTH): a refusal of the relay's that is ours to fix, so
    retried like a 4xx (Postfix's soft bounce), while the reply is reported as given."""
    return (not att.permanent_error and reply[0] >= 500 and reply == att.refusal)


class MaildirTransport(Transport):
    """Writes each message into DIR/new (demo and development); every recipient gets 250."""

    name = "Maildir"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.account = str(directory)
        self._seq = 0
        self._lock = threading.Lock()
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def _send(self, att: Attempt, sender: str, recipients: Sequence[str],
              data: bytes, dsn: DsnRequest | None = None) -> None:
        # The message ends here: deskgate is its final destination (success notices say
        # delivered); RET/ENVID/NOTIFY/ORCPT have nowhere further to go.
        att.final = True
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = f"{time.time():.6f}.{os.getpid()}_{seq}.{socket.gethostname()}"
        # deliver() kept every address with a control character out; shown() makes
        # sure none is ever written raw into these header lines.
        envelope = (f"Return-Path: <{shown(sender)}>\r\n"
                    + "".join(f"X-Deskgate-Envelope-To: <{shown(r)}>\r\n"
                              for r in recipients))
        tmp, new = self.dir / "tmp" / name, self.dir / "new" / name
        try:
            # 0640 whatever the umask: the outbox holds customers' mail.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as fh:
                fh.write(envelope.encode() + data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(new)
        except OSError as exc:
            att.error = f"cannot write {new}: {exc.strerror}"
            att.note("Error", "Maildir", att.error)
            return
        att.codes = [(250, f"written to {new.name}")] * len(recipients)
        att.note("Info", "Maildir", f"written to {new}")


def make_transport(cfg: Config) -> Transport:
    r = cfg.relay
    if r.mode == "maildir":
        return MaildirTransport(cfg.path(r.maildir))
    return SmtpTransport(r, local_hostname=cfg.gateway.hostname, root=cfg,
                         pool_size=max(1, r.concurrency))
