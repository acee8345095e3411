"""A few keys read straight from conf.d, without building or validating the configuration.

For what must work when the configuration as a whole does not (a read-only
command while a policy file is broken, `dkim keygen` writing the key file a
[[dkim]] already names) and for what must start in a few
milliseconds (`deskgate deliver --via-socket`, which needs only the LMTP
socket). Files are read in the same order as gateway.config and a later value
wins; a file that is not valid TOML is skipped (`deskgate check` reports it).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The default of [lmtp] listen (gateway.config.LmtpConfig; a test keeps them equal).
DEFAULT_LISTEN = ("unix:var/run/lmtp.sock", "127.0.0.1:8024")


def config_dir(value: str | Path | None) -> Path:
    """--config, else $DESKGATE_CONFIG, else ./conf.d, else /etc/deskgate/conf.d
    (as gateway.config.default_config_dir), made absolute."""
    if value is not None:
        return Path(value).absolute()
    env = os.environ.get("DESKGATE_CONFIG")
    if env:
        return Path(env).absolute()
    local = Path("conf.d")
    return (local if local.is_dir() else Path("/etc/deskgate/conf.d")).absolute()


def _documents(conf: Path) -> Iterator[dict[str, Any]]:
    """Each conf.d/*.toml that is valid TOML, parsed, in file order."""
    try:
        files = sorted(conf.glob("*.toml"))
    except OSError:
        return
    for path in files:
        try:
            with path.open("rb") as fh:
                yield tomllib.load(fh)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue


def read_sections(conf: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The tables `names` of conf.d/*.toml, merged key by key (a later file wins)."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for data in _documents(conf):
        for name in names:
            table = data.get(name)
            if isinstance(table, dict):
                out[name].update(table)
    return out


def read_entries(conf: Path, name: str) -> list[dict[str, Any]]:
    """The [[name]] entries of conf.d/*.toml, in file order (arrays of tables append)."""
    out: list[dict[str, Any]] = []
    for data in _documents(conf):
        entries = data.get(name)
        if isinstance(entries, list):
            out += [e for e in entries if isinstance(e, dict)]
    return out


def lmtp_listen(conf: Path) -> tuple[str, ...]:
    """[lmtp] listen as written (the default when absent or not a list of strings)."""
    listen = read_sections(conf, ("lmtp",))["lmtp"].get("listen")
    if isinstance(listen, list) and all(isinstance(v, str) for v in listen):
        return tuple(listen)
    return DEFAULT_LISTEN


def lmtp_target(listen: tuple[str, ...], root: Path) -> str | tuple[str, int] | None:
    """Where a local client reaches the gateway's LMTP listener: the first unix
    socket (relative paths are relative to `root`, the parent of conf.d), else the
    first TCP address (a wildcard address becomes loopback); None when neither."""
    for value in listen:
        if value.startswith("unix:") and value[5:]:
            path = Path(value[5:])
            return str(path if path.is_absolute() else root / path)
    for value in listen:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            continue
        host = host.strip("[]")
        if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard listener: connect to loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, int(port)
    return None
