"""Who may see the dashboard: anyone on loopback, otherwise a token or a user.

Without credentials in [dashboard] the dashboard may only listen on loopback
(`deskgate check` refuses anything else). With credentials configured every page
but /healthz requires them: `Authorization: Bearer <token>`, `?token=<token>`,
or HTTP basic auth against [[dashboard.user]] password hashes. Only a basic-auth
user with role = "admin" may use the pages that change the configuration; every
form carries a CSRF token bound to the user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Mapping

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


def csrf_token(key: bytes, user: str) -> str:
    """The form token of one user: only our own pages (which know the key) can post."""
    return hmac.new(key, b"csrf\0" + user.encode(), hashlib.sha256).hexdigest()


def csrf_ok(key: bytes, user: str, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), csrf_token(key, user).encode())


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
