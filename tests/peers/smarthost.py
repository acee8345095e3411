"""Smarthosts for outbound tests: Postfix's smtp-sink, and an aiosmtpd sink with
STARTTLS + AUTH whose replies a test can script per recipient or at DATA."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.peers.ports import free_port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# ----------------------------------------------------------------- smtp-sink


@dataclass
class SinkMessage:
    mail_from: str
    rcpts: list[str]
    data: bytes


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port (started and stopped by PID).

    options: extra smtp-sink flags, e.g. ["-r", "RCPT"] (4xx to RCPT),
    ["-f", "DATA"] (5xx to DATA), ["-B", "550 5.1.1 no such user"].
    With `dump`, every transaction is written to a file for `messages()`.
    """

    __test__ = False

    def __init__(self, directory: Path, *, options: list[str] | None = None,
                 dump: bool = True, port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.options = options or []
        self.dump = dump
        self.proc: subprocess.Popen[bytes] | None = None
        self.dump_dir = self.dir / "dump"

    @staticmethod
    def available() -> bool:
        return shutil.which("smtp-sink") is not None or Path("/usr/sbin/smtp-sink").exists()

    def start(self) -> SmtpSink:
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [exe, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "root"]     # it insists on -u as root; keeps the dump dir writable
        if self.dump:
            self.dump_dir.mkdir(exist_ok=True)
            args += ["-d", f"{self.dump_dir}/%H%M%S."]
        args += [*self.options, f"127.0.0.1:{self.port}", "256"]
        self.out = (self.dir / "sink.out").open("wb")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(Exception):
            self.out.close()

    def count(self) -> int:
        """Messages received so far (from the -c counters)."""
        text = (self.dir / "sink.out").read_bytes().decode("latin-1").replace("\r", "\n")
        last = 0
        for line in text.splitlines():
            for part in line.split():
                if part.startswith("mesg="):
                    last = int(part[5:])
        return last

    def messages(self) -> list[SinkMessage]:
        out = []
        # In arrival order: the names are the time to the second plus a random number,
        # so two transactions within one second would otherwise come in random order.
        files = sorted(self.dump_dir.glob("*"), key=lambda f: (f.stat().st_mtime_ns, f.name))
        for f in files:
            raw = f.read_bytes()
            head, _, body = raw.partition(b"\nReceived: ")
            mail_from, rcpts = "", []
            for line in head.decode("latin-1").splitlines():
                if line.startswith("X-Mail-Args: "):
                    mail_from = line[13:].split()[0].strip("<>") if line[13:].strip() else ""
                elif line.startswith("X-Rcpt-Args: "):
                    rcpts.append(line[13:].split()[0].strip("<>"))
            out.append(SinkMessage(mail_from, rcpts, b"Received: " + body))
        return out

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------- aiosmtpd sink


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    user: str
    tls: bool


Script = Callable[[str, str], str | None]   # (stage "RCPT"/"DATA", address) → reply or None


@dataclass
class _Handler:
    users: dict[str, str]
    received: list[Received] = field(default_factory=list)
    script: Script | None = None
    auth_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    data_delay: float = 0.0
    # When set: DATA is answered only once the event is set (at most 60 s), so a test can
    # act while a delivery is certainly under way, however slow the machine.
    data_gate: threading.Event | None = None
    rcpt_delay: float = 0.0
    rcpt_seen: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.rcpt_seen += 1
        if self.rcpt_delay:
            import asyncio

            await asyncio.sleep(self.rcpt_delay)
        reply = self.script("RCPT", address) if self.script else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_gate is not None:
            for _ in range(1200):
                if self.data_gate.is_set():
                    break
                await asyncio.sleep(0.05)
        reply = self.script("DATA", ",".join(envelope.rcpt_tos)) if self.script else None
        if reply:
            return reply
        login = session.auth_data if isinstance(session.auth_data, str) else ""
        transport = server.transport
        tls = server._tls_protocol is not None or (
            transport is not None and transport.get_extra_info("sslcontext") is not None)
        with self.lock:
            sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
            self.received.append(Received(sender, list(envelope.rcpt_tos),
                                          envelope.original_content or b"", login, tls))
        return "250 2.0.0 OK: queued"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            name, pw = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(name) == pw:
                # A plain name: aiosmtpd warns (deprecated login_data) for objects with .login
                return AuthResult(success=True, auth_data=name)
        self.auth_failures += 1
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    def __init__(self, handler: _Handler, *, tls: ssl.SSLContext | None, port: int,
                 implicit_tls: bool, auth_required: bool, smtputf8: bool = True) -> None:
        self._tls = tls
        self._smtputf8 = smtputf8
        self._implicit = implicit_tls
        self._auth_required = auth_required
        super().__init__(handler, hostname="127.0.0.1", port=port,
                         ssl_context=tls if implicit_tls else None,
                         server_hostname="localhost", ready_timeout=10)

    def factory(self) -> SMTP:
        h: _Handler = self.handler
        # With implicit TLS the whole connection is encrypted: no STARTTLS to offer, and
        # aiosmtpd's "AUTH only after STARTTLS" check must not apply.
        return SMTP(h, hostname="smarthost.test",
                    tls_context=None if self._implicit else self._tls,
                    require_starttls=False,
                    auth_required=self._auth_required and not self._implicit,
                    auth_require_tls=not self._implicit, authenticator=h.authenticate,
                    enable_SMTPUTF8=self._smtputf8)

    def _trigger_server(self) -> None:
        # The base class opens a TLS connection with verification to wake the server;
        # a plain connect is enough and works whatever the certificate.
        with contextlib.suppress(OSError), socket.create_connection(
                (self.hostname, self.port), 1.0):
            pass


class AuthSink:
    """aiosmtpd smarthost: STARTTLS (or implicit TLS) with a TestCA certificate, AUTH
    PLAIN/LOGIN only after TLS, `script` to answer RCPT/DATA with chosen replies."""

    __test__ = False

    def __init__(self, cert: Path | None = None, key: Path | None = None, *,
                 users: dict[str, str] | None = None, implicit_tls: bool = False,
                 auth_required: bool = False, port: int | None = None,
                 smtputf8: bool = True) -> None:
        tls = None
        if cert and key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(cert), str(key))
        self.handler = _Handler(users or {})
        self.port = port or free_port()
        self.controller = _Controller(self.handler, tls=tls, port=self.port,
                                      implicit_tls=implicit_tls, auth_required=auth_required,
                                      smtputf8=smtputf8)

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def set_script(self, script: Script | None) -> None:
        self.handler.script = script

    def start(self) -> AuthSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()

    def __enter__(self) -> AuthSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
