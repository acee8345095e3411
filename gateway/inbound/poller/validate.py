"""Config checks for [[account]] beyond the core ones (a row of gateway.validators)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.config import Config

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def validate_accounts(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    for i, acc in enumerate(cfg.account):
        key = f"account[{i}]"
        if acc.interval < 1:
            add(acc.source, f"{key}.interval", "must be at least 1s")
        if acc.max_messages_per_run < 1:
            add(acc.source, f"{key}.max_messages_per_run", "must be at least 1")
        if acc.reconnect_every < 1:
            add(acc.source, f"{key}.reconnect_every", "must be at least 1")
        if acc.tls_ca_file and not cfg.path(acc.tls_ca_file).is_file():
            add(acc.source, f"{key}.tls_ca_file", f"{cfg.path(acc.tls_ca_file)} does not exist")
        o = acc.oauth2
        if o is None:
            continue
        if acc.type in ("imap", "pop3") and not acc.allow_plaintext:
            add(acc.source, f"{key}.type", f"{acc.type} would send the OAuth2 bearer token "
                f"without TLS; use {acc.type}s or {acc.type}tls, or set allow_plaintext = true")
        url = urlsplit(o.token_url)
        if url.scheme not in ("https", "http") or not url.hostname:
            add(acc.source, f"{key}.oauth2.token_url", "must be an https:// URL")
        elif url.scheme == "http" and url.hostname not in _LOOPBACK:
            add(acc.source, f"{key}.oauth2.token_url", "must be https:// (plain http only to "
                "a loopback address)")
        if o.grant == "refresh_token" and not o.refresh_token:
            add(acc.source, f"{key}.oauth2.refresh_token", "required for grant = "
                "\"refresh_token\" (or set grant = \"client_credentials\")")
        if o.grant == "client_credentials" and not o.client_secret:
            add(acc.source, f"{key}.oauth2.client_secret", "required for grant = "
                "\"client_credentials\"")
        if o.tls_ca_file and not cfg.path(o.tls_ca_file).is_file():
            add(acc.source, f"{key}.oauth2.tls_ca_file",
                f"{cfg.path(o.tls_ca_file)} does not exist")
