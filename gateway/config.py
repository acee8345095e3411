"""conf.d/*.toml → one frozen, validated Config.

Files are read in lexical order; tables merge, arrays of tables append, a later
scalar wins. Every error names the file, the dotted key and the reason, and all
errors are collected before giving up, so `deskgate check` shows them at once.

Sections are plain frozen dataclasses; `_build` converts a TOML table into one
by looking at the field types, so adding a key is adding a field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError, ConfigErrors
from gateway.privatefiles import not_private

# ---------------------------------------------------------------- value types


class Secret(str):
    """A string that never shows itself in repr() or logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2,
               "MIB": 1024**2, "G": 1000**3, "GB": 1000**3, "GIB": 1024**3,
               "T": 1000**4, "TB": 1000**4, "TIB": 1024**4}


def parse_size(value: object) -> int:
    """'50MiB', '10 MB', 1048576 → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 50MiB")
    m = _SIZE_RE.match(value)
    if not m or (m.group(2) or "").upper() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (examples: 50MiB, 10MB, 1048576)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """'10m', '1h30m', '36h', 90 → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 10m")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if text[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 10m, 4h, 1d, 1h30m)")
    return total


def parse_schedule(value: object) -> tuple[float, ...]:
    """'1m, 5m, 15m, 1h*4, 4h*6' → delays in seconds, one per retry."""
    if not isinstance(value, str):
        raise ValueError("expected a retry schedule such as '1m, 5m, 15m, 1h*4'")
    out: list[float] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        step, _, count = part.partition("*")
        n = 1
        if count:
            if not count.strip().isdigit() or int(count) < 1:
                raise ValueError(f"{part!r}: the repeat count after * must be a positive integer")
            n = int(count)
        out.extend([parse_duration(step)] * n)
    if not out:
        raise ValueError("the retry schedule is empty")
    return tuple(out)


def parse_listen(value: str) -> str:
    """'unix:PATH' or 'HOST:PORT' / '[v6]:PORT'; returns it unchanged when valid."""
    if value.startswith("unix:"):
        if not value[5:]:
            raise ValueError("unix: needs a socket path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is neither unix:PATH nor HOST:PORT")
    if not host:
        raise ValueError(f"{value!r} has no host; use 0.0.0.0:{port} or [::]:{port} explicitly")
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$|^[^@\s<>]+@localhost$")


