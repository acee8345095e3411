"""The sections of conf.d as frozen dataclasses, and the whole Config.

gateway.config.load builds them from TOML by looking at the field types, so adding
a key is adding a field here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.config.values import (
    Secret,
    conv,
    each_string,
    parse_duration,
    parse_email,
    parse_hostname,
    parse_listen,
    parse_mode,
    parse_network,
    parse_schedule,
    parse_size,
    secret,
)


@dataclass(frozen=True)
class GatewayConfig:
    hostname: str = conv(parse_hostname, "localhost")
    state_dir: str = "var"
    database: str = ""   # default: sqlite:///<state_dir>/deskgate.db
    header_prefixes: tuple[str, ...] = ("X-Deskgate-", "X-OTOBO-", "X-OTRS-")
    ticket_hook: str = "Ticket#"
    system_id: str = "10"
    policies: str = ""    # default: <root>/policies
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    batch_max: int = 64          # messages committed in one transaction at most
    purge_successful_after: float = conv(parse_duration, 7 * 86400.0)
    purge_all_after: float = conv(parse_duration, 31 * 86400.0)


@dataclass(frozen=True)
class StoreConfig:
    # Hot-path inserts run on the driver's cursor (gateway.store.Prepared); false runs
    # them through plain SQLAlchemy (slower, same rows). DESKGATE_STORE_FAST_PATH wins.
    fast_path: bool = True
    # `deskgate serve` runs the inbound commit in a process of its own, fed by every
    # LMTP process (gateway.inbound.commitproc); false: each LMTP process commits itself.
    commit_process: bool = True


@dataclass(frozen=True)
class LmtpConfig:
    listen: tuple[str, ...] = conv(each_string(parse_listen),
                                   ("unix:var/run/lmtp.sock", "127.0.0.1:8024"))
    max_message_size: int = conv(parse_size, 50 * 1024 * 1024)
    max_recipients: int = 1000
    unknown_recipient: Literal["reject", "default-queue"] = "reject"
    socket_mode: int = conv(parse_mode, 0o660)
    socket_group: str = ""
    trusted: bool = False
    timeout: float = conv(parse_duration, 300.0)
    workers: int = 1          # LMTP processes sharing the listening sockets (pre-fork)
    max_sessions: int = 200   # open LMTP connections per process; more get 421 4.7.0


@dataclass(frozen=True)
class SubmissionUser:
    name: str
    password_hash: str
    default_queue: str = ""


@dataclass(frozen=True)
class SubmissionConfig:
    listen: tuple[str, ...] = conv(each_string(parse_listen), ())
    tls_listen: tuple[str, ...] = conv(each_string(parse_listen), ())   # implicit TLS
    tls_cert: str = ""
    tls_key: str = ""
    allow_networks: tuple[str, ...] = conv(each_string(parse_network),
                                           ("127.0.0.0/8", "::1/128"))
    max_message_size: int = conv(parse_size, 50 * 1024 * 1024)
    max_recipients: int = 100
    max_auth_failures: int = 5
    auth_backoff: float = conv(parse_duration, 60.0)   # first lock-out after max_auth_failures
    timeout: float = conv(parse_duration, 300.0)
    max_sessions: int = 100         # open submission connections; more get 421 4.7.0
    max_sessions_per_ip: int = 10   # open connections of one client address
    user: tuple[SubmissionUser, ...] = ()


@dataclass(frozen=True)
class RelayConfig:
    mode: Literal["smtp", "maildir"] = "smtp"
    maildir: str = "var/outbox"
    host: str = ""
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "starttls"
    tls_ca_file: str = ""
    user: str = ""
    password: Secret | None = secret("password")
    retry: tuple[float, ...] = conv(parse_schedule, parse_schedule("1m, 5m, 15m, 1h*4, 4h*6"))
    warn_after: float = conv(parse_duration, 4 * 3600.0)
    timeout: float = conv(parse_duration, 60.0)
    concurrency: int = 4
    bounce_sender: str = ""     # envelope sender of DSNs we generate; empty = null sender
    # A failure DSN returns a message up to this size whole, a larger one as its headers
    # (Postfix's bounce_size_limit); 0: always the headers.
    bounce_size_limit: int = conv(parse_size, 50000)
    lease: float = conv(parse_duration, 300.0)   # a claimed message is retaken after this
    allow_plaintext: bool = False   # AUTH with security = "none" must be allowed explicitly
    poll_interval: float = conv(parse_duration, 5.0)


_DEFAULT_STATES = {
    "new": "new", "open": "open", "pending reminder": "pending",
    "pending auto close+": "pending", "pending auto close-": "pending",
    "closed successful": "closed", "closed unsuccessful": "closed",
    "merged": "merged", "removed": "removed",
}


@dataclass(frozen=True)
class PostmasterConfig:
    default_queue: str = "Raw"
    default_state: str = "new"
    default_priority: str = "3 normal"
    default_type: str = "Unclassified"
    followup_state: str = "open"
    max_emails_per_address_per_day: int = 40
    priorities: tuple[str, ...] = ("1 very low", "2 low", "3 normal", "4 high", "5 very high")
    states: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_STATES))
    no_auto_response: str = r"(MAILER-DAEMON|postmaster|abuse)@.+?\..+?"
    followup_requires_participant: bool = True
    filter_timeout: float = conv(parse_duration, 0.05)


@dataclass(frozen=True)
class QueueConfig:
    name: str
    address: str = conv(parse_email, "")
    follow_up: Literal["possible", "reject", "new-ticket"] = "possible"
    sign: Literal["none", "smime", "pgp"] = "none"
    encrypt: Literal["never", "opportunistic", "required"] = "never"
    auto_response_new: str = ""        # template text; empty = none
    auto_response_followup: str = ""
    auto_response_reject: str = ""
    comment: str = ""


@dataclass(frozen=True)
class AddressConfig:
    email: str = conv(parse_email)
    queue: str = ""
    display_name: str = ""
    valid: Literal["valid", "invalid", "invalid-temporarily"] = "valid"
    comment: str = ""
    source: str = ""    # file it came from (filled by the loader)


@dataclass(frozen=True)
class OAuth2Config:
    token_url: str
    client_id: str
    client_secret: Secret | None = secret("client_secret")
    refresh_token: Secret | None = secret("refresh_token")
    scope: str = ""
    grant: Literal["refresh_token", "client_credentials"] = "refresh_token"
    tls_ca_file: str = ""


_ACCOUNT_PORTS = {"imap": 143, "imaptls": 143, "imaps": 993, "pop3": 110, "pop3tls": 110,
                  "pop3s": 995}


@dataclass(frozen=True)
class AccountConfig:
    name: str
    type: Literal["imap", "imaps", "imaptls", "pop3", "pop3s", "pop3tls"]
    host: str
    login: str
    port: int = 0                # 0: the type's default
    password: Secret | None = secret("password")
    folder: str = "INBOX"
    trusted: bool = False
    dispatch: Literal["to", "queue"] = "to"
    queue: str = ""
    interval: float = conv(parse_duration, 600.0)
    after_fetch: str = "delete"
    tls_ca_file: str = ""
    allow_plaintext: bool = False
    max_message_size: int = conv(parse_size, 50 * 1024 * 1024)
    max_messages_per_run: int = 2000
    reconnect_every: int = 200
    idle: bool = True
    valid: bool = True
    comment: str = ""
    oauth2: OAuth2Config | None = None
    source: str = ""

    @property
    def effective_port(self) -> int:
        return self.port or _ACCOUNT_PORTS[self.type]

    def oversized(self, size: int) -> bool:
        """Over max_message_size; 0 is no limit, as for lmtp and submission."""
        return 0 < self.max_message_size < size

    @property
    def size_limit_text(self) -> str:
        """max_message_size as the communication log names it."""
        return (f"max_message_size ({self.max_message_size} bytes)" if self.max_message_size
                else "max_message_size (0: no limit)")


@dataclass(frozen=True)
class DkimConfig:
    domain: str
    selector: str
    key_file: str
    subdomains: bool = False    # also sign From: x@any.sub.<domain> (d= stays <domain>)


@dataclass(frozen=True)
class ClassifierConfig:
    """The optional machine-learning classifier (gateway.classify, deskgate[classify])."""

    enabled: bool = False
    model: str = ""                    # model directory; empty: <state_dir>/classifier
    min_confidence: float = 0.7
    min_priority_confidence: float = 0.7
    priority: bool = True              # also predict the priority
    accuracy_floor: float = 0.6        # train refuses to activate a model below this
    min_per_class: int = 20            # queues/priorities with fewer tickets are not learnt
    exclude_queues: tuple[str, ...] = ()   # never learnt (e.g. Junk)
    confidence_field: str = ""         # dynamic field that carries the queue confidence
    retrain_interval: float = conv(parse_duration, 0.0)    # 0: no scheduled retraining
    retrain_after_moves: int = 0       # retrain once this many tickets were moved (0: off)


HELPDESK_TYPES = ("none", "otobo-postmaster", "otobo-rest", "znuny-rest", "rt-rest2", "webhook")


@dataclass(frozen=True)
class HelpdeskConfig:
    """The helpdesk behind deskgate; "none" keeps deskgate standalone."""

    type: Literal["none", "otobo-postmaster", "otobo-rest", "znuny-rest", "rt-rest2",
                  "webhook"] = "none"
    command: tuple[str, ...] = ()      # otobo-postmaster: argv, the message on stdin
    user: str = ""                     # REST login; otobo-postmaster: run the command as
    group: str = ""                    # otobo-postmaster: run the command with this group
    url: str = ""                      # REST base / webhook endpoint
    password: Secret | None = secret("password")
    token: Secret | None = secret("token")        # rt-rest2
    secret: Secret | None = secret("secret")      # webhook HMAC-SHA256 key
    tls_ca_file: str = ""
    timeout: float = conv(parse_duration, 60.0)
    retry: tuple[float, ...] = conv(parse_schedule, parse_schedule("1m, 5m, 15m, 1h, 4h, 12h"))
    lease: float = conv(parse_duration, 300.0)
    concurrency: int = 4
    poll_interval: float = conv(parse_duration, 5.0)
    ticket_url: str = ""               # link template: {id} {number}
    queues: Mapping[str, str] = field(default_factory=dict)   # deskgate queue -> helpdesk queue

    @property
    def enabled(self) -> bool:
        return self.type != "none"

    def helpdesk_queue(self, queue: str) -> str:
        """The helpdesk's queue for deskgate's `queue`: [helpdesk.queues] is read in any
        case, as `check` and deskgate's queue names are; unmapped, the same name."""
        found = self.queues.get(queue)
        if found is None:
            low = queue.lower()
            found = next((v for k, v in self.queues.items() if k.lower() == low), queue)
        return found


