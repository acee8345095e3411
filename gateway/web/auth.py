"""Who may see the dashboard: anyone on loopback, otherwise a token or a user.

Without credentials in [dashboard] the dashboard may only listen on loopback
(`deskgate check` refuses anything else). With credentials configured every page
but /healthz requires them: `Authorization: Bearer <token>`, `?token=<token>`
(exchanged for a session cookie), HTTP basic auth against [[dashboard.user]]
password hashes, or the cookie of a session one of these opened. Only a basic-auth
user with role = "admin" may use the pages that change the configuration; every
form carries the CSRF token of the login session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.config import Config, DashboardConfig, split_listen
from gateway.passwords import DUMMY_HASH, is_hash, verify_password

# Host header names a login-free (loopback) dashboard always accepts.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(listen: str) -> bool:
    host, _ = split_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def has_credentials(d: DashboardConfig) -> bool:
    return bool(d.token) or bool(d.user)


def role_of(d: DashboardConfig, name: str) -> str:
    """The role of a [[dashboard.user]]; the token and a login-free dashboard only read."""
    return next((u.role for u in d.user if u.name == name), "viewer")


SESSION_COOKIE = "deskgate_session"


@dataclass
class Session:
    """One login: a browser's cookie names it; its forms carry its CSRF token."""

    id: str
    user: str           # the basic-auth user; "" for the token or a login-free dashboard
    proof: str          # the credential it stands on (login_proof)
    csrf: str
    used: float


def login_proof(d: DashboardConfig, user: str) -> str:
    """A digest of what a login of `user` stands on (the password hash, the token, no
    credentials at all): when it changes the login's sessions end."""
    if not has_credentials(d):
        what = "open"
    elif user:
        what = "user\0" + user + "\0" + next(
            (u.password_hash for u in d.user if u.name == user), "")
    else:
        what = "token\0" + str(d.token or "")
    return hashlib.sha256(what.encode()).hexdigest()


def session_current(d: DashboardConfig, session: Session) -> bool:
    """Does the session's credential still log in (user there, same hash, same token)?"""
    return hmac.compare_digest(session.proof, login_proof(d, session.user))


def csrf_ok(session: Session | None, given: str) -> bool:
    """Is `given` the form token of this login session (not another's, not an ended one)?"""
    return (session is not None and bool(given)
            and hmac.compare_digest(given.encode(), session.csrf.encode()))


class Sessions:
    """The login sessions of one dashboard, in memory (a restart logs everyone out).

    A session is made only for a request whose credentials were checked, never from
    an identifier a client brings (no fixation). One unused for IDLE seconds ends; at
    most `size` are kept, the least recently used go first.
    """

    IDLE = 8 * 3600.0

    def __init__(self, *, clock: Callable[[], float] | None = None, size: int = 10000) -> None:
        import time

        self._clock = clock or time.monotonic
        self._size = size
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self, user: str, proof: str) -> Session:
        now = self._clock()
        while len(self._by_id) >= self._size:
            self._by_id.popitem(last=False)
        s = Session(secrets.token_urlsafe(32), user, proof, secrets.token_hex(32), now)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str) -> Session | None:
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = self._clock()
        if now - s.used > self.IDLE:
            del self._by_id[sid]
            return None
        s.used = now
        self._by_id.move_to_end(sid)
        return s

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)


