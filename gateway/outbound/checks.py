"""Configuration checks of the outbound side (rows of the table in gateway.validators)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Config
from gateway.privatefiles import not_private


def validate_relay(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    r = cfg.relay
    if r.mode == "smtp" and r.user and r.security == "none" and not r.allow_plaintext:
        add(str(cfg.conf_dir), "relay.security", 'AUTH with security = "none" sends the relay '
            'password in clear; use "starttls" or "tls", or set allow_plaintext = true')


def validate_submission_tls(cfg: Config, add: Callable[[str, str, str], None]) -> None:
    """tls_cert and tls_key must be readable, the key private to its owner, and the
    two must load as a pair, so `check` finds what `serve` would die on."""
    import ssl

    sub = cfg.submission
    if not (sub.tls_cert and sub.tls_key):
        return
    where = str(cfg.conf_dir)
    cert, key = cfg.path(sub.tls_cert), cfg.path(sub.tls_key)
    bad = False
    for name, path in (("submission.tls_cert", cert), ("submission.tls_key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            add(where, name, f"cannot read {path}: {exc.strerror}")
            bad = True
    if bad:
        return
    problem = not_private(key)
    if problem is not None:
        add(where, "submission.tls_key", problem)
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        add(where, "submission.tls_cert", f"{cert} and {key} do not load as a certificate "
            f"and its key: {exc}")
