"""A throwaway Postfix instance for integration tests.

Everything lives under one base directory: config_directory, queue_directory,
data_directory and the mail log. The instance listens with an smtpd on a free
loopback port and hands the helpdesk domain to an LMTP target (the gateway under
test) through a dedicated transport that batches several recipients per LMTP
transaction. Postfix's delivery agents run as user `postfix`, so the base
directory is traversable by everyone (0755) and the LMTP socket must be
reachable by that user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
TRANSPORT = "deskgate"        # the master.cf service that delivers to the gateway
CACHED = "deskgatecached"     # the same, with LMTP connection caching (Postfix's default)


def available() -> bool:
    """True when the Postfix binaries are installed and we can start them (root)."""
    return Path(POSTFIX).exists() and os.geteuid() == 0 and _has_user("postfix")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
# No connection cache here: tests sharing the instance repoint the socket to a new gateway.
{transport} unix  -       -       n       -       -       lmtp
  -o syslog_name=postfix/{transport}
  -o lmtp_connection_cache_on_demand=no
{cached} unix  -       -       n       -       -       lmtp
  -o syslog_name=postfix/{cached}
  -o lmtp_connection_cache_on_demand=yes
  -o lmtp_connection_cache_time_limit=10s
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.deskgate.test
mydomain = deskgate.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
transport_maps = inline:{{ {domain}={transport}:{target}, {cached_domain}={cached}:{target},
    {sink_domain}=discard: }}
relay_domains = {domain}, {cached_domain}
{transport}_destination_recipient_limit = {rcpt_limit}
{transport}_destination_concurrency_limit = 4
{cached}_destination_recipient_limit = {rcpt_limit}
{cached}_destination_concurrency_limit = 2
# Mail for the cached transport waits for a flush, so it leaves as one backlog.
defer_transports = {cached}
default_transport = error:no delivery outside the test
local_transport = error:no local delivery
relay_transport = error:no relay
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
smtpd_banner = $myhostname ESMTP test
message_size_limit = {message_size_limit}
maillog_file = {maillog}
maillog_file_prefixes = {base}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0
lmtp_connect_timeout = 10s
lmtp_data_done_timeout = 120s
in_flow_delay = 0
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
"""


class PostfixError(RuntimeError):
    pass


