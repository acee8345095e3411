"""Value types and converters of configuration keys: sizes, durations, retry
schedules, listen addresses, e-mail addresses, networks, file modes, secrets."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from dataclasses import field
from typing import Any


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


def email_problem(value: str) -> str | None:
    """Why `value` cannot be an e-mail address of the configuration, None when it can.
    A control character (NUL, CR, LF, TAB, DEL, a C1 control, a line separator) or a
    space of any kind would cut or split the address in an SMTP command, a header or a
    log line, and no mail could ever be addressed to it."""
    for c in value:
        if unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            return (f"{value!r} contains a control character ({ascii(c)[1:-1]}); an e-mail "
                    "address is printable text without spaces")
    for c in value:
        if unicodedata.category(c) == "Cf":     # zero-width space, BOM, soft hyphen, LRM ...
            return (f"{value!r} contains an invisible formatting character "
                    f"({ascii(c)[1:-1]}); an e-mail address is printable text without spaces")
    spaces = [c for c in value if unicodedata.category(c) == "Zs"]
    if not _EMAIL_RE.match("".join(c for c in value if c not in spaces)):
        return f"{value!r} is not an e-mail address"
    if spaces:
        return (f"{value!r} contains a space ({ascii(spaces[0])[1:-1]}); an e-mail address "
                "is printable text without spaces")
    return None


def parse_email(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    problem = email_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value.lower()


# One label of a host name: letters, digits, hyphens (not first or last) and, as
# Postfix's valid_hostname() allows, underscores; 1 to 63 characters (RFC 1035 2.3.4).
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def hostname_problem(value: str) -> str | None:
    """Why `value` cannot be gateway.hostname (the name in the greetings, the EHLO to
    the smarthost, postmaster@, DSNs and some Message-IDs; deskgate writes no Received
    header), None when it can: a host name of labels such as
    mx.example.org (a trailing dot allowed, an internationalised one checked by its
    A-labels), at most 253 characters."""
    try:
        name = value.encode("idna").decode("ascii") if not value.isascii() else value
    except UnicodeError:
        name = ""
    name = name.removesuffix(".")
    if (not name or len(name) > 253
            or not all(_HOST_LABEL.fullmatch(label) for label in name.split("."))):
        return (f"{value!r} is not a host name (labels of letters, digits and hyphens, "
                "separated by dots, such as mx.example.org)")
    return None


def parse_hostname(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    problem = hostname_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


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