def parse_email(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if not _EMAIL_RE.match(value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return value.lower()


def parse_network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


def parse_mode(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError(f"expected a string such as '0660', got {type(value).__name__}")
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f"{value!r} is not an octal file mode such as 0660")
    return int(value, 8)


def each_string(fn: Callable[[str], str]) -> Callable[[object], tuple[str, ...]]:
    """A converter for a list of strings, each going through fn."""
    def convert(value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list of strings, got {type(value).__name__}")
        for v in value:
            if not isinstance(v, str):
                raise ValueError(f"expected a list of strings, got {type(v).__name__} {v!r}")
        return tuple(fn(v) for v in value)
    return convert


def conv(fn: Callable[[Any], Any], default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field whose raw TOML value goes through fn first."""
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"conv": fn}, **kw)
    return field(default=default, metadata={"conv": fn}, **kw)


def secret(name: str) -> Any:
    """A field that accepts `name`, `name_file` and `name_env` in the TOML."""
    return field(default=None, metadata={"secret": name})


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class GatewayConfig:
    hostname: str = "localhost"
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
        return self.queues.get(queue, queue)


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


# ---------------------------------------------------------------- loading


class _Origins:
    """Which file each dotted key came from, for error messages."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}

    def file(self, key: str, fallback: str) -> str:
        while key:
            if key in self.by_key:
                return self.by_key[key]
            key = key.rpartition(".")[0]
        return fallback


def _merge(dst: dict[str, Any], src: Mapping[str, Any], fname: str, prefix: str,
           origins: _Origins) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, fname, dotted + ".", origins)
        elif (isinstance(value, list) and isinstance(dst.get(key), list) and value
              and all(isinstance(v, dict) for v in value)):
            start = len(dst[key])
            dst[key].extend(value)
            for i in range(len(value)):
                origins.by_key[f"{dotted}[{start + i}]"] = fname
        else:
            dst[key] = value
            origins.by_key[dotted] = fname
            if isinstance(value, list):
                for i in range(len(value)):
                    origins.by_key[f"{dotted}[{i}]"] = fname


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Builder:
    def __init__(self, root: Path, origins: _Origins, default_file: str,
                 environ: Mapping[str, str]) -> None:
        self.root = root
        self.origins = origins
        self.default_file = default_file
        self.environ = environ
        self.errors: list[ConfigError] = []

    def error(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(self.origins.file(key, self.default_file), key, reason))

    def build(self, cls: type, table: object, key: str) -> Any:
        if not isinstance(table, dict):
            self.error(key, f"expected a table, got {type(table).__name__}")
            return None
        hints = _resolve_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        toml_names: dict[str, str] = {}
        for f in fields.values():
            name = f.name.rstrip("_")
            if "secret" in f.metadata:
                for suffix in ("", "_file", "_env"):
                    toml_names[name + suffix] = f.name
            else:
                toml_names[name] = f.name
        kwargs: dict[str, Any] = {}
        given: set[str] = set()     # fields present in the table, valid or not
        ok = True
        for tkey, raw in table.items():
            dotted = f"{key}.{tkey}" if key else tkey
            fname = toml_names.get(tkey)
            if fname is None or fname in ("source",):
                close = [n for n in toml_names if n != "source"]
                self.error(dotted, "unknown key" + _suggest(tkey, close))
                ok = False
                continue
            f = fields[fname]
            given.add(fname)
            if "secret" in f.metadata:
                value = self._secret(f.metadata["secret"], tkey, raw, dotted)
                if value is None:
                    ok = False
                    continue
                if fname in kwargs:
                    self.error(dotted, f"give only one of {f.metadata['secret']}, "
                                       f"{f.metadata['secret']}_file, {f.metadata['secret']}_env")
                    ok = False
                kwargs[fname] = value
                continue
            try:
                kwargs[fname] = self.convert(hints[fname], f, raw, dotted)
            except _Invalid:
                ok = False
            except (ValueError, TypeError) as exc:
                self.error(dotted, str(exc))
                ok = False
        for f in fields.values():
            if (f.name not in given and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                name = f"{key}.{f.name.rstrip('_')}" if key else f.name
                self.error(name, "required key is missing")
                ok = False
        if "source" in fields:
            kwargs["source"] = self.origins.file(key, self.default_file)
        if not ok:
            return None
        return cls(**kwargs)

    def _secret(self, name: str, tkey: str, raw: object, dotted: str) -> Secret | None:
        if not isinstance(raw, str):
            self.error(dotted, "expected a string")
            return None
        if tkey == name:
            return Secret(raw)
        if tkey == name + "_env":
            if raw not in self.environ:
                self.error(dotted, f"environment variable {raw} is not set")
                return None
            return Secret(self.environ[raw])
        path = Path(raw) if Path(raw).is_absolute() else self.root / raw
        try:
            value = Secret(path.read_text().strip())
        except OSError as exc:
            self.error(dotted, f"cannot read {path}: {exc.strerror}")
            return None
        except UnicodeDecodeError as exc:
            self.error(dotted, f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}")
            return None
        problem = not_private(path)
        if problem is not None:
            self.error(dotted, problem)
            return None
        return value

    def convert(self, hint: Any, f: dataclasses.Field[Any] | None, raw: object, dotted: str) -> Any:
        if f is not None and "conv" in f.metadata:
            return f.metadata["conv"](raw)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], None, raw, dotted)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            built = self.build(hint, raw, dotted)
            if built is None:
                raise _Invalid
            return built
        if origin is Literal:
            if raw not in args:
                raise ValueError(f"{raw!r} is not one of: {', '.join(map(str, args))}")
            return raw
        if origin is tuple:
            if not isinstance(raw, list):
                raise ValueError(f"expected a list, got {type(raw).__name__}")
            item = args[0]
            out = []
            bad = False
            for i, v in enumerate(raw):
                try:
                    out.append(self.convert(item, None, v, f"{dotted}[{i}]"))
                except _Invalid:
                    bad = True
                except (ValueError, TypeError) as exc:
                    self.error(f"{dotted}[{i}]", str(exc))
                    bad = True
            if bad:
                raise _Invalid
            return tuple(out)
        if origin in (Mapping, dict) or hint is dict:
            if not isinstance(raw, dict):
                raise ValueError(f"expected a table, got {type(raw).__name__}")
            if args and args[1] is str:
                for k, v in raw.items():
                    if not isinstance(v, str):
                        raise ValueError(f"{k}: expected a string, got {type(v).__name__}")
            return dict(raw)
        if hint is Any:
            return raw
        if hint is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, got {raw!r}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"expected a number, got {raw!r}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {type(raw).__name__}")
            return raw
        raise TypeError(f"unsupported config type {hint!r}")


class _Invalid(Exception):
    """A nested value was invalid; its error is already recorded."""


def _suggest(word: str, names: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def default_config_dir() -> Path:
    env = os.environ.get("DESKGATE_CONFIG")
    if env:
        return Path(env)
    local = Path("conf.d")
    if local.is_dir():
        return local
    return Path("/etc/deskgate/conf.d")


def _read_toml_files(files: Iterable[Path], origins: _Origins,
                     errors: list[ConfigError],
                     replace: Mapping[Path, str] | None = None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        try:
            if replace is not None and path in replace:
                data = tomllib.loads(replace[path])
            else:
                with path.open("rb") as fh:
                    data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            errors.append(ConfigError(str(path), "", f"not valid TOML: {exc}"))
            continue
        except UnicodeDecodeError as exc:
            errors.append(ConfigError(str(path), "", f"not UTF-8 text (TOML files must be): "
                                      f"{exc.reason} at byte {exc.start}"))
            continue
        except OSError as exc:
            errors.append(ConfigError(str(path), "", f"cannot read: {exc.strerror}"))
            continue
        _merge(merged, data, str(path), "", origins)
    return merged


def _toml_files(directory: Path, replace: Mapping[Path, str] | None) -> list[Path]:
    """The *.toml files of a directory, plus those `replace` would add to it."""
    found = set(directory.glob("*.toml")) if directory.is_dir() else set()
    for path in replace or {}:
        if path.parent == directory and path.suffix == ".toml":
            found.add(path)
    return sorted(found)


def load_config(conf_dir: Path | str | None = None,
                environ: Mapping[str, str] | None = None,
                replace: Mapping[Path, str] | None = None, *,
                section_checks: bool = True) -> Config:
    """Read, merge and validate; raises ConfigErrors listing every problem.

    `replace` maps absolute file paths (in conf.d or the policy directory) to the
    text to read instead of theirs, new files included: the dashboard validates a
    change this way before it writes anything. `section_checks=False` leaves out
    the checks of gateway.validators (and the imports they need) for a command
    that only reads a few keys; serve, check and reload always run them.
    """
    conf = Path(conf_dir) if conf_dir is not None else default_config_dir()
    conf = conf.absolute()
    root = conf.parent
    errors: list[ConfigError] = []
    if not conf.is_dir():
        raise ConfigErrors([ConfigError(str(conf), "", "configuration directory does not exist")])
    files = _toml_files(conf, replace)
    origins = _Origins()
    merged = _read_toml_files(files, origins, errors, replace)
    default_file = str(files[0]) if files else str(conf)
    b = _Builder(root, origins, default_file, environ if environ is not None else os.environ)

    internal = {"root", "conf_dir", "filters", "policy_files"}
    top_fields = {f.name for f in dataclasses.fields(Config)} - internal
    raw_top = {k: v for k, v in merged.items() if k in top_fields}
    for k in merged:
        if k not in top_fields:
            b.error(k, "unknown section" + _suggest(k, top_fields))
    partial = b.build(_TopLevel, raw_top, "")

    # Policies: <root>/policies/*.toml unless [gateway] policies says otherwise.
    gw = partial.gateway if partial else GatewayConfig()
    pdir = Path(gw.policies) if gw.policies else Path("policies")
    pdir = pdir if pdir.is_absolute() else root / pdir
    if gw.policies and not pdir.is_dir():     # the default may be missing: no filters
        b.error("gateway.policies", f"{pdir} does not exist or is not a directory")
    policy_files = tuple(_toml_files(pdir, replace))
    porigins = _Origins()
    pmerged = _read_toml_files(policy_files, porigins, errors, replace)
    pb = _Builder(root, porigins, str(policy_files[0]) if policy_files else str(pdir),
                  b.environ)
    for k in pmerged:
        if k != "filter":
            pb.error(k, "unknown section in a policy file (only [[filter]] is allowed)")
    filters: list[FilterConfig] = []
    raw_filters = pmerged.get("filter", [])
    if not isinstance(raw_filters, list):
        pb.error("filter", "use [[filter]] (an array of tables)")
        raw_filters = []
    for i, raw in enumerate(raw_filters):
        built = pb.build(FilterConfig, raw, f"filter[{i}]")
        if built is not None:
            if not built.name.strip():
                pb.error(f"filter[{i}].name", "must not be empty (filters run in name order)")
            filters.append(built)
    errors.extend(b.errors)
    errors.extend(pb.errors)
    if partial is None:
        raise ConfigErrors(errors)

    cfg = Config(root=root, conf_dir=conf, filters=tuple(sorted(filters, key=lambda f: f.name)),
                 policy_files=policy_files,
                 **{f.name: getattr(partial, f.name) for f in dataclasses.fields(_TopLevel)})

    def add(file: str, key: str, reason: str) -> None:
        errors.append(ConfigError(file, key, reason))

    _validate_core(cfg, origins, default_file, add)
    # The checks of the other sections (filters, crypto, DKIM, dashboard, ...): their
    # modules import this one, so the table is imported here, when it is needed.
    if section_checks:
        from gateway.validators import validators

        for v in validators():
            v.fn(cfg, add)
    if errors:
        raise ConfigErrors(errors)
    return cfg


@dataclass(frozen=True)
class _TopLevel:
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


def _validate_core(cfg: Config, origins: _Origins, default_file: str,
                   add: Callable[[str, str, str], None]) -> None:
    def at(key: str) -> str:
        return origins.file(key, default_file)

    pm = cfg.postmaster
    queue_names = {q.name.lower(): q for q in cfg.queue}
    seen: set[str] = set()
    for i, q in enumerate(cfg.queue):
        if not q.name.strip():
            add(at(f"queue[{i}]"), f"queue[{i}].name", "must not be empty")
            continue
        if q.name.lower() in seen:
            add(at(f"queue[{i}]"), f"queue[{i}].name", f"duplicate queue {q.name!r}")
        seen.add(q.name.lower())
    if pm.default_queue.lower() not in queue_names and cfg.queue:
        add(at("postmaster.default_queue"), "postmaster.default_queue",
            f"queue {pm.default_queue!r} is not defined by any [[queue]]")
    for key, value in (("default_state", pm.default_state), ("followup_state", pm.followup_state)):
        if value not in pm.states:
            add(at(f"postmaster.{key}"), f"postmaster.{key}", f"state {value!r} is not in "
                "[postmaster.states]")
    if pm.default_priority not in pm.priorities:
        add(at("postmaster.default_priority"), "postmaster.default_priority",
            f"priority {pm.default_priority!r} is not in postmaster.priorities")
    for name, kind in pm.states.items():
        if kind not in ("new", "open", "pending", "closed", "merged", "removed"):
            add(at("postmaster.states"), f"postmaster.states.{name}",
                f"state type {kind!r} is not one of new, open, pending, closed, merged, removed")
    if pm.filter_timeout <= 0:
        add(at("postmaster.filter_timeout"), "postmaster.filter_timeout",
            "must be more than 0 (a duration such as 50ms)")
    try:
        re.compile(pm.no_auto_response)
    except re.error as exc:
        add(at("postmaster.no_auto_response"), "postmaster.no_auto_response",
            f"invalid regular expression: {exc}")

    emails: set[str] = set()
    for i, a in enumerate(cfg.address):
        key = f"address[{i}]"
        if a.email in emails:
            add(at(key), f"{key}.email", f"duplicate system address {a.email!r}")
        emails.add(a.email)
        if a.queue and a.queue.lower() not in queue_names:
            add(at(key), f"{key}.queue", f"queue {a.queue!r} is not defined by any [[queue]]")
    for i, q in enumerate(cfg.queue):
        key = f"queue[{i}]"
        if not q.address:
            continue
        addr = cfg.address_by_email(q.address)
        if addr is None:
            add(at(key), f"{key}.address", f"{q.address!r} is not a system address ([[address]])")
        elif addr.valid != "valid":
            add(at(key), f"{key}.address", f"system address {q.address!r} is {addr.valid} but "
                f"queue {q.name!r} uses it; an address may only be invalidated when no queue "
                "uses it")

    names: set[str] = set()
    for i, acc in enumerate(cfg.account):
        key = f"account[{i}]"
        if acc.name in names:
            add(at(key), f"{key}.name", f"duplicate account {acc.name!r}")
        names.add(acc.name)
        if not 0 <= acc.port < 65536:
            add(at(key), f"{key}.port",
                "must be between 1 and 65535 (0: the default port of the type)")
        if acc.dispatch == "queue" and not acc.queue:
            add(at(key), f"{key}.queue", "required when dispatch = \"queue\"")
        if acc.queue and acc.queue.lower() not in queue_names:
            add(at(key), f"{key}.queue", f"queue {acc.queue!r} is not defined by any [[queue]]")
        if acc.type in ("imap", "pop3") and not acc.allow_plaintext and acc.oauth2 is None:
            add(at(key), f"{key}.type", f"{acc.type} sends the password without TLS; use "
                f"{acc.type}s or {acc.type}tls, or set allow_plaintext = true")
        if acc.password is None and acc.oauth2 is None:
            add(at(key), f"{key}.password", "give password, password_file, password_env or an "
                "[account.oauth2] table")
        af = acc.after_fetch
        allowed = af in ("delete", "keep") or (af.startswith("move:") and len(af) > 5
                                               and acc.type.startswith("imap"))
        if not allowed:
            add(at(key), f"{key}.after_fetch", f"{af!r} is not delete, keep" +
                (" or move:<folder>" if acc.type.startswith("imap") else " (POP3 has no folders)"))
    for i, u in enumerate(cfg.submission.user):
        if u.default_queue and u.default_queue.lower() not in queue_names:
            add(at(f"submission.user[{i}]"), f"submission.user[{i}].default_queue",
                f"queue {u.default_queue!r} is not defined by any [[queue]]")
    for ckey, count in (("gateway.batch_max", cfg.gateway.batch_max),
                        ("lmtp.max_recipients", cfg.lmtp.max_recipients),
                        ("submission.max_recipients", cfg.submission.max_recipients),
                        ("relay.concurrency", cfg.relay.concurrency)):
        if count < 1:
            add(at(ckey), ckey, "must be at least 1")
    if not 0 < cfg.relay.port < 65536:
        add(at("relay.port"), "relay.port", "must be between 1 and 65535")
    prefixes = cfg.gateway.header_prefixes
    if not prefixes:
        add(at("gateway.header_prefixes"), "gateway.header_prefixes",
            "needs at least one prefix (the first is canonical), e.g. [\"X-Deskgate-\"]")
    for prefix in prefixes:
        if not re.fullmatch(r"X-[A-Za-z0-9]+(-[A-Za-z0-9]+)*-", prefix, re.IGNORECASE):
            add(at("gateway.header_prefixes"), "gateway.header_prefixes",
                f"{prefix!r} is not an X-header prefix such as 'X-OTOBO-' (X-, letters, "
                "digits and -, ending in -)")
    if not 1 <= cfg.lmtp.workers <= 64:
        add(at("lmtp.workers"), "lmtp.workers", "must be between 1 and 64")
    for skey, sessions, low in (("lmtp.max_sessions", cfg.lmtp.max_sessions, 1),
                                ("submission.max_sessions", cfg.submission.max_sessions, 1),
                                ("submission.max_sessions_per_ip",
                                 cfg.submission.max_sessions_per_ip, 0)):
        if not low <= sessions <= 100_000:
            add(at(skey.split(".")[0]), skey, f"must be between {low} and 100000")
    if cfg.relay.mode == "smtp" and not cfg.relay.host and cfg.submission.listen:
        add(at("relay"), "relay.host", "required when mode = \"smtp\" and submission is enabled")
    if bool(cfg.submission.tls_cert) != bool(cfg.submission.tls_key):
        add(at("submission"), "submission.tls_key", "tls_cert and tls_key go together")
    _validate_helpdesk(cfg, at, add)
    _validate_classifier(cfg, at, add)
    fnames: set[str] = set()
    for f in cfg.filters:
        if f.name in fnames:
            add(f.source, f"filter[{f.name}].name", f"duplicate filter name {f.name!r}")
        fnames.add(f.name)


def _validate_classifier(cfg: Config, at: Callable[[str], str],
                         add: Callable[[str, str, str], None]) -> None:
    """Ranges of the classifier keys; whether a model is readable is `check`'s business."""
    cl = cfg.classifier
    for key in ("min_confidence", "min_priority_confidence", "accuracy_floor"):
        if not 0.0 <= getattr(cl, key) <= 1.0:
            add(at(f"classifier.{key}"), f"classifier.{key}", "must be between 0 and 1")
    if cl.min_per_class < 2:
        add(at("classifier.min_per_class"), "classifier.min_per_class", "must be at least 2")
    if cl.retrain_after_moves < 0:
        add(at("classifier.retrain_after_moves"), "classifier.retrain_after_moves",
            "cannot be negative")
    if cl.confidence_field and not re.fullmatch(r"[A-Za-z0-9_-]+", cl.confidence_field):
        add(at("classifier.confidence_field"), "classifier.confidence_field",
            "a dynamic field name: letters, digits, _ and - only")


def _validate_helpdesk(cfg: Config, at: Callable[[str], str],
                       add: Callable[[str, str, str], None]) -> None:
    """Each helpdesk type needs its own keys; paths must be readable."""
    hd = cfg.helpdesk
    if not hd.enabled:
        return

    def need(key: str, ok: object, why: str) -> None:
        if not ok:
            add(at(f"helpdesk.{key}"), f"helpdesk.{key}", f"required for type = {hd.type!r}: {why}")

    if hd.type == "otobo-postmaster":
        need("command", hd.command, "the PostMaster command, e.g. "
             '["/opt/otobo/bin/otobo.Console.pl", "Maint::PostMaster::Read"]')
    else:
        need("url", hd.url, "the base URL of the helpdesk's API (or the webhook endpoint)")
        if hd.url and not hd.url.startswith(("http://", "https://")):
            add(at("helpdesk.url"), "helpdesk.url", f"{hd.url!r} is not an http:// or https:// URL")
    if hd.type in ("otobo-rest", "znuny-rest"):
        need("user", hd.user, "the agent login of the web service")
        need("password", hd.password is not None, "give password, password_file or password_env")
    if hd.type == "rt-rest2" and hd.token is None and not (hd.user and hd.password is not None):
        add(at("helpdesk"), "helpdesk.token", "required for type = 'rt-rest2': give token_file "
            "(or user and password_file)")
    if hd.type == "webhook":
        need("secret", hd.secret is not None, "the HMAC-SHA256 key: give secret_file or secret_env")
    if hd.tls_ca_file and not cfg.path(hd.tls_ca_file).is_file():
        add(at("helpdesk.tls_ca_file"), "helpdesk.tls_ca_file",
            f"{cfg.path(hd.tls_ca_file)} does not exist")
    if hd.concurrency < 1:
        add(at("helpdesk.concurrency"), "helpdesk.concurrency", "must be at least 1")
    for name in hd.queues:
        if cfg.queue and cfg.queue_by_name(name) is None:
            add(at("helpdesk.queues"), f"helpdesk.queues.{name}",
                f"queue {name!r} is not defined by any [[queue]]")
    if hd.ticket_url and "{id}" not in hd.ticket_url and "{number}" not in hd.ticket_url:
        add(at("helpdesk.ticket_url"), "helpdesk.ticket_url",
            "the template needs {id} or {number}")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, a cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not on Linux
        return os.cpu_count() or 1


def process_advice(cfg: Config, cpus: int | None = None) -> list[tuple[str, str]]:
    """(key, reason) for settings that work but cost throughput on this machine.

    LMTP processes that, with the commit process, outnumber the CPUs take turns on
    them: measured with `bench/lmtp.py` on two CPUs, `workers = 2` stored 0.79 of
    the messages per second of `workers = 1` (2,561 against 3,253, TCP, one
    recipient), because the commit process then waits for a CPU three times as
    often and the commit of every message waits with it."""
    cpus = usable_cpus() if cpus is None else cpus
    workers = cfg.lmtp.workers
    busy = workers + (1 if cfg.store.commit_process else 0)
    if workers > 1 and busy > cpus:
        with_commit = " and the commit process" if cfg.store.commit_process else ""
        return [("lmtp.workers",
                 f"{workers} LMTP processes{with_commit} need {busy} CPUs and deskgate "
                 f"may run on {cpus} CPU{'s' if cpus != 1 else ''} here: they take turns "
                 f"on them, and fewer workers store more messages per second (on two CPUs "
                 f"1 worker was faster than 2)")]
    return []
