"""Configuration checks of the outbound side (registered with config.register_validator)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Config, register_validator


@register_validator
def _relay_plaintext_auth(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    r = cfg.relay
    if r.mode == "smtp" and r.user and r.security == "none" and not r.allow_plaintext:
        add(str(cfg.conf_dir), "relay.security", 'AUTH with security = "none" sends the relay '
            'password in clear; use "starttls" or "tls", or set allow_plaintext = true')
