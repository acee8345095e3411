"""The configuration checks beyond the core ones, in one table.

Each section's module defines its check; this table is the one list of them,
run by load_config after the core checks (so `deskgate check`, `serve`, a
reload and every CLI command run all of them, whatever was imported before).
check_validators() refuses a table with a check missing or repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.tablecheck import once_each

Add = Callable[[str, str, str], None]
ValidatorFn = Callable[[Config, Add], None]


@dataclass(frozen=True)
class Validator:
    name: str       # what it checks (for the startup check and error messages)
    fn: ValidatorFn


NAMES = ("database", "dashboard", "filters", "crypto", "dkim", "relay", "submission-tls",
         "accounts", "lmtp")


def build_validators() -> tuple[Validator, ...]:
    """The production table (imports every checking module)."""
    from gateway.crypto import keystore
    from gateway.inbound import filters, lmtp
    from gateway.inbound.poller import validate as poller
    from gateway.outbound import checks, dkim
    from gateway.store import db
    from gateway.web import auth

    table = (
        Validator("database", db.validate_database),
        Validator("dashboard", auth.validate_dashboard),
        Validator("filters", filters.validate_filters),
        Validator("crypto", keystore.validate_crypto),
        Validator("dkim", dkim.validate_dkim),
        Validator("relay", checks.validate_relay),
        Validator("submission-tls", checks.validate_submission_tls),
        Validator("accounts", poller.validate_accounts),
        Validator("lmtp", lmtp.validate_lmtp),
    )
    check_validators(table)
    return table


def check_validators(table: tuple[Validator, ...]) -> None:
    """Startup check: every check of NAMES present exactly once; raises RuntimeError."""
    problems = once_each(NAMES, (v.name for v in table))
    if problems:
        raise RuntimeError("config validator table: " + "; ".join(problems))


_TABLE: list[tuple[Validator, ...]] = []


def validators() -> tuple[Validator, ...]:
    """The production table, built (and checked) on first use in this process."""
    if not _TABLE:
        _TABLE.append(build_validators())
    return _TABLE[0]
