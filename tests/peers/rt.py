"""A throwaway Request Tracker 5 (Debian's request-tracker5) on loopback for the RT tests.

Own RT_SiteConfig.pm in a temp dir (RT_SITE_CONFIG / RT_SITE_CONFIG_DIR; the
system's /etc/request-tracker5 is never read), a fresh PostgreSQL database
initialised with `rt-setup-database`, extra initial data (queues, a custom
field, a privileged `deskgate` user with an auth token, rights for Everyone),
and `rt-server` (Starlet) on a free loopback port, started and stopped by PID.
Outgoing mail goes to files (`$MailCommand = 'testfile'`), never to an MTA.

Setting up costs ~10 s, so one RT serves a whole test session; tests keep
apart by unique subjects. `RtDb` reads RT's own tables to check what arrived.
"""

from __future__ import annotations

import base64
import contextlib
import os
import quopri
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.peers.ports import free_port

PG_HOST = os.environ.get("DESKGATE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DESKGATE_TEST_PG_PORT", "5432"))
PG_USER = "postgres"
RT_SERVER = Path("/usr/share/request-tracker5/libexec/rt-server")
RT_SETUP = Path("/usr/sbin/rt-setup-database")
RTNAME = "hd.test"
ROOT_PASSWORD = "password"          # RT's default for root
AGENT = "deskgate"                  # the connector's RT user
AGENT_PASSWORD = "deskgate-secret-pw"

# Queues the tests use besides RT's General; "Server" is a ticket custom field on Support,
# "Deskgate-Key" (the connector's exact retry check) one on Sales.
EXTRA_INITIALDATA = """
@Queues = (
    { Name => 'Junk', Description => 'junk', CorrespondAddress => '', CommentAddress => '' },
    { Name => 'Support', Description => 'first level', CorrespondAddress => '',
      CommentAddress => '' },
    { Name => 'Sales', Description => 'sales', CorrespondAddress => '', CommentAddress => '' },
);
@CustomFields = (
    { Name => 'Server', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
      Queue => ['Support'], Description => 'affected server' },
    { Name => 'Deskgate-Key', Type => 'FreeformSingle', LookupType => 'RT::Queue-RT::Ticket',
      Queue => ['Sales'], Description => 'hand-off key (exact retries)' },
);
@Users = (
    { Name => '%(agent)s', EmailAddress => 'deskgate@hd.test', Password => '%(password)s',
      Privileged => 1 },
);
# Mail from unknown senders needs CreateTicket/ReplyToTicket for Everyone.
@ACL = (
    (map { { GroupDomain => 'SystemInternal', GroupType => 'Everyone', Right => $_ } }
         qw(CreateTicket ReplyToTicket CommentOnTicket SeeQueue)),
    (map { my $q = $_; map { { UserId => '%(agent)s', Queue => $q, Right => $_ } }
              qw(CreateTicket ReplyToTicket SeeQueue ShowTicket SeeCustomField
                 ModifyCustomField) }
         qw(General Junk Support Sales)),
    { UserId => '%(agent)s', Right => 'ManageAuthTokens' },
);
@Final = (
    sub {
        my $user = RT::User->new(RT->SystemUser);
        $user->Load('%(agent)s');
        my $token = RT::AuthToken->new(RT->SystemUser);
        my ($id, $msg, $auth) = $token->Create(Owner => $user->Id, Description => 'deskgate');
        die "auth token: $msg" unless $id;
        open(my $fh, '>', '%(token_file)s') or die "token file: $!";
        print $fh $auth;
        close($fh);
    },
);
1;
"""


def available() -> bool:
    """The Debian packages are installed (request-tracker5, rt5-db-postgresql, rt5-standalone)."""
    return RT_SERVER.exists() and RT_SETUP.exists() and shutil.which("perl") is not None




