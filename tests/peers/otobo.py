"""A real OTOBO 11 for the helpdesk hand-off tests: its PostMaster console and its
GenericInterface REST web service (GenericTicketConnectorREST) on the local PostgreSQL.

`OtoboSite` is built once per test session: the source tree unpacked from
otobo-src.tar.xz (env DESKGATE_OTOBO_SRC), a template database with the schema, the
initial data, the web service, an agent password, two extra queues and two dynamic
fields, and the rebuilt sysconfig. Each test gets an `Otobo` of its own: a database
copied from the template (CREATE DATABASE ... TEMPLATE, well under a second) and its
own cache directory. Kernel/Config.pm picks the database from DESKGATE_OTOBO_DB, so
one source tree serves every test: the console is run through a per-test wrapper
script that sets it, and plackup is started with it in its environment.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

SRC = Path(os.environ.get("DESKGATE_OTOBO_SRC", "/work/shared/peers/otobo/otobo-src.tar.xz"))
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
AGENT = "root@localhost"
AGENT_PASSWORD = "Secret123"
WEBSERVICE = "GenericTicketConnectorREST"
QUEUES = ("Support", "Sales")                 # besides OTOBO's Postmaster, Raw, Junk, Misc
DYNAMIC_FIELDS = ("Server", "Contract")        # ticket text fields

# The Debian packages OTOBO needs here (also in the Makefile's DEB_PACKAGES).
PACKAGES = (
    "libarchive-zip-perl", "libconst-fast-perl", "libcapture-tiny-perl", "libjson-xs-perl",
    "libtimedate-perl", "libdatetime-perl", "libcss-minifier-xs-perl", "libconvert-binhex-perl",
    "libdbi-perl", "libdbix-connector-perl", "libfile-chmod-perl", "libhttp-message-perl",
    "libjavascript-minifier-xs-perl", "liblist-allutils-perl", "libwww-perl", "libmoo-perl",
    "libnamespace-autoclean-perl", "libnet-dns-perl", "libnet-smtp-ssl-perl",
    "libpath-class-perl", "libplack-perl", "libsub-exporter-perl", "libtemplate-perl",
    "libtext-csv-perl", "libtext-csv-xs-perl", "libtext-trim-perl", "libtry-tiny-perl",
    "liburi-perl", "libxml-libxml-perl", "libyaml-libyaml-perl",
    "libplack-middleware-header-perl", "libplack-middleware-reverseproxy-perl",
    "libdbd-pg-perl", "libmail-imapclient-perl", "libauthen-sasl-perl",
    "libio-socket-ssl-perl", "postgresql-client",
)

CONFIG_PM = """package Kernel::Config;
use v5.24;
use strict;
use warnings;
use utf8;
sub Load {
    my $Self = shift;
    my $DB = $ENV{DESKGATE_OTOBO_DB} || '@TEMPLATE@';
    $Self->{DatabaseHost} = '@HOST@';
    $Self->{Database}     = $DB;
    $Self->{DatabaseUser} = '@USER@';
    $Self->{DatabasePw}   = '';
    $Self->{DatabaseDSN}  = "DBI:Pg:dbname=$DB;host=@HOST@;port=@PORT@";
    $Self->{Home}         = '@HOME@';
    $Self->{TempDir}      = "@HOME@/var/tmp/$DB";
    $Self->{CheckMXRecord}       = 0;
    $Self->{CheckEmailAddresses} = 0;
    $Self->{SendmailModule}      = 'Kernel::System::Email::DoNotSendEmail';
    $Self->{LogModule}           = 'Kernel::System::Log::File';
    $Self->{'LogModule::LogFile'} = "@HOME@/var/log/otobo-$DB.log";
    return 1;
}
use Kernel::Config::Defaults;
use parent qw(Kernel::Config::Defaults);
1;
"""

DYNAMIC_FIELD_PL = """use strict;
use warnings;
use lib '@HOME@';
use lib '@HOME@/Kernel/cpan-lib';
use Kernel::System::ObjectManager;
local $Kernel::OM = Kernel::System::ObjectManager->new();
my $Order = 100;
for my $Name (@ARGV) {
    $Kernel::OM->Get('Kernel::System::DynamicField')->DynamicFieldAdd(
        Name => $Name, Label => $Name, FieldOrder => $Order++, FieldType => 'Text',
        ObjectType => 'Ticket', Config => { DefaultValue => '' }, Reorder => 0,
        ValidID => 1, UserID => 1,
    ) or die "DynamicFieldAdd $Name failed\\n";
}
"""


def missing() -> str:
    """Why OTOBO cannot run here ('' when it can)."""
    if not SRC.is_file():
        return f"OTOBO source tarball {SRC} not found (set DESKGATE_OTOBO_SRC)"
    if shutil.which("dpkg-query") is None or shutil.which("plackup") is None:
        return "Debian Perl packages for OTOBO are not installed (make system-deps)"
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *PACKAGES],
                         capture_output=True, text=True, check=False).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith("installed")
                 and " not-installed" not in line}
    lacking = [p for p in PACKAGES if p not in installed]
    if lacking:
        return "Debian packages for OTOBO missing: " + " ".join(lacking)
    try:
        with psycopg.connect(dbname="postgres", connect_timeout=3, **PG):  # type: ignore[arg-type]
            pass
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable on {PG['host']}:{PG['port']}: {exc}"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin(sql: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:  # type: ignore[arg-type]
        conn.execute(sql)  # type: ignore[arg-type]


@dataclass
class OtoboSite:
    """The unpacked source tree and the template database, shared by a session."""

    dir: Path
    template: str = field(default_factory=lambda: f"otobo_tpl_{uuid.uuid4().hex[:10]}")
    made: list[Otobo] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.dir / "otobo"

    @property
    def console_script(self) -> Path:
        return self.home / "bin" / "otobo.Console.pl"

    def console(self, db: str, *args: str, input: bytes | None = None,
                check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run otobo.Console.pl as root on database `db`."""
        env = {**os.environ, "DESKGATE_OTOBO_DB": db}
        proc = subprocess.run(["perl", str(self.console_script), *args, "--allow-root",
                               "--no-ansi"], input=input, capture_output=True, env=env,
                              cwd=self.home, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"otobo.Console.pl {' '.join(args)} exited {proc.returncode}: "
                               + proc.stderr.decode(errors="replace")[-2000:]
                               + proc.stdout.decode(errors="replace")[-2000:])
        return proc

    def build(self) -> None:
        """Unpack, create and fill the template database (~10 s)."""
        home = self.home
        home.mkdir(parents=True)
        subprocess.run(["tar", "-xJf", str(SRC), "-C", str(home)], check=True)
        for sub in ("var/log", "var/tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        subs = {"@TEMPLATE@": self.template, "@HOST@": str(PG["host"]),
                "@PORT@": str(PG["port"]), "@USER@": str(PG["user"]), "@HOME@": str(home)}
        conf, dfpl = CONFIG_PM, DYNAMIC_FIELD_PL
        for k, v in subs.items():
            conf, dfpl = conf.replace(k, v), dfpl.replace(k, v)
        (home / "Kernel" / "Config.pm").write_text(conf)
        _admin(f"CREATE DATABASE {self.template} ENCODING 'UTF8' TEMPLATE template0")
        db = self.template
        schema = "scripts/database/otobo-schema.xml"
        self.console(db, "Dev::Tools::Database::XMLExecute", "--sql-part", "pre", schema)
        self.console(db, "Dev::Tools::Database::XMLExecute",
                     "scripts/database/otobo-initial_insert.xml")
        self.console(db, "Dev::Tools::Database::XMLExecute", "--sql-part", "post", schema)
        self.console(db, "Maint::Config::Rebuild")
        self.console(db, "Admin::WebService::Add", "--name", WEBSERVICE, "--source-path",
                     f"development/webservices/{WEBSERVICE}.yml")
        self.console(db, "Admin::User::SetPassword", AGENT, AGENT_PASSWORD)
        for q in QUEUES:
            self.console(db, "Admin::Queue::Add", "--name", q, "--group", "users")
        (self.dir / "dynamic-fields.pl").write_text(dfpl)
        subprocess.run(["perl", str(self.dir / "dynamic-fields.pl"), *DYNAMIC_FIELDS],
                       env={**os.environ, "DESKGATE_OTOBO_DB": db}, cwd=home, check=True,
                       capture_output=True)
        shutil.rmtree(home / "var" / "tmp" / db, ignore_errors=True)

    def new(self, workdir: Path) -> Otobo:
        """A fresh OTOBO (database copied from the template) for one test."""
        name = f"otobo_t_{uuid.uuid4().hex[:12]}"
        _admin(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        o = Otobo(self, name, workdir)
        o.write_wrapper()
        self.made.append(o)
        return o

    def destroy(self) -> None:
        for o in self.made:
            o.drop()
        with contextlib.suppress(psycopg.Error):
            _admin(f"DROP DATABASE IF EXISTS {self.template} WITH (FORCE)")
        shutil.rmtree(self.dir, ignore_errors=True)


def make_site() -> OtoboSite:
    site = OtoboSite(Path(tempfile.mkdtemp(prefix="deskgate-otobo-")))
    try:
        site.build()
    except BaseException:
        site.destroy()
        raise
    return site


@dataclass
class Otobo:
    """One test's OTOBO: its database, console wrapper, queries and REST server."""

    site: OtoboSite
    db: str
    workdir: Path
    plack: subprocess.Popen[bytes] | None = None
    port: int = 0
    tls: tuple[Path, Path] | None = None
    dropped: bool = False

    # ------------------------------------------------------------ console

    @property
    def console_wrapper(self) -> Path:
        return self.workdir / "otobo.Console.pl"

    def write_wrapper(self) -> None:
        """An executable that runs this OTOBO's console (what [helpdesk] command names)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_wrapper.write_text(
            "#!/bin/sh\n"
            f"DESKGATE_OTOBO_DB={self.db}; export DESKGATE_OTOBO_DB\n"
            f"exec perl {self.site.console_script} \"$@\"\n")
        self.console_wrapper.chmod(0o755)

    def postmaster_command(self) -> list[str]:
        """The argv deskgate's otobo-postmaster connector runs (message on stdin)."""
        return [str(self.console_wrapper), "Maint::PostMaster::Read", "--allow-root"]

    def console(self, *args: str, input: bytes | None = None,
                check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self.site.console(self.db, *args, input=input, check=check)

    def read_mail(self, mime: bytes, *, untrusted: bool = False) -> None:
        """Pipe one message through PostMaster::Read (as a customer's mail would arrive)."""
        self.console("Maint::PostMaster::Read", *(["--untrusted"] if untrusted else []),
                     input=mime)

    # ------------------------------------------------------------ database

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(dbname=self.db, **PG) as conn:  # type: ignore[arg-type]
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            cols = [d.name for d in cur.description or ()]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def tickets(self) -> list[dict[str, Any]]:
        """Tickets except OTOBO's welcome ticket: id, tn, title, queue, priority, state,
        type, customer_user, customer_id, lock."""
        return self.query(
            "select t.id, t.tn, t.title, q.name as queue, p.name as priority, s.name as state,"
            " ty.name as type, t.customer_user_id as customer_user,"
            " t.customer_id, l.name as lock"
            " from ticket t join queue q on q.id = t.queue_id"
            " join ticket_priority p on p.id = t.ticket_priority_id"
            " join ticket_state s on s.id = t.ticket_state_id"
            " join ticket_lock_type l on l.id = t.ticket_lock_id"
            " left join ticket_type ty on ty.id = t.type_id"
            " where t.tn <> '2015071510123456' order by t.id")

    def ticket(self, title: str) -> dict[str, Any]:
        rows = [t for t in self.tickets() if t["title"] == title]
        assert len(rows) == 1, f"{len(rows)} tickets titled {title!r}: {self.tickets()}"
        return rows[0]

    def articles(self, ticket_id: int | None = None) -> list[dict[str, Any]]:
        """Articles: id, ticket_id, sender_type, visible, from, to, cc, subject, message_id,
        in_reply_to, references, body, content_type."""
        rows = self.query(
            "select a.id, a.ticket_id, st.name as sender_type,"
            " a.is_visible_for_customer as visible, m.a_from as from, m.a_to as to,"
            " m.a_cc as cc, m.a_subject as subject, m.a_message_id as message_id,"
            " m.a_in_reply_to as in_reply_to, m.a_references as references,"
            " m.a_body as body, m.a_content_type as content_type"
            " from article a join article_data_mime m on m.article_id = a.id"
            " join article_sender_type st on st.id = a.article_sender_type_id"
            " where a.ticket_id <> 1" + (" and a.ticket_id = %s" if ticket_id else "")
            + " order by a.id", *([ticket_id] if ticket_id else []))
        for r in rows:
            if isinstance(r["body"], bytes | memoryview):
                r["body"] = bytes(r["body"]).decode("utf-8", "replace")
        return rows

    def attachments(self, article_id: int) -> list[dict[str, Any]]:
        """An article's attachments: filename, content_type, disposition, content (bytes)."""
        rows = self.query(
            "select filename, content_type, disposition, content"
            " from article_data_mime_attachment where article_id = %s order by id", article_id)
        for r in rows:
            r["content"] = base64.b64decode(r["content"] or "")
        return rows

    def plain(self, article_id: int) -> str:
        """The message as OTOBO stored it for an article (article_data_mime_plain)."""
        rows = self.query("select body from article_data_mime_plain where article_id = %s",
                          article_id)
        return base64.b64decode(rows[0]["body"]).decode("utf-8", "replace") if rows else ""

    def dynamic_fields(self, ticket_id: int) -> dict[str, str]:
        return {r["name"]: r["value_text"] for r in self.query(
            "select f.name, v.value_text from dynamic_field_value v"
            " join dynamic_field f on f.id = v.field_id"
            " where f.object_type = 'Ticket' and v.object_id = %s", ticket_id)}

    def history(self, ticket_id: int) -> list[dict[str, Any]]:
        return self.query(
            "select h.name, ht.name as type from ticket_history h"
            " join ticket_history_type ht on ht.id = h.history_type_id"
            " where h.ticket_id = %s order by h.id", ticket_id)

    def refuse_connections(self, refuse: bool = True) -> None:
        """OTOBO's database down (connections refused) or back up."""
        _admin(f"ALTER DATABASE {self.db} WITH ALLOW_CONNECTIONS {'false' if refuse else 'true'}")
        if refuse:
            _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{self.db}'")

    def log_tail(self) -> str:
        p = self.site.home / "var" / "log" / f"otobo-{self.db}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    # ------------------------------------------------------------ REST

    @property
    def rest_url(self) -> str:
        base = f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"
        return f"{base}/otobo/nph-genericinterface.pl/Webservice/{WEBSERVICE}"

    def start_rest(self, tls: tuple[Path, Path] | None = None) -> str:
        """Start plackup for this OTOBO on a free loopback port (https with a (cert, key)
        pair); returns the web service URL."""
        if self.plack is not None and self.plack.poll() is None:
            return self.rest_url
        self.port = self.port or _free_port()
        self.tls = tls
        ssl_args = (["--ssl=1", f"--ssl-cert-file={tls[0]}", f"--ssl-key-file={tls[1]}"]
                    if tls else [])
        log = (self.workdir / "plackup.log").open("ab")
        self.plack = subprocess.Popen(
            ["plackup", "--host", "127.0.0.1", "-p", str(self.port), *ssl_args,
             "bin/psgi-bin/otobo.psgi"],
            cwd=self.site.home, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "DESKGATE_OTOBO_DB": self.db})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.plack.poll() is not None:
                raise RuntimeError("plackup exited: "
                                   + (self.workdir / "plackup.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("plackup did not answer within 60 s")
        return self.rest_url

    def stop_rest(self) -> None:
        """Stop this test's plackup (by its PID; it runs in a session of its own)."""
        p, self.plack = self.plack, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.stop_rest()
        with contextlib.suppress(psycopg.Error):
            _admin(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        shutil.rmtree(self.site.home / "var" / "tmp" / self.db, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.site.home / "var" / "log" / f"otobo-{self.db}.log").unlink()


class HoldingProxy:
    """A loopback TCP proxy in front of plackup that can hold back the answers to
    TicketCreate requests (POST .../Ticket) for `hold_seconds`: a helpdesk that has
    done the work but whose answer has not arrived yet."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold_seconds = 0.0
        self.creates = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return (f"http://127.0.0.1:{self.port}/otobo/nph-genericinterface.pl/Webservice/"
                f"{WEBSERVICE}")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60)
            with up:
                first = conn.recv(65536)
                hold = first.startswith(b"POST ") and first.split(b" ", 2)[1].endswith(b"/Ticket")
                if hold:
                    self.creates += 1
                up.sendall(first)
                threading.Thread(target=_pump, args=(conn, up), daemon=True).start()
                answer = b""
                while chunk := up.recv(65536):
                    answer += chunk
                if hold and self.hold_seconds:
                    time.sleep(self.hold_seconds)
                conn.sendall(answer)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