@dataclass(frozen=True)
class DashboardUser:
    name: str
    password_hash: str
    # "admin" may use the pages that change the configuration; "viewer" only reads.
    role: Literal["admin", "viewer"] = "viewer"


@dataclass(frozen=True)
class DashboardConfig:
    listen: str = "127.0.0.1:8025"
    token: Secret | None = secret("token")
    user: tuple[DashboardUser, ...] = ()
    # Host header names accepted without credentials besides the loopback ones
    # (DNS rebinding): e.g. the name of an SSH tunnel or a reverse proxy.
    allowed_hosts: tuple[str, ...] = ()
    # Reverse proxies (addresses or networks) whose X-Forwarded-For / Forwarded name
    # the client: its login limit, log lines and change-log entries. Empty: the peer.
    trusted_proxies: tuple[str, ...] = conv(each_string(parse_network), ())


@dataclass(frozen=True)
class CryptoConfig:
    smime_dir: str = "keys/smime"
    smime_ca_file: str = "keys/smime/ca.pem"
    smime_crl_file: str = ""            # PEM CRLs: when set, a revoked signer is invalid
    gnupg_home: str = "keys/gnupg"
    store_decrypted_body: bool = True
    gpg_binary: str = "gpg"


@dataclass(frozen=True)
class Condition:
    """One postmaster filter condition (policies/*.toml)."""

    header: str
    value: str = ""
    email: str = ""
    not_: bool = False


