"""OAuth2 access tokens for XOAUTH2 (Microsoft 365, Google, any RFC 6749 server).

One TokenSource per account and process: the access token is cached and
refreshed before it expires; a refresh token the server rotates is written to
the database at once (the old one may already be dead) and read from there
before every refresh, so processes and nodes sharing the account follow the
rotation. One the database does not take then is kept in memory (the old one
may be revoked already), used for the next refresh and stored by the next run
(store_unsaved); a Warning for the communication log says so (take_notes). A
refused refresh is a MailboxError("auth") that the runner logs as an Error and
records on the account, never a silent stop. Blocking (urllib): called from
session threads.

A refresh (read the newest refresh token, redeem it, store the one it rotates
to) runs under `guard`, one at a time per account across processes and nodes:
runs and IDLE watchers of one account refresh independently, and a rotated
refresh token redeemed twice is refused (some providers then revoke it all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import structlog

from gateway.commlog_names import Priority
from gateway.config import AccountConfig, OAuth2Config
from gateway.inbound.poller.session import MailboxError

log = structlog.get_logger(__name__)

TIMEOUT = 30.0
MAX_MARGIN = 60.0      # refresh this long before expiry at most ...
MARGIN_SHARE = 0.25    # ... or a quarter of the lifetime for short-lived tokens

# load(account) → (refresh_token, config fingerprint) | None; save(account, token, fp)
Load = Callable[[str], "tuple[str, str] | None"]
Save = Callable[[str, str, str], None]
# guard() → held while one refresh runs; raises MailboxError when it cannot be had
Guard = Callable[[], AbstractContextManager[object]]


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


class TokenSource:
    """Access tokens for one account."""

    def __init__(self, account: AccountConfig, root: Path, load: Load, save: Save,
                 clock: Callable[[], float] = time.monotonic,
                 guard: Guard = contextlib.nullcontext) -> None:
        assert account.oauth2 is not None
        self.account = account.name
        self.cfg: OAuth2Config = account.oauth2
        self.root = root
        self._load, self._save, self._guard = load, save, guard
        self._clock = clock
        self._lock = threading.Lock()
        self._access = ""
        self._expires = 0.0
        self._refresh: str | None = None
        self._reused = False     # the cached token was handed out again (see renew)
        self._unsaved: tuple[str, str] | None = None   # rotated, not stored: (token, fp)
        self._notes: list[tuple[Priority, str]] = []   # for the next run's communication log
        self.refreshes = 0

    def matches(self, account: AccountConfig) -> bool:
        """Still valid for this (possibly reloaded) account config?"""
        return account.oauth2 == self.cfg

    def get(self) -> str:
        """A valid access token, refreshed when it is about to expire."""
        with self._lock:
            if self._access and self._clock() < self._expires:
                self._reused = True
                return self._access
            return self._fetch_guarded()

    def renew(self, refused: str) -> str | None:
        """The mail server refused `refused`: a new token to try once more, or None.

        Only a token handed out from the cache before is worth replacing (revoked
        meanwhile, or shorter-lived than expires_in said, or than the hour assumed
        without one); one fetched for this very login was refused for another
        reason (the account, the scope), and a new one would be refused too.
        """
        with self._lock:
            if self._access and self._access != refused and self._clock() < self._expires:
                return self._access      # another login renewed it meanwhile
            retry = self._access == refused and self._reused
            self._access, self._expires = "", 0.0
            if not retry:
                return None
            return self._fetch_guarded()

    def _fetch_guarded(self) -> str:
        if self.cfg.grant == "client_credentials":
            return self._fetch()     # no refresh token to redeem twice
        with self._guard():
            return self._fetch()

    def invalidate(self) -> None:
        """The server refused the token: fetch a new one next time."""
        with self._lock:
            self._access = ""
            self._expires = 0.0

    def take_notes(self) -> list[tuple[Priority, str]]:
        """What happened to the refresh token since the last call, for the run's log."""
        with self._lock:
            notes, self._notes = self._notes, []
        return notes

    def store_unsaved(self) -> bool:
        """Store a rotated refresh token the database did not take before (each run
        calls it first); True when one was waiting."""
        with self._lock:
            if self._unsaved is None:
                return False
            with self._guard():
                self._store_unsaved()
            return True

    def _store_unsaved(self) -> None:
        assert self._unsaved is not None
        token, fp = self._unsaved
        try:
            self._save(self.account, token, fp)
        except Exception as exc:
            log.warning("oauth2: rotated refresh token still not stored; kept in memory",
                        account=self.account, error=_db_error(exc))
            return
        self._unsaved = None
        log.info("oauth2: rotated refresh token stored after all", account=self.account)
        self._notes.append(("Info", f"account {self.account}: the rotated OAuth2 refresh "
                            "token kept in memory is stored now"))

    def _current_refresh_token(self) -> str:
        """The newest refresh token, read again before every refresh: another process
        (`deskgate fetch`, a second node) may have rotated it, and the one this
        process used last is then dead. The stored one counts while the configured
        token is the one it replaced. A rotated one not stored yet is newer than
        anything stored: it is stored now if the database takes it, and used."""
        if self._unsaved is not None:
            self._store_unsaved()
            assert self._refresh is not None
            return self._refresh
        configured = str(self.cfg.refresh_token or "")
        try:
            stored = self._load(self.account)
        except Exception:
            if self._refresh is None:
                raise
            log.warning("oauth2: stored refresh token unreadable; using the last one",
                        account=self.account, exc_info=True)
            return self._refresh
        if stored and stored[1] == fingerprint(configured):
            self._refresh = stored[0]
        elif self._refresh is None:
            self._refresh = configured
        return self._refresh

    def _fetch(self) -> str:
        cfg = self.cfg
        form = {"client_id": cfg.client_id}
        if cfg.client_secret:
            form["client_secret"] = str(cfg.client_secret)
        if cfg.scope:
            form["scope"] = cfg.scope
        if cfg.grant == "client_credentials":
            form["grant_type"] = "client_credentials"
        else:
            refresh = self._current_refresh_token()
            if not refresh:
                raise MailboxError("auth", "OAuth2: no refresh_token configured",
                                   temporary=False)
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = refresh
        body = self._post(form)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            keys = ", ".join(str(k)[:40] for k in list(body)[:10]) or "nothing"
            raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url} answered without "
                               f"access_token (it sent {keys})")
        try:
            lifetime = float(str(body.get("expires_in", 3600)))
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._access = token
        self._reused = False
        self._expires = self._clock() + lifetime - min(MAX_MARGIN, lifetime * MARGIN_SHARE)
        self.refreshes += 1
        new_refresh = body.get("refresh_token")
        if (cfg.grant == "refresh_token" and isinstance(new_refresh, str) and new_refresh
                and new_refresh != self._refresh):
            self._refresh = new_refresh
            self._unsaved = (new_refresh, fingerprint(str(cfg.refresh_token or "")))
            try:
                self._save(self.account, *self._unsaved)
            except Exception as exc:
                # The old token may be revoked already: keep the new one, never lose it.
                self._unsaved_warning(_db_error(exc))
            else:
                self._unsaved = None
                log.info("oauth2 refresh token rotated and stored", account=self.account)
        return token

    def _unsaved_warning(self, error: str) -> None:
        log.warning("oauth2: the token endpoint rotated the refresh token and the new one "
                    "could not be stored; kept in memory, stored by the next run",
                    account=self.account, error=error)
        self._notes.append(("Warn", f"account {self.account}: the token endpoint rotated the "
                            "OAuth2 refresh token and the new one could not be stored "
                            f"({error}); it is kept in memory by this process and stored by "
                            "its next run. Should the process end before that, the provider "
                            "may refuse the old refresh token: then authorise the account "
                            "again and put the new refresh_token in its [account.oauth2]"))

    def _post(self, form: dict[str, str]) -> dict[str, object]:
        cfg = self.cfg
        data = urllib.parse.urlencode(form).encode()
        if not cfg.token_url.startswith(("https:", "http:")):
            raise MailboxError("auth", "OAuth2: token_url must be an http(s) URL",
                               temporary=False)
        req = urllib.request.Request(cfg.token_url, data=data, method="POST", headers={  # noqa: S310
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        ctx = None
        if cfg.token_url.startswith("https:"):
            ca = cfg.tls_ca_file
            ctx = ssl.create_default_context(
                cafile=str(ca if Path(ca).is_absolute() else self.root / ca) if ca else None)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT, context=ctx) as resp:  # noqa: S310 - checked above
                raw = resp.read()
                status = f"HTTP {resp.status} with {resp.headers.get_content_type()}"
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc.read())
            if exc.code >= 500 and not detail:   # the endpoint's trouble, not a refusal
                raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url} failed: "
                                   f"HTTP {exc.code} {exc.reason}".rstrip()) from exc
            raise MailboxError("auth", f"OAuth2 token refresh refused by {cfg.token_url}: "
                               f"HTTP {exc.code}{detail}",
                               temporary=exc.code >= 500) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                ca = cfg.tls_ca_file
                trust = (f"oauth2.tls_ca_file {ca if Path(ca).is_absolute() else self.root / ca}"
                         if ca else "the system CA store; a private CA is trusted with "
                         "oauth2.tls_ca_file")
                raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url}: certificate "
                                   f"not trusted: {reason.verify_message or reason.reason} "
                                   f"(checked against {trust})", temporary=False) from exc
            raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url} unreachable: "
                               f"{reason}") from exc
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url} answered "
                               f"{status}, not JSON") from exc
        if not isinstance(body, dict):
            raise MailboxError("auth", f"OAuth2 token endpoint {cfg.token_url} answered "
                               f"{status}, not a JSON object")
        return body


def _db_error(exc: Exception) -> str:
    """'OperationalError: database is locked': a database error's own text carries the
    statement's parameters, the token among them."""
    cause = getattr(exc, "orig", None) or ""
    return f"{type(exc).__name__}: {cause}".rstrip(": ")


def _error_detail(raw: bytes) -> str:
    """' invalid_grant: Token expired' from an RFC 6749 error body (never the token)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    err = str(body.get("error", ""))[:100]
    desc = str(body.get("error_description", ""))[:300]
    return f" {err}" + (f": {desc}" if desc else "") if err else ""
