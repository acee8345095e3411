"""A throwaway Dovecot (IMAP, IMAPS, POP3, POP3S) on loopback for poller tests.

Own base_dir/state_dir/log_path in a temp dir, a passwd-file passdb (plus an
optional oauth2 passdb), a static userdb running as `mail`, Maildirs owned by
`mail`, the TLS certificate from a TestCA. `dovecot -c FILE` daemonises, so it
is never run with its output on a pipe; it is stopped with `doveadm -c FILE stop`.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ca import TestCA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which("dovecot") is not None and shutil.which("doveadm") is not None


@dataclass
class Dovecot:
    """One running Dovecot; `ports` maps imap/imaps/pop3/pop3s to loopback ports."""

    dir: Path
    ca: TestCA
    users: dict[str, str]
    oauth2_introspection_url: str = ""
    extra_conf: str = ""     # appended to dovecot.conf (e.g. an imap_capability without UIDPLUS)
    ports: dict[str, int] = field(default_factory=dict)
    conf: Path = field(init=False)
    mail_uid: int = field(init=False)
    mail_gid: int = field(init=False)

    def __post_init__(self) -> None:
        self.conf = self.dir / "dovecot.conf"
        pw = pwd.getpwnam("mail")
        self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        d = self.dir
        for sub in ("base", "state", "mail", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        server = self.ca.issue("dovecot", hosts=("localhost", "127.0.0.1"), filename="dovecot")
        self.ports = {name: _free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        (d / "users").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n"
                                         for u, p in self.users.items()))
        for user in self.users:
            self._mkdirs(d / "mail" / user)
            self._mkdirs(d / "home" / user)
        oauth2 = ""
        mechs = "plain login"
        if self.oauth2_introspection_url:
            mechs += " xoauth2 oauthbearer"
            (d / "oauth2.conf.ext").write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n")
            oauth2 = f"""
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf.ext
}}
"""
        self.conf.write_text(f"""
protocols = imap pop3
listen = 127.0.0.1
base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{server.cert}
ssl_key = <{server.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = {mechs}
mail_location = maildir:{d}/mail/%u
first_valid_uid = {self.mail_uid}
mail_privileged_group =
login_trusted_networks =
shutdown_clients = yes
{oauth2}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={d}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.ports['imaps']}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.ports['pop3s']}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
}}
{self.extra_conf}
""")
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, timeout=30,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.ports["imap"]), 1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start; log:\n" + self.log())

    def stop(self) -> None:
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], timeout=30, check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        pidfile = self.dir / "base" / "master.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "dovecot.log").read_text(errors="replace")
        return ""

    def _mkdirs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.mail_uid, self.mail_gid)

    # ------------------------------------------------------------ mailbox helpers

    def imap(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.ports["imap"])
        c.login(user, self.users[user])
        return c

    def append(self, user: str, messages: list[bytes], folder: str = "INBOX") -> None:
        """Put messages into a folder over IMAP (as a real client would)."""
        c = self.imap(user)
        try:
            if folder != "INBOX":
                c.create(folder)
            for raw in messages:
                typ, data = c.append(folder, None, None, raw)
                assert typ == "OK", data
        finally:
            c.logout()

    def drop_into_maildir(self, user: str, messages: list[bytes]) -> None:
        """Write messages straight into Maildir/new (fast, for large volumes)."""
        base = self.dir / "mail" / user
        for sub in ("new", "cur", "tmp"):
            self._mkdirs(base / sub)
        host = socket.gethostname()
        for i, raw in enumerate(messages):
            name = f"{int(time.time())}.M{i}P{os.getpid()}R{uuid.uuid4().hex[:8]}.{host}"
            tmp = base / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, self.mail_uid, self.mail_gid)
            tmp.rename(base / "new" / name)

    def message_file(self, user: str, needle: bytes) -> Path:
        """The Maildir file of the INBOX message that contains `needle`."""
        base = self.dir / "mail" / user
        for path in sorted([*base.glob("new/*"), *base.glob("cur/*")]):
            if needle in path.read_bytes():
                return path
        raise LookupError(f"no message of {user} contains {needle!r}")

    def count(self, user: str, folder: str = "INBOX") -> int:
        """Messages in a folder that are not flagged \\Deleted."""
        c = self.imap(user)
        try:
            typ, data = c.select(folder, readonly=True)
            if typ != "OK":
                return 0
            typ, data = c.search(None, "UNDELETED")
            return len(data[0].split())
        finally:
            c.logout()

    def clear(self, user: str) -> None:
        """Remove every message and every folder but INBOX."""
        c = self.imap(user)
        try:
            _, data = c.list()
            for line in data:
                if isinstance(line, bytes):
                    name = line.decode().split(' "." ', 1)[-1].strip().strip('"')
                    if name and name != "INBOX":
                        c.delete(f'"{name}"')
            _, data = c.select("INBOX")
            if int(data[0] or 0):
                c.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
                c.expunge()
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def folders(self, user: str) -> list[str]:
        c = self.imap(user)
        try:
            _, data = c.list()
            return [line.decode().split(' "." ', 1)[-1].strip().strip('"')
                    for line in data if isinstance(line, bytes)]
        finally:
            c.logout()

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.ca_path))


def make_dovecot_dir() -> Path:
    """A temp dir the `mail` user can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="deskgate-dovecot-"))
    d.chmod(0o755)
    return d


@contextlib.contextmanager
def own_dovecot(users: dict[str, str], extra_conf: str) -> Iterator[Dovecot]:
    """A Dovecot of a test's own with `extra_conf` (capabilities, failure modes the
    session's server must not have), stopped and removed afterwards."""
    from tests.peers.require import missing_peer

    if not available():
        missing_peer("Debian dovecot-imapd/dovecot-pop3d not installed")
    d = make_dovecot_dir()
    server = Dovecot(d, TestCA(d / "ca"), dict(users), extra_conf=extra_conf)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)