@dataclass(frozen=True)
class FilterConfig:
    name: str
    match: tuple[Mapping[str, Any], ...] = ()
    any: tuple[Mapping[str, Any], ...] = ()
    set: Mapping[str, str] = field(default_factory=dict)
    stop_after_match: bool = False
    comment: str = ""
    source: str = ""


@dataclass(frozen=True)
class Config:
    """The whole effective configuration. `root` is the parent of conf.d."""

    root: Path
    conf_dir: Path
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    postmaster: PostmasterConfig = field(default_factory=PostmasterConfig)
    queue: tuple[QueueConfig, ...] = ()
    address: tuple[AddressConfig, ...] = ()
    account: tuple[AccountConfig, ...] = ()
    dkim: tuple[DkimConfig, ...] = ()
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    crypto: CryptoConfig = field(default_factory=CryptoConfig)
    helpdesk: HelpdeskConfig = field(default_factory=HelpdeskConfig)
    filters: tuple[FilterConfig, ...] = ()
    policy_files: tuple[Path, ...] = ()
    # dotted key (queue[2], gateway.database, ...) -> the conf.d file that set it
    key_files: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def file_of(self, key: str) -> str:
        """The conf.d file that sets a dotted key: for a key left at its default, the file
        that has its section (or array entry); the conf.d directory when no file has."""
        while key:
            if key in self.key_files:
                return self.key_files[key]
            key = key.rpartition(".")[0]
        return str(self.conf_dir)

    def database_origin(self) -> tuple[str, str]:
        """Where to report a problem with the database location: the file that sets
        gateway.database, and, when it is empty (set to "" or by no file), a note that
        the default under gateway.state_dir is meant and which file sets that. Not
        file_of, which names the first file with a [gateway] section for a key no file
        sets, one that may have nothing to do with the database."""
        setter = self.key_files.get("gateway.database")
        if self.gateway.database:
            return setter or self.file_of("gateway.database"), ""
        state = self.key_files.get("gateway.state_dir")
        default = (f"the default {self.database_url}, from gateway.state_dir "
                   + (f"in {state}" if state else f"at its default {self.gateway.state_dir!r}"))
        if setter:
            return setter, f"gateway.database is empty: {default}"
        return str(self.conf_dir), (f"no file under {self.conf_dir} sets gateway.database: "
                                    f"{default}")

    def path(self, value: str) -> Path:
        """Resolve a configured path: relative ones are relative to the parent of conf.d."""
        p = Path(value)
        return p if p.is_absolute() else self.root / p

    @property
    def database_url(self) -> str:
        url = self.gateway.database or f"sqlite:///{self.gateway.state_dir}/deskgate.db"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///"):]
            if rel and rel != ":memory:":
                return "sqlite:///" + str(self.path(rel))
        return url

    @property
    def state_dir(self) -> Path:
        return self.path(self.gateway.state_dir)

    def queue_by_name(self, name: str) -> QueueConfig | None:
        for q in self.queue:
            if q.name.lower() == name.lower():
                return q
        return None

    def queue_named(self, name: str) -> str | None:
        """The queue a filter or header may name by `name` (any case), as configured;
        None when there is none. Without any [[queue]] every ticket goes to
        postmaster.default_queue: that is the one queue there is."""
        q = self.queue_by_name(name)
        if q is not None:
            return q.name
        default = self.postmaster.default_queue
        if not self.queue and default and name.lower() == default.lower():
            return default
        return None

    def address_by_email(self, email: str) -> AddressConfig | None:
        email = email.lower()
        for a in self.address:
            if a.email == email:
                return a
        return None

    def account_by_name(self, name: str) -> AccountConfig | None:
        for a in self.account:
            if a.name == name:
                return a
        return None
