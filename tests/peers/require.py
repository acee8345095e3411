"""The one way a test gives up for lack of a peer.

Outside CI a missing peer (Postfix, Dovecot, Exim, smtp-sink, chromium, gpg,
openssl, PostgreSQL, ...) skips the test, so a developer without root can still run
the rest. Under ``CI=true`` it is a failure: a green CI run must prove the code
against every real peer. The few skips that are not about a missing peer go
through ``not_applicable`` and are listed in ``INTENDED`` (and in the README).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Reasons a test may still skip under CI=true: the test does not apply to this
#: parametrisation or the kernel/filesystem cannot do what it needs.
INTENDED = (
    "OR IGNORE is SQLite syntax",
    "chattr +i not possible here",
)


def in_ci() -> bool:
    """True when the run is CI's (CI=true, as CI systems set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_peer(reason: str) -> NoReturn:
    """Skip for lack of a peer; under CI=true fail instead."""
    if in_ci():
        pytest.fail(f"peer missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def not_applicable(reason: str) -> NoReturn:
    """Skip that is intended everywhere, CI included; the reason must start with one of
    INTENDED so the list stays complete."""
    if not reason.startswith(INTENDED):
        raise AssertionError(f"not an intended skip (add it to INTENDED and the README): {reason}")
    pytest.skip(reason)


def requires_peer(reason: str | None) -> pytest.MarkDecorator:
    """Mark for a test or module that needs a peer; `reason` is why it is missing, or
    None when present. Applied by tests/conftest.py through missing_peer()."""
    return pytest.mark.peer(missing=reason)


def import_peer(module: str) -> object:
    """Import a Python package a peer is driven with (selenium), or missing_peer()."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing_peer(f"{module} is not importable: {exc}")