def host_allowed(d: DashboardConfig, host_header: str | None) -> bool:
    """May a request with this Host header see a dashboard that asks for no credentials?

    Without credentials the dashboard trusts everyone who can reach loopback; a
    web page from elsewhere could still reach it by DNS rebinding (its own name
    resolving to 127.0.0.1), so only loopback names, the listen host and
    `allowed_hosts` are accepted.
    """
    if has_credentials(d):
        return True
    host = (host_header or "").strip().lower()
    if host.startswith("["):                      # [::1]:8025
        host = host[:host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if not host:
        return False
    if host in LOOPBACK_HOSTS or host.strip("[]") in LOOPBACK_HOSTS:
        return True
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return True
    except ValueError:
        pass
    allowed = {h.lower() for h in d.allowed_hosts}
    with_listen = allowed | {split_listen(d.listen)[0].lower()} if d.listen else allowed
    return host in with_listen or host.strip("[]") in with_listen


def validate_dashboard(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    d = cfg.dashboard
    where = str(cfg.conf_dir)
    for i, u in enumerate(d.user):
        if not is_hash(u.password_hash):
            add(where, f"dashboard.user[{i}].password_hash",
                "not a hash made by `deskgate passwd`")
    if not d.listen:
        return
    try:
        split_listen(d.listen)
    except ValueError:
        add(where, "dashboard.listen", f"{d.listen!r} is not HOST:PORT")
        return
    if d.listen.startswith("unix:") or ":" not in d.listen:
        add(where, "dashboard.listen", f"{d.listen!r} is not HOST:PORT")
        return
    if not is_loopback(d.listen) and not has_credentials(d):
        add(where, "dashboard.listen", f"{d.listen} is not a loopback address: set "
            "token (token_file, token_env) or [[dashboard.user]] entries")


class Authenticator:
    """Checks one request's credentials; remembers good basic-auth pairs (scrypt is slow)."""

    def __init__(self) -> None:
        self._good: set[tuple[str, str, bytes]] = set()

    def check_token(self, d: DashboardConfig, headers: Mapping[str, str],
                    query: Mapping[str, str]) -> bool | None:
        """True/False when decided by the token; None when basic auth must decide."""
        if not has_credentials(d):
            return True
        auth = headers.get("Authorization", "")
        if d.token:
            given = ""
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            elif "token" in query:
                given = query["token"]
            if given and hmac.compare_digest(given.encode(), str(d.token).encode()):
                return True
        if d.user and auth.lower().startswith("basic "):
            return None
        return False

    def basic_pair(self, headers: Mapping[str, str]) -> tuple[str, str] | None:
        auth = headers.get("Authorization", "")
        try:
            raw = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, password = raw.partition(":")
        return (name, password) if sep else None

    def check_basic(self, d: DashboardConfig, name: str, password: str) -> bool:
        """Blocking (scrypt): call off the event loop.

        An unknown user costs a hash too (a dummy one), so the time taken does not
        tell which user names exist.
        """
        key = hashlib.sha256(password.encode()).digest()
        known = False
        for u in d.user:
            if u.name != name:
                continue
            known = True
            if (u.name, u.password_hash, key) in self._good:
                return True
            if verify_password(password, u.password_hash):
                self._good.add((u.name, u.password_hash, key))
                return True
        if not known:
            verify_password(password, DUMMY_HASH)
        return False


def _hop(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """One address of X-Forwarded-For or a Forwarded for= value, without its port;
    None when it is no address (`unknown`, an obfuscated name, garbage)."""
    value = value.strip().strip('"').strip()
    if value.startswith("["):                       # [2001:db8::1]:4711
        value = value[1:value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:                      # 192.0.2.1:8080
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _forwarded_for(headers: Iterable[tuple[str, str]]) -> list[str] | None:
    """The hops a proxy recorded, leftmost first: X-Forwarded-For when there is one
    (nginx appends to it and passes a client's own Forwarded through), otherwise the
    for= values of RFC 7239 Forwarded; None when neither header is there."""
    xff = [v for k, v in headers if k.lower() == "x-forwarded-for"]
    if xff:
        return [h for v in xff for h in v.split(",")]
    fwd = [v for k, v in headers if k.lower() == "forwarded"]
    if not fwd:
        return None
    hops: list[str] = []
    for element in (e for v in fwd for e in v.split(",")):
        fors = [p.split("=", 1)[1] for p in element.split(";")
                if p.strip().lower().startswith("for=")]
        hops.append(fors[0] if fors else "")
    return hops


def client_address(remote: str | None, headers: Iterable[tuple[str, str]],
                   trusted: Sequence[str]) -> str:
    """The address a request comes from: the peer, or behind one of the trusted
    proxies the rightmost forwarded address that is not itself a trusted proxy (as
    nginx's real_ip_recursive). A hop that is no address ends the walk: the trusted
    hop to its right is the client, so nothing a client wrote is believed."""
    peer = _hop(remote or "")
    if peer is None or not _is_trusted(peer, trusted):
        return remote or ""
    client = peer
    for value in reversed(_forwarded_for(headers) or []):
        ip = _hop(value)
        if ip is None:
            break
        client = ip
        if not _is_trusted(ip, trusted):
            break
    return str(client)


def _is_trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                trusted: Sequence[str]) -> bool:
    return any(ip.version == n.version and ip in n
               for n in (ipaddress.ip_network(t, strict=False) for t in trusted))


def forwarded_https(remote: str | None, headers: Iterable[tuple[str, str]],
                    trusted: Sequence[str]) -> bool:
    """Does a trusted proxy say the browser reached it over https (X-Forwarded-Proto,
    or Forwarded proto= of the hop it added)? Then the session cookie is Secure."""
    peer = _hop(remote or "")
    if peer is None or not _is_trusted(peer, trusted):
        return False
    items = list(headers)
    protos = [v for k, v in items if k.lower() == "x-forwarded-proto"]
    if not protos:
        elements = [e for k, v in items if k.lower() == "forwarded" for e in v.split(",")]
        protos = [p.split("=", 1)[1] for p in (elements[-1].split(";") if elements else [])
                  if p.strip().lower().startswith("proto=")]
    return bool(protos) and protos[-1].split(",")[-1].strip().strip('"').lower() == "https"


def client_key(remote: str | None) -> str:
    """Whose failed logins a request counts to: its IPv4 address, or the /64 of its
    IPv6 address (one host usually has a whole /64 to rotate through)."""
    if not remote:
        return ""
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """Failed logins per client address, as Dovecot's auth penalty and fail2ban do it.

    The first FREE failed logins from an address cost nothing (typos). After that the
    address must wait before its next try, 1 s after the FREE-th failure, twice as long
    after each further one, at most MAX_WAIT; while it waits its logins are refused
    without being checked (503 with Retry-After, as when too many logins are being
    checked at once), the right password too (otherwise the answer would tell which
    guess was right), and only one of its logins is checked at a time. A
    successful login clears the address's count; so do FORGET seconds without a
    failure. At most `size` addresses are remembered (the least recently failed go).
    Requests without credentials are no failures and never waited for.
    """

    FREE = 5
    MAX_WAIT = 60
    FORGET = 3600.0

    def __init__(self, *, clock: Callable[[], float] | None = None, size: int = 10000) -> None:
        import time

        self._clock = clock or time.monotonic
        self._size = size
        # address -> [failures, time of the last failure, checks running]
        self._seen: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def _wait(self, failures: float) -> float:
        if failures < self.FREE:
            return 0.0
        return float(min(2 ** int(failures - self.FREE), self.MAX_WAIT))

    def begin(self, addr: str) -> int:
        """0 when a login from addr may be checked now (then call end), else the whole
        seconds it must wait."""
        now = self._clock()
        e = self._seen.get(addr)
        if e is not None and now - e[1] > self.FORGET and not e[2]:
            del self._seen[addr]
            e = None
        if e is None or e[0] < self.FREE:
            if e is not None:
                e[2] += 1
            return 0
        left = e[1] + self._wait(e[0]) - now
        if left > 0 or e[2]:
            return max(1, math.ceil(left))
        e[2] += 1
        return 0

    def end(self, addr: str, *, ok: bool | None) -> None:
        """The outcome of a check begin allowed (None: not decided, e.g. too busy)."""
        e = self._seen.get(addr)
        if e is not None:
            e[2] = max(0, e[2] - 1)
        if ok is None:
            return
        if ok:
            if e is not None and not e[2]:
                del self._seen[addr]
            elif e is not None:
                e[0] = 0
            return
        now = self._clock()
        if e is None:
            if len(self._seen) >= self._size:
                self._prune(now)
            e = self._seen[addr] = [0, now, 0]
        e[0] += 1
        e[1] = now

    def _prune(self, now: float) -> None:
        for a in [a for a, e in self._seen.items() if now - e[1] > self.FORGET and not e[2]]:
            del self._seen[a]
        while len(self._seen) >= self._size:
            del self._seen[min(self._seen, key=lambda a: self._seen[a][1])]