class Postfix:
    """One Postfix instance in `base` that relays `domain` to an LMTP target.

    target: "unix:/path/to/socket" or "inet:127.0.0.1:port". Mail for
    `sink_domain` (the senders used by the tests) is discarded, so bounces and
    delay notices never leave the machine. Mail for `cached_domain` goes to the
    same target through a transport that keeps LMTP connections open between
    messages, as a production Postfix does; it waits in the queue until
    flush() so that it leaves as one backlog (which is when Postfix reuses
    connections).
    """

    __test__ = False

    def __init__(self, base: Path, target: str, *, domain: str = "example.org",
                 sink_domain: str = "customer.test", cached_domain: str = "example.net",
                 rcpt_limit: int = 50,
                 message_size_limit: int = 10 * 1024 * 1024) -> None:
        self.base = base
        self.conf = base / "etc"
        self.queue = base / "spool"
        self.data = base / "data"
        self.maillog = base / "maillog"
        self.port = _free_port()
        self.target = target
        self.domain = domain
        self.sink_domain = sink_domain
        self.cached_domain = cached_domain
        self.rcpt_limit = rcpt_limit
        self.message_size_limit = message_size_limit
        self.running = False

    # ------------------------------------------------------------------ setup

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.conf.mkdir(exist_ok=True)
        self.queue.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        self.data.chmod(0o700)
        self.maillog.touch()
        values = {"conf": self.conf, "queue": self.queue, "data": self.data, "base": self.base,
                  "maillog": self.maillog, "domain": self.domain, "target": self.target,
                  "sink_domain": self.sink_domain, "transport": TRANSPORT,
                  "cached_domain": self.cached_domain, "cached": CACHED,
                  "rcpt_limit": self.rcpt_limit, "message_size_limit": self.message_size_limit,
                  "port": self.port}
        (self.conf / "main.cf").write_text(MAIN_CF.format(**values))
        (self.conf / "master.cf").write_text(MASTER_CF.format(**values))
        # Postfix refuses group/world-writable configuration files.
        for f in ("main.cf", "master.cf"):
            (self.conf / f).chmod(0o644)

    def run(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run a Postfix command (postfix, postqueue, postsuper, postconf) on this instance."""
        cmd = [args[0], "-c", str(self.conf), *args[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise PostfixError(f"{' '.join(cmd)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()}\n{self.log_tail()}")
        return proc

    def check(self) -> str:
        """`postfix check` output (warnings); raises on fatal errors."""
        proc = self.run("postfix", "check")
        return proc.stderr

    def start(self) -> None:
        self.write_config()
        self.run("postfix", "check")
        self.run("postfix", "start")
        self.running = True
        self._wait_listening()

    def start_relaying(self, routes: dict[str, int], *settings: str) -> None:
        """Start as a relay that hands mail for each domain of `routes` to that port on
        127.0.0.1 over SMTP (deskgate's relay in front, a sink behind); `settings` are
        more `postconf -e` lines."""
        self.write_config()
        maps = ", ".join(f"{dom}=smtp:[127.0.0.1]:{port}" for dom, port in routes.items())
        self.run("postconf", "-e", f"transport_maps=inline:{{ {maps} }}",
                 f"relay_domains={', '.join(routes)}", *settings)
        with (self.conf / "master.cf").open("a") as fh:
            fh.write("smtp      unix  -       -       n       -       -       smtp\n")
        self.run("postfix", "start")
        self.running = True
        self._wait_listening()

    def stop(self) -> None:
        if self.running:
            pid = self._master_pid()      # read first: the pid file goes with the master
            self.run("postfix", "stop", check=False)
            self.running = False
            self._wait_gone(pid)

    def _master_pid(self) -> int | None:
        pidfile = self.queue / "pid" / "master.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_gone(self, pid: int | None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def _wait_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise PostfixError(f"smtpd did not listen on {self.port}\n{self.log_tail()}")

    def __enter__(self) -> Postfix:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queue

    def queue_entries(self) -> list[dict[str, object]]:
        """The queue as `postqueue -j` reports it (one dict per message)."""
        out = self.run("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Ask for an immediate delivery attempt of every queued message."""
        self.run("postqueue", "-f")

    def wait_queue_empty(self, timeout: float = 60, *, flush: bool = False) -> None:
        """Wait until nothing is queued; raises with the queue and log tail on timeout."""
        deadline = time.monotonic() + timeout
        entries: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            entries = self.queue_entries()
            if not entries:
                return
            if flush:
                self.flush()
            time.sleep(0.2)
        raise PostfixError(f"queue not empty after {timeout}s: {entries}\n{self.log_tail()}")

    def wait_log(self, pattern: str, *, count: int = 1, timeout: float = 60,
                 since: int = 0) -> list[re.Match[str]]:
        """Wait until `pattern` matches `count` lines of the mail log (from offset `since`)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        found: list[re.Match[str]] = []
        while time.monotonic() < deadline:
            found = [m for line in self.log_lines(since) if (m := rx.search(line))]
            if len(found) >= count:
                return found
            time.sleep(0.2)
        raise PostfixError(f"{pattern!r} seen {len(found)}/{count} times\n{self.log_tail()}")

    def purge(self) -> None:
        """Delete every queued message (between tests sharing one instance)."""
        self.run("postsuper", "-d", "ALL", check=False)

    # ------------------------------------------------------------------ log

    def log_offset(self) -> int:
        """Current end of the mail log; pass as `since` to read only what follows."""
        return self.maillog.stat().st_size

    def log_lines(self, since: int = 0) -> list[str]:
        with self.maillog.open("rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace").splitlines()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_lines()[-n:])
        except OSError:
            return "(no mail log)"

    def deliveries(self, since: int = 0) -> list[dict[str, str]]:
        """Delivery lines of the log: {queue_id, to, relay, status, dsn, text, service}."""
        rx = re.compile(r"postfix/(?P<service>[\w/-]+)\[\d+\]: (?P<queue_id>[0-9A-F]+): "
                        r"to=<(?P<to>[^>]*)>.*?relay=(?P<relay>\S+), .*?dsn=(?P<dsn>[\d.]+), "
                        r"status=(?P<status>\w+) \((?P<text>.*)\)$")
        return [m.groupdict() for line in self.log_lines(since) if (m := rx.search(line))]


@contextlib.contextmanager
def postfix_dir(prefix: str = "deskgate-postfix-") -> Iterator[Path]:
    """A base directory that user postfix can traverse (pytest's tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