@dataclass
class RtServer:
    """One RT: its temp dir, database and (while running) its rt-server process."""

    dir: Path
    db: str = field(default_factory=lambda: f"rt5_t_{uuid.uuid4().hex[:12]}")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The `deskgate` user's auth token (for `Authorization: token ...`)."""
        return (self.dir / "token").read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RT_SITE_CONFIG": str(self.dir / "RT_SiteConfig.pm"),
                "RT_SITE_CONFIG_DIR": str(self.dir / "confd")}

    # ------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        """Write the site config and create + initialise the database."""
        d = self.dir
        for sub in ("mason", "confd", "log", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "RT_SiteConfig.pm").write_text(f"""
Set($rtname, '{RTNAME}');
Set($Organization, '{RTNAME}');
Set($Timezone, 'UTC');
Set($DatabaseType, 'Pg');
Set($DatabaseHost, '{PG_HOST}');
Set($DatabasePort, '{PG_PORT}');
Set($DatabaseName, '{self.db}');
Set($DatabaseUser, '{PG_USER}');
Set($DatabasePassword, '');
Set($DatabaseAdmin, '{PG_USER}');
Set($WebDomain, '127.0.0.1');
Set($WebPort, {self.port});
Set($WebPath, '');
Set($WebBaseURL, 'http://127.0.0.1:{self.port}');
Set($CorrespondAddress, 'support@{RTNAME}');
Set($CommentAddress, 'support-comment@{RTNAME}');
Set($MasonDataDir, '{d}/mason');
Set($LogToSyslog, undef);
Set($LogToSTDERR, 'warning');
Set($LogToFile, undef);
Set($MailCommand, 'testfile');
Set($RestrictReferrer, 0);
1;
""")
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.db} ENCODING 'UTF8' TEMPLATE template0")
        log = d / "log" / "setup.log"
        extra = d / "extra.initialdata"
        extra.write_text(EXTRA_INITIALDATA % {"agent": AGENT, "password": AGENT_PASSWORD,
                                              "token_file": d / "token"})
        for args in (["--action", "init"], ["--action", "insert", "--datafile", str(extra)]):
            with log.open("ab") as out:
                rc = subprocess.run([str(RT_SETUP), *args, "--skip-create", "--dba", PG_USER,
                                     "--dba-password", ""], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=300, check=False).returncode
            if rc != 0:
                raise RuntimeError(f"rt-setup-database {args[1]} failed: {log.read_text()[-2000:]}")

    def insert_initialdata(self, text: str) -> None:
        """Load more initial data (Perl, as `rt-setup-database --action insert` reads it)."""
        f = self.dir / f"insert-{uuid.uuid4().hex[:8]}.initialdata"
        f.write_text(text)
        log = self.dir / "log" / "setup.log"
        with log.open("ab") as out:
            rc = subprocess.run([str(RT_SETUP), "--action", "insert", "--datafile", str(f),
                                 "--skip-create", "--dba", PG_USER, "--dba-password", ""],
                                env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=300, check=False).returncode
        if rc != 0:
            raise RuntimeError(f"rt-setup-database insert failed: {log.read_text()[-2000:]}")

    def start(self, timeout: float = 90) -> None:
        """Start rt-server and wait until it answers HTTP."""
        log = (self.dir / "log" / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [str(RT_SERVER), "--host", "127.0.0.1", "--port", str(self.port),
             "--max-workers", "2"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rt-server exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/REST/2.0/rt", timeout=5):  # noqa: S310
                    return
            except urllib.error.HTTPError:
                return              # 401: up and asking for a login
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"rt-server did not answer within {timeout}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop rt-server (its pre-forked workers are in its own process group)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def drop(self) -> None:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")

    def log(self) -> str:
        p = self.dir / "log" / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def sibling(self, extra_config: str = "") -> RtServer:
        """A second rt-server on the same database and site config (another port), not started.

        For tests that stop RT, or change its site config (`extra_config`: more `Set(...)`
        lines, e.g. outgoing mail), without touching the session's server."""
        other = RtServer(self.dir / f"sibling-{uuid.uuid4().hex[:6]}", db=self.db)
        for sub in ("mason", "confd", "log"):
            (other.dir / sub).mkdir(parents=True, exist_ok=True)
        conf = (self.dir / "RT_SiteConfig.pm").read_text()
        conf = conf.replace(str(self.port), str(other.port)).replace(
            f"{self.dir}/mason", f"{other.dir}/mason")
        conf = conf.rstrip().removesuffix("1;") + extra_config + "\n1;\n"
        (other.dir / "RT_SiteConfig.pm").write_text(conf)
        (other.dir / "token").write_text(self.token)
        return other

    @property
    def database(self) -> RtDb:
        return RtDb(self.db)


class TlsFront:
    """HTTPS in front of rt-server (which speaks plain HTTP), as nginx would terminate TLS:
    a loopback TLS listener that forwards each connection's bytes to RT."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> TlsFront:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()          # a client that refused our certificate
            return
        with tls, socket.create_connection(("127.0.0.1", self.backend_port)) as back:
            socks: list[Any] = [tls, back]
            while True:
                ready, _, _ = select.select(socks, [], [], 30)
                if not ready:
                    return
                for r in ready:
                    try:
                        data = r.recv(65536)
                    except (OSError, ssl.SSLError):
                        return
                    if not data:
                        return
                    (back if r is tls else tls).sendall(data)


def start_rt(workroot: Path | None = None) -> RtServer:
    """Set up and start one RT in a new temp dir (caller stops and drops it)."""
    d = Path(tempfile.mkdtemp(prefix="rt5.", dir=workroot))
    rt = RtServer(d)
    try:
        rt.setup()
        rt.start()
    except BaseException:
        rt.stop()
        with contextlib.suppress(Exception):
            rt.drop()
        shutil.rmtree(d, ignore_errors=True)
        raise
    return rt


@pytest.fixture(scope="session")
def rt5() -> Iterator[RtServer]:
    """One running RT for the session; skipped without the packages (a failure under CI)."""
    from tests.peers.require import missing_peer

    if not available():
        missing_peer("Request Tracker 5 is not installed (request-tracker5, rt5-db-postgresql, "
                     "rt5-standalone): run make system-deps")
    try:
        psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                        connect_timeout=5).close()
    except psycopg.Error as exc:
        missing_peer(f"PostgreSQL for RT not reachable: {exc}")
    rt = start_rt()
    try:
        yield rt
    finally:
        rt.stop()
        with contextlib.suppress(Exception):
            rt.drop()
        shutil.rmtree(rt.dir, ignore_errors=True)


# ---------------------------------------------------------------- reading RT's tables

@dataclass(frozen=True)
class RtAttachment:
    """One MIME part RT stored for a transaction."""

    id: int
    parent: int
    content_type: str
    filename: str
    message_id: str
    headers: str
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RtTransaction:
    id: int
    type: str
    created: str
    attachments: list[RtAttachment]

    @property
    def message_id(self) -> str:
        """The Message-ID RT stored on the top part (its own when it generated one)."""
        return next((a.message_id for a in self.attachments if a.parent == 0), "")

    @property
    def content(self) -> str:
        """The first text/plain or text/html part that is not a named file."""
        for a in self.attachments:
            if a.content_type in ("text/plain", "text/html") and not a.filename:
                return a.text
        return ""

    @property
    def files(self) -> dict[str, RtAttachment]:
        return {a.filename: a for a in self.attachments if a.filename}


@dataclass(frozen=True)
class RtTicket:
    id: int
    subject: str
    queue: str
    status: str
    priority: int
    requestors: list[str]
    custom_fields: dict[str, str]


class RtDb:
    """Read-only queries on one RT database: tickets, their messages and attachments."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.name) as conn:
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def tickets(self, subject_like: str = "%") -> list[RtTicket]:
        """Tickets (not merged away) whose subject matches, oldest first."""
        rows = self._rows("""
            select t.id, t.subject, q.name, t.status, t.priority,
              coalesce((select string_agg(lower(u.emailaddress), ',' order by u.emailaddress)
                 from groups g join groupmembers gm on gm.groupid = g.id
                 join users u on u.id = gm.memberid
                 where g.domain = 'RT::Ticket-Role' and g.name = 'Requestor'
                   and g.instance = t.id), '')
            from tickets t join queues q on q.id = t.queue
            where t.subject like %s and t.id = t.effectiveid order by t.id""", subject_like)
        out = []
        for tid, subject, queue, status, priority, req in rows:
            cfs = dict(self._rows("""
                select cf.name, v.content from objectcustomfieldvalues v
                join customfields cf on cf.id = v.customfield
                where v.objecttype = 'RT::Ticket' and v.objectid = %s and v.disabled = 0""", tid))
            out.append(RtTicket(tid, subject, queue, status, priority,
                                [r for r in req.split(",") if r], cfs))
        return out

    def ticket(self, ticket_id: int) -> RtTicket:
        found = [t for t in self.tickets() if t.id == ticket_id]
        assert found, f"no RT ticket {ticket_id}"
        return found[0]

    def transactions(self, ticket_id: int, types: tuple[str, ...] = ("Create", "Correspond")
                     ) -> list[RtTransaction]:
        """The ticket's Create/Correspond transactions with their attachments, in order."""
        txns = self._rows("""
            select id, type, created::text from transactions
            where objecttype = 'RT::Ticket' and objectid = %s and type = any(%s) order by id""",
                          ticket_id, list(types))
        out = []
        for txid, typ, created in txns:
            parts = self._rows("""
                select id, parent, coalesce(contenttype, ''), coalesce(filename, ''),
                       coalesce(messageid, ''), coalesce(headers, ''),
                       coalesce(contentencoding, ''), content
                from attachments where transactionid = %s order by id""", txid)
            out.append(RtTransaction(txid, typ, created, [
                RtAttachment(pid, parent, ctype, fname, mid, headers, _decode(enc, content))
                for pid, parent, ctype, fname, mid, headers, enc, content in parts]))
        return out


def _decode(encoding: str, content: Any) -> bytes:
    """RT's Attachments.Content as bytes (PostgreSQL keeps binary parts base64 or QP)."""
    if content is None:
        return b""
    raw = content if isinstance(content, bytes) else str(content).encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(raw)
    if encoding == "quoted-printable":
        return quopri.decodestring(raw)
    return raw
