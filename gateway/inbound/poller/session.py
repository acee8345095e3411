"""What IMAP and POP3 sessions have in common: the step errors, the TLS context,
the message handle and the protocol the runner drives.

Sessions are blocking (stdlib imaplib/poplib) and each one is used by exactly
one worker thread; see gateway/inbound/poller/__init__.py for why.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.commlog import CommObj
from gateway.config import AccountConfig

Step = Literal["dns", "tcp", "tls", "auth", "folder", "fetch", "remove"]
STEPS: tuple[Step, ...] = ("dns", "tcp", "tls", "auth", "folder")

TIMEOUT = 60.0   # seconds for connect and every read


class MailboxError(Exception):
    """A failure at one step of talking to the mailbox; `reason` is safe to log."""

    def __init__(self, step: Step, reason: str, *, temporary: bool = True) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.temporary = temporary


@dataclass(frozen=True)
class RemoteMessage:
    """One message on the server. `key` is stable across sessions (IMAP
    "<uidvalidity>:<uid>", POP3 UIDL) unless `stable` is false (a POP3 server
    without UIDL: "#<number>", which names another message on the next
    connection); `ref` addresses it in this session."""

    key: str
    ref: str          # IMAP UID, POP3 message number
    size: int
    uid: int = 0      # IMAP UID (0 for POP3)
    stable: bool = True
    deleted: bool = False   # IMAP: flagged \Deleted (by another client, or ours awaiting EXPUNGE)


@dataclass(frozen=True)
class Refused:
    """The server would not hand over a message (IMAP NO or BYE on its UID FETCH,
    POP3 -ERR on its RETR): it stays there and the run goes on with the others.

    `answer` is the server's text. `closed`: the server ended the connection with
    its answer (Dovecot's default for a message it cannot read), so the run goes on
    on a new one. `sure` is false for the messages of a several-message FETCH the
    server closed the connection on: one of them was refused, maybe not this one,
    so each is fetched on its own on the next connection.
    """

    answer: str
    closed: bool = False
    sure: bool = True


Fetched = bytes | Refused | None   # None: the message vanished meanwhile


@dataclass(frozen=True)
class Listing:
    messages: tuple[RemoteMessage, ...]
    uidvalidity: int = 0     # IMAP only
    total: int = 0           # messages in the folder, whatever their state


class Session(Protocol):
    """The runner's view of one connection to a mailbox."""

    log: CommObj
    capabilities: frozenset[str]

    def open(self) -> None: ...

    def listing(self, *, after_uid: int | None = None) -> Listing: ...

    def fetch(self, msg: RemoteMessage) -> Fetched: ...

    def fetch_many(self, msgs: list[RemoteMessage]) -> list[Fetched]: ...

    def headers(self, msg: RemoteMessage) -> bytes: ...

    def done(self, msg: RemoteMessage) -> None:
        """Note a committed message for removal; no I/O (finish() removes)."""

    def finish(self) -> None: ...

    def abort(self) -> None: ...


def plural(n: int, word: str) -> str:
    """The count with its noun: "1 message", "0 messages", "2 messages"."""
    return f"{n} {word if n == 1 else word + 's'}"


# A function that returns a fresh bearer token for XOAUTH2 (blocking; raises
# MailboxError("auth", ...) when the token endpoint refuses).
TokenGetter = Callable[[], str]
# Given the token the mail server refused: a new one to try once more, or None
# (TokenSource.renew).
TokenRenewer = Callable[[str], "str | None"]


def ssl_context(account: AccountConfig, root: Path) -> ssl.SSLContext:
    """Verify the server against the system store or tls_ca_file, hostname included."""
    if account.tls_ca_file:
        path = Path(account.tls_ca_file)
        path = path if path.is_absolute() else root / path
        ctx = ssl.create_default_context(cafile=str(path))
    else:
        ctx = ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def resolve(host: str, port: int) -> list[str]:
    """DNS step on its own so a failure says "DNS", not "connection refused"."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MailboxError("dns", f"cannot resolve {host}: {exc.strerror}") from exc
    return sorted({str(i[4][0]) for i in infos})


# OpenSSL verify codes of a chain that leads to no trusted CA (not a date or a name)
_UNTRUSTED_CHAIN = frozenset({2, 18, 19, 20, 21})


def trust_source(account: AccountConfig, root: Path) -> str:
    """What a server certificate is checked against, for the log."""
    if not account.tls_ca_file:
        return "the system CA store; a private CA is trusted with tls_ca_file"
    path = Path(account.tls_ca_file)
    return f"tls_ca_file {path if path.is_absolute() else root / path}"


def classify_os_error(exc: BaseException, host: str, port: int, *, tls: bool,
                      trust: str = "") -> MailboxError:
    """Turn what the socket/ssl layer raised into a step error with a clear reason.
    `trust` (trust_source) is named when the chain leads to no trusted CA."""
    if isinstance(exc, MailboxError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        checked = (f" (checked against {trust})"
                   if trust and exc.verify_code in _UNTRUSTED_CHAIN else "")
        return MailboxError("tls", f"certificate of {host} not trusted: "
                            f"{exc.verify_message or exc.reason}{checked}", temporary=False)
    if isinstance(exc, ssl.SSLError):
        return MailboxError("tls", f"TLS handshake with {host}:{port} failed: "
                            f"{exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return MailboxError("dns", f"cannot resolve {host}: {exc.strerror}")
    if isinstance(exc, TimeoutError | socket.timeout):
        # Implicit TLS connects and handshakes in one call: only the handshake's
        # timeout says so; a connect that times out (a firewall dropping packets) is TCP.
        if tls and "handshake" in str(exc):
            return MailboxError("tls", f"TLS handshake with {host}:{port} timed out")
        return MailboxError("tcp", f"{host}:{port} timed out")
    if isinstance(exc, ConnectionRefusedError):
        return MailboxError("tcp", f"{host}:{port} refused the connection")
    if isinstance(exc, OSError):
        return MailboxError("tcp", f"{host}:{port}: {exc.strerror or exc}")
    return MailboxError("tcp", f"{host}:{port}: {type(exc).__name__}: {exc}")


def nodelay(sock: object) -> None:
    """Commands and replies are small and strictly alternating: no Nagle delay."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def describe_tls(sock: object) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384, certificate CN=... verified' for the log."""
    if not isinstance(sock, ssl.SSLSocket):
        return "no TLS"
    cipher = sock.cipher()
    cert: Any = sock.getpeercert() or {}
    subject = ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
    return (f"{sock.version()} {cipher[0] if cipher else ''}, certificate {subject or '?'} "
            "verified")


# Response codes of a login the server could not check now (its user database is
# down, the mailbox is locked): IMAP RFC 5530, POP3 RFC 3206 and RFC 2449.
_TEMPORARY_AUTH = ("[UNAVAILABLE]", "[SYS/TEMP]", "[IN-USE]")


def auth_unavailable(login: str, answer: str) -> MailboxError | None:
    """The error for an answer saying the login could not be checked now, else None."""
    if not any(code in answer.upper() for code in _TEMPORARY_AUTH):
        return None
    return MailboxError("auth", f"the server could not check the login as {login} now "
                        f"(a temporary failure on its side, not a wrong password): {answer}")


def xoauth2_error(challenge: bytes) -> str:
    """The server's XOAUTH2 error challenge (JSON, already base64-decoded) for the log:
    'status 401, schemes bearer, scope mail'. Google and Dovecot send one before
    their NO; it says why the access token was not accepted."""
    text = challenge.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(body, dict):
        return text[:200]
    return ", ".join(f"{k} {str(v)[:100]}" for k, v in list(body.items())[:6])


def xoauth2_refused(login: str, answer: str, challenge: bytes | None, *, sent: bool) -> str:
    """The reason of a refused XOAUTH2 login: the server's answer and its error challenge.
    Not `sent`: the server refused AUTH XOAUTH2 before the token was sent."""
    if not sent:
        return f"XOAUTH2 login as {login} refused before the token was sent: {answer}"
    detail = f" ({xoauth2_error(challenge)})" if challenge else ""
    return (f"XOAUTH2 login as {login} refused, the server did not accept the OAuth2 "
            f"access token{detail}: {answer}")


def renewed_note(login: str, answer: str, challenge: list[bytes] | bytes | None) -> str:
    """The Notice when a cached access token was refused and a new one is tried."""
    first = challenge[0] if isinstance(challenge, list) and challenge else challenge
    detail = f" ({xoauth2_error(first)})" if isinstance(first, bytes) and first else ""
    return (f"XOAUTH2 login as {login}: the server no longer accepts the cached OAuth2 "
            f"access token{detail}: {answer}; fetched a new one and trying again")


def xoauth2(login: str, token: str) -> bytes:
    """The XOAUTH2 SASL initial response (before base64)."""
    return f"user={login}\x01auth=Bearer {token}\x01\x01".encode()
