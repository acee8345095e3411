"""Changes to the configuration files made by the dashboard's admin pages.

The files stay the source of truth: an entry is edited where it is (tomlkit keeps
the comments and order of the file), a new one goes to a file deskgate owns
(`conf.d/50-admin-addresses.toml`, ...). A change is validated with the same
`load_config` as `deskgate check` on the would-be texts before anything is
written, then written atomically (temporary file + rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Comment, InlineTable, Table, Whitespace

from gateway.config import Config, load_config
from gateway.errors import ConfigError, ConfigErrors

# The file deskgate writes new entries of each kind to, inside conf.d (filters:
# inside the policy directory).
OWNED_CONF = {"address": "50-admin-addresses.toml"}
OWNED_POLICY = "500-admin.toml"
# Keys whose values never appear in a change record.
SECRET_KEYS = frozenset({"password", "client_secret", "refresh_token", "token", "secret",
                         "passphrase"})


@dataclass
class Edit:
    """The new texts of the files a change touches and what it changes, line by line."""

    files: dict[Path, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    modes: dict[Path, int] = field(default_factory=dict)    # of files it creates
    # Files it writes a secret into: written readable by their owner only.
    private: set[Path] = field(default_factory=set)
    # The texts the edit was made from (None: no file): `stale` compares them.
    base: dict[Path, str | None] = field(default_factory=dict)

    def stale(self) -> list[Path]:
        """Files changed on disk since the edit read them (another save, an editor)."""
        return [p for p, text in self.base.items() if _read(p) != text]


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def shown(key: str, value: object) -> str:
    """A value for the change record: secrets redacted, missing keys as (unset)."""
    if value is None:
        return "(unset)"
    if key in SECRET_KEYS:
        return "***"
    return repr(value)


def _text(path: Path, edit: Edit) -> str:
    if path in edit.files:
        return edit.files[path]
    text = _read(path)
    edit.base.setdefault(path, text)
    return text or ""


def _entries(doc: tomlkit.TOMLDocument, section: str) -> list[Any]:
    value = doc.get(section)
    if isinstance(value, AoT | Array):
        return list(value)
    return []


def upsert(edit: Edit, *, section: str, label: str, source: Path | None,
           owned: Path, match: Callable[[Mapping[str, Any]], bool],
           values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> int:
    """Set `values` on the [[section]] entry `match` picks in `source`, or add one to `owned`.

    A value of None, or equal to its key's entry in `defaults`, is not written: the
    key is removed, so the file keeps only what differs from the defaults. Adds one line per
    changed key to edit.changes, `label` naming the entry. Returns the entry's
    position among the file's [[section]] entries.
    """
    path = source if source is not None else owned
    doc = tomlkit.parse(_text(path, edit))
    entry: Any = None
    if source is not None:
        entry = next((e for e in _entries(doc, section) if match(e)), None)
        if entry is None:
            raise LookupError(f"{label} is no longer in {source}")
    if entry is None:
        existing = doc.get(section)
        if isinstance(existing, Array):
            entry = tomlkit.inline_table()
            existing.append(entry)
        else:
            if existing is None:
                existing = tomlkit.aot()
                doc.append(section, existing)
            entry = tomlkit.table()
            existing.append(entry)
        entry = _entries(doc, section)[-1]
    position = next(i for i, e in enumerate(_entries(doc, section)) if e is entry)
    for key, new in values.items():
        old = entry.get(key)
        old_plain = old.unwrap() if hasattr(old, "unwrap") else old
        new_plain = new.unwrap() if hasattr(new, "unwrap") else new
        if new is not None and old_plain == new_plain:
            continue
        default = (defaults or {}).get(key)
        if new is None or (default is not None and new_plain == default):
            if key in entry:
                del entry[key]
                edit.changes.append(f"{label}: {key} {shown(key, old_plain)} → "
                                    + ("(unset)" if new is None else
                                       f"{shown(key, new_plain)} (default)"))
            continue
        _set(entry, key, new)
        edit.changes.append(f"{label}: {key} {shown(key, old_plain)} → "
                            f"{shown(key, new_plain)}")
    if not isinstance(entry, Table | InlineTable):
        raise TypeError(f"{label}: [[{section}]] entries in {path} are not tables")
    edit.files[path] = tomlkit.dumps(doc)
    return position


def remove(edit: Edit, *, section: str, label: str, source: Path,
           match: Callable[[Mapping[str, Any]], bool]) -> None:
    """Delete the [[section]] entry `match` picks in `source` (the rest of the file stays)."""
    doc = tomlkit.parse(_text(source, edit))
    value = doc.get(section)
    entries = _entries(doc, section)
    index = next((i for i, e in enumerate(entries) if match(e)), None)
    if index is None or not isinstance(value, AoT | Array):
        raise LookupError(f"{label} is no longer in {source}")
    del value[index]
    if not _entries(doc, section):
        del doc[section]
    edit.files[source] = tomlkit.dumps(doc)
    edit.changes.append(f"{label} removed")


def inline_list(rows: list[dict[str, Any]]) -> Any:
    """A TOML array of inline tables, one a line (how policies/*.toml write conditions)."""
    arr = tomlkit.array()
    for row in rows:
        t = tomlkit.inline_table()
        t.update(row)
        arr.append(t)
    arr.multiline(True)
    return arr


def inline_table(values: Mapping[str, Any]) -> Any:
    t = tomlkit.inline_table()
    t.update(values)
    return t


def _set(entry: Any, key: str, value: Any) -> None:
    """entry[key] = value; a new key of a [[table]] goes before the blank lines and
    comments that end it (they usually introduce the next table)."""
    if key in entry or not isinstance(entry, Table):
        entry[key] = value
        return
    body = entry.value.body
    trail: list[Any] = []
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace | Comment):
        trail.insert(0, body.pop())
    entry[key] = value
    body.extend(trail)


def merged_index(cfg: Config, edit: Edit, section: str, path: Path, position: int) -> int:
    """The index `load_config` gives (in error keys such as address[3]) to the entry at
    `position` of `path`: files are merged in name order, their entries appended."""
    import tomllib

    files = sorted({*cfg.conf_dir.glob("*.toml"), *(p for p in edit.files
                                                      if p.parent == cfg.conf_dir)})
    index = 0
    for f in files:
        if f == path:
            return index + position
        try:
            data = tomllib.loads(_text(f, edit))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            continue
        value = data.get(section)
        index += len(value) if isinstance(value, list) else 0
    return index + position


def config_version(cfg: Config) -> str:
    """A digest of every configuration and policy file: a form carries the one it was
    shown with, so a save over a change made meanwhile is refused, not merged."""
    import hashlib

    h = hashlib.sha256()
    pdir = cfg.path(cfg.gateway.policies or "policies")
    for d in (cfg.conf_dir, pdir):
        for p in sorted(d.glob("*.toml")) if d.is_dir() else ():
            h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def validate(cfg: Config, edit: Edit) -> list[ConfigError]:
    """Every error `deskgate check` would report with the edit applied; [] when it is valid."""
    try:
        load_config(cfg.conf_dir, replace=edit.files)
    except ConfigErrors as exc:
        return list(exc.errors)
    return []


def write_atomically(path: Path, text: str, new_mode: int = 0o644, *,
                     private: bool = False) -> None:
    """Replace the file in one rename; a reader sees the old or the new text, never half.

    An existing file keeps its mode and, as far as this process may give it, its
    owner and group; a new one gets `new_mode` before it has content. A symlink (a
    conf.d entry kept elsewhere, as admins do with shared files) stays a link: its
    target is replaced. `private` (the text holds a secret): group and others lose
    every permission.
    """
    if path.is_symlink():
        path = path.resolve()
    old = path.stat() if path.exists() else None
    mode = old.st_mode & 0o7777 if old is not None else new_mode
    if private:
        mode &= 0o700
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                # root may give the file back to its owner; a user only to a group it
                # is in: otherwise the new file stays this process's
                try:
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    with contextlib.suppress(PermissionError):
                        os.fchown(fh.fileno(), -1, old.st_gid)
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def apply(edit: Edit) -> dict[Path, str | None]:
    """Write every file of the edit; returns the previous texts (None: did not exist).

    When one cannot be written, those already written are put back and the error
    is raised: an edit is applied whole or not at all.
    """
    before = {p: (p.read_text(encoding="utf-8") if p.exists() else None) for p in edit.files}
    done: dict[Path, str | None] = {}
    try:
        for path, text in edit.files.items():
            write_atomically(path, text, edit.modes.get(path, 0o644),
                             private=path in edit.private)
            done[path] = before[path]
    except OSError:
        undo(done)
        raise
    return before


def undo(before: Mapping[Path, str | None]) -> None:
    """Put the files back as `apply` found them (a reload refused the new ones)."""
    for path, text in before.items():
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            write_atomically(path, text)
