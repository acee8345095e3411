"""Reading conf.d and the policy files: merge, build the sections, validate.

Files are read in lexical order; tables merge, arrays of tables append, a later
scalar wins. Every error names the file, the dotted key and the reason, and all
errors are collected before giving up, so `deskgate check` shows them at once."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from gateway.config.sections import (
    Config,
    FilterConfig,
    GatewayConfig,
)
from gateway.config.validate import below_free_table, name_problem, validate_core
from gateway.config.values import Secret
from gateway.errors import ConfigError, ConfigErrors
from gateway.privatefiles import not_private


class _Origins:
    """Which file each dotted key came from, for error messages."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}

    def file(self, key: str, fallback: str) -> str:
        while key:
            if key in self.by_key:
                return self.by_key[key]
            key = key.rpartition(".")[0]
        return fallback


def _merge(dst: dict[str, Any], src: Mapping[str, Any], fname: str, prefix: str,
           origins: _Origins) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, fname, dotted + ".", origins)
        elif (isinstance(value, list) and isinstance(dst.get(key), list) and value
              and all(isinstance(v, dict) for v in value)):
            start = len(dst[key])
            dst[key].extend(value)
            for i in range(len(value)):
                origins.by_key[f"{dotted}[{start + i}]"] = fname
        else:
            dst[key] = value
            _record(value, fname, dotted, origins)


def _record(value: Any, fname: str, dotted: str, origins: _Origins) -> None:
    """`dotted` and every key in it come from `fname`: a section's keys are recorded
    one by one even in the first file that has it, so that a key left at its default
    can be told from one a file sets (Config.database_origin)."""
    origins.by_key[dotted] = fname
    if isinstance(value, dict):
        for key, inner in value.items():
            _record(inner, fname, f"{dotted}.{key}", origins)
    elif isinstance(value, list):
        for i in range(len(value)):
            origins.by_key[f"{dotted}[{i}]"] = fname


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Builder:
    def __init__(self, root: Path, origins: _Origins, default_file: str,
                 environ: Mapping[str, str], *, conf_d: bool = True) -> None:
        self.root = root
        self.conf_d = conf_d      # False: a policy file, where conf.d's sections are no hint
        self.origins = origins
        self.default_file = default_file
        self.environ = environ
        self.errors: list[ConfigError] = []

    def error(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(self.origins.file(key, self.default_file), key, reason))

    def build(self, cls: type, table: object, key: str, *,
              salvage: frozenset[str] = frozenset()) -> Any:
        """`cls` from a TOML table, every problem recorded; None when any key is invalid,
        except that a table whose invalid keys are all unknown or in `salvage` is built
        without them (at their defaults), for the checks that find its other problems:
        the errors already recorded keep the whole configuration from being used."""
        if not isinstance(table, dict):
            if isinstance(table, list) and table and all(isinstance(e, dict) for e in table):
                name = _table_name(key)
                self.error(key, f"write [{name}], not [[{name}]]")
            else:
                self.error(key, f"expected a table, got {type(table).__name__}")
            return None
        hints = _resolve_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        toml_names: dict[str, str] = {}
        for f in fields.values():
            name = f.name.rstrip("_")
            if "secret" in f.metadata:
                for suffix in ("", "_file", "_env"):
                    toml_names[name + suffix] = f.name
            else:
                toml_names[name] = f.name
        kwargs: dict[str, Any] = {}
        given: set[str] = set()     # fields present in the table, valid or not
        failed: set[str] = set()    # fields whose value is invalid
        ok = True
        for tkey, raw in table.items():
            dotted = f"{key}.{tkey}" if key else tkey
            fname = toml_names.get(tkey)
            if fname is None or fname in ("source",):
                close = [n for n in toml_names if n != "source"]
                self.error(dotted, _unknown_key(tkey, key, close, conf_d=self.conf_d))
                ok = False
                continue
            f = fields[fname]
            given.add(fname)
            if "secret" in f.metadata:
                value = self._secret(f.metadata["secret"], tkey, raw, dotted)
                if value is None:
                    ok = False
                    failed.add(fname)
                    continue
                if fname in kwargs:
                    self.error(dotted, f"give only one of {f.metadata['secret']}, "
                                       f"{f.metadata['secret']}_file, {f.metadata['secret']}_env")
                    ok = False
                    failed.add(fname)
                kwargs[fname] = value
                continue
            try:
                kwargs[fname] = self.convert(hints[fname], f, raw, dotted)
            except _Invalid:
                ok = False
                failed.add(fname)
            except (ValueError, TypeError) as exc:
                self.error(dotted, str(exc))
                ok = False
                failed.add(fname)
        for f in fields.values():
            if (f.name not in given and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                name = f"{key}.{f.name.rstrip('_')}" if key else f.name
                self.error(name, "required key is missing")
                ok = False
                failed.add(f.name)
        if "source" in fields:
            kwargs["source"] = self.origins.file(key, self.default_file)
        if not ok and not failed <= salvage:
            return None
        for name in failed:
            kwargs.pop(name, None)
        return cls(**kwargs)

    def _secret(self, name: str, tkey: str, raw: object, dotted: str) -> Secret | None:
        if not isinstance(raw, str):
            self.error(dotted, "expected a string")
            return None
        if tkey == name:
            return Secret(raw)
        if tkey == name + "_env":
            if raw not in self.environ:
                self.error(dotted, f"environment variable {raw} is not set")
                return None
            return Secret(self.environ[raw])
        path = Path(raw) if Path(raw).is_absolute() else self.root / raw
        try:
            value = Secret(path.read_text().strip())
        except OSError as exc:
            self.error(dotted, f"cannot read {path}: {exc.strerror}")
            return None
        except UnicodeDecodeError as exc:
            self.error(dotted, f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}")
            return None
        problem = not_private(path)
        if problem is not None:
            self.error(dotted, problem)
            return None
        return value

    def convert(self, hint: Any, f: dataclasses.Field[Any] | None, raw: object, dotted: str) -> Any:
        if f is not None and "conv" in f.metadata:
            return f.metadata["conv"](raw)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], None, raw, dotted)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            built = self.build(hint, raw, dotted)
            if built is None:
                raise _Invalid
            return built
        if origin is Literal:
            if raw not in args:
                raise ValueError(f"{raw!r} is not one of: {', '.join(map(str, args))}")
            return raw
        if origin is tuple:
            if isinstance(raw, dict) and dataclasses.is_dataclass(args[0]):
                name = _table_name(dotted)
                raise ValueError(f"write [[{name}]] (one per entry), not [{name}]")
            if not isinstance(raw, list):
                raise ValueError(f"expected a list, got {type(raw).__name__}")
            item = args[0]
            out = []
            bad = False
            for i, v in enumerate(raw):
                try:
                    out.append(self.convert(item, None, v, f"{dotted}[{i}]"))
                except _Invalid:
                    bad = True
                except (ValueError, TypeError) as exc:
                    self.error(f"{dotted}[{i}]", str(exc))
                    bad = True
            if bad:
                raise _Invalid
            return tuple(out)
        if origin in (Mapping, dict) or hint is dict:
            if not isinstance(raw, dict):
                raise ValueError(f"expected a table, got {type(raw).__name__}")
            if args and args[1] is str:
                wrong = [(k, v) for k, v in raw.items() if not isinstance(v, str)]
                for k, v in wrong:   # each at its own key: postmaster.states.NAME
                    self.error(f"{dotted}.{k}", f"expected a string, got {type(v).__name__}"
                               + below_free_table(dotted, k))
                if wrong:
                    raise _Invalid
            return dict(raw)
        if hint is Any:
            return raw
        if hint is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, got {raw!r}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"expected a number, got {raw!r}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {type(raw).__name__}")
            return raw
        raise TypeError(f"unsupported config type {hint!r}")


class _Invalid(Exception):
    """A nested value was invalid; its error is already recorded."""


def _unknown_key(tkey: str, table: str, names: Iterable[str], *, conf_d: bool) -> str:
    """Why `tkey` of `table` is refused: the conf.d sections that have such a key (it was
    put in the wrong one), else the key of this table it is closest to (a typo)."""
    name = _table_name(table)
    homes = [h for h in _key_homes().get(tkey, ()) if h.strip("[]") != name] if conf_d else []
    if homes and name:
        where = f"[[{name}]]" if table.endswith("]") else f"[{name}]"
        return f"unknown key in {where}; {tkey} is a key of {', '.join(homes)}"
    return "unknown key" + _suggest(tkey, names)


def _table_name(key: str) -> str:
    """`submission.user[0]` -> `submission.user`."""
    return re.sub(r"\[[^]]*\]", "", key)


@functools.cache
def _key_homes() -> dict[str, tuple[str, ...]]:
    """Each key name of conf.d -> the sections that have it, as their headers are
    written (`[lmtp]`, `[[account]]`, `[account.oauth2]`), in the order of Config."""
    homes: dict[str, list[str]] = {}

    def walk(cls: type, name: str, array: bool) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            hint = hints[f.name]
            inner = [a for a in (hint, *typing.get_args(hint))
                     if dataclasses.is_dataclass(a) and isinstance(a, type)]
            if inner:
                walk(inner[0], f"{name}.{f.name}" if name else f.name,
                     typing.get_origin(hint) is tuple)
                continue
            base = f.metadata.get("secret", f.name.rstrip("_"))
            for suffix in ("", "_file", "_env") if "secret" in f.metadata else ("",):
                homes.setdefault(base + suffix, []).append(
                    f"[[{name}]]" if array else f"[{name}]")

    walk(_TopLevel, "", False)
    return {k: tuple(v) for k, v in homes.items()}


def _suggest(word: str, names: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def default_config_dir() -> Path:
    env = os.environ.get("DESKGATE_CONFIG")
    if env:
        return Path(env)
    local = Path("conf.d")
    if local.is_dir():
        return local
    return Path("/etc/deskgate/conf.d")


def _read_toml_files(files: Iterable[Path], origins: _Origins,
                     errors: list[ConfigError],
                     replace: Mapping[Path, str] | None = None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        try:
            if replace is not None and path in replace:
                data = tomllib.loads(replace[path])
            else:
                with path.open("rb") as fh:
                    data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            errors.append(ConfigError(str(path), "", f"not valid TOML: {exc}"))
            continue
        except UnicodeDecodeError as exc:
            errors.append(ConfigError(str(path), "", f"not UTF-8 text (TOML files must be): "
                                      f"{exc.reason} at byte {exc.start}"))
            continue
        except OSError as exc:
            errors.append(ConfigError(str(path), "", f"cannot read: {exc.strerror}"))
            continue
        _merge(merged, data, str(path), "", origins)
    return merged


def _in_its_file(add: Callable[[str, str, str], None], origins: _Origins,
                 conf: str) -> Callable[[str, str, str], None]:
    """`add` for the section checks: an error they file under the conf.d directory is
    filed under the file that set its key (for dkim[1].x the file that defined that
    [[dkim]] entry). A key no file sets, at its default, stays under the directory;
    errors a check names a file for itself (an account's, a policy file) are kept."""

    def add_in_file(file: str, key: str, reason: str) -> None:
        add(origins.file(key, conf) if file == conf and key else file, key, reason)

    return add_in_file


def _toml_files(directory: Path, replace: Mapping[Path, str] | None) -> list[Path]:
    """The *.toml files of a directory, plus those `replace` would add to it."""
    found = set(directory.glob("*.toml")) if directory.is_dir() else set()
    for path in replace or {}:
        if path.parent == directory and path.suffix == ".toml":
            found.add(path)
    return sorted(found)


def load_config(conf_dir: Path | str | None = None,
                environ: Mapping[str, str] | None = None,
                replace: Mapping[Path, str] | None = None, *,
                section_checks: bool = True) -> Config:
    """Read, merge and validate; raises ConfigErrors listing every problem.

    `replace` maps absolute file paths (in conf.d or the policy directory) to the
    text to read instead of theirs, new files included: the dashboard validates a
    change this way before it writes anything. `section_checks=False` leaves out
    the checks of gateway.validators (and the imports they need) for a command
    that only reads a few keys; serve, check and reload always run them.
    """
    conf = Path(conf_dir) if conf_dir is not None else default_config_dir()
    conf = conf.absolute()
    root = conf.parent
    errors: list[ConfigError] = []
    if not conf.is_dir():
        raise ConfigErrors([ConfigError(str(conf), "", "configuration directory does not exist")])
    files = _toml_files(conf, replace)
    origins = _Origins()
    merged = _read_toml_files(files, origins, errors, replace)
    default_file = str(files[0]) if files else str(conf)
    b = _Builder(root, origins, default_file, environ if environ is not None else os.environ)

    top_fields = {f.name for f in dataclasses.fields(_TopLevel)}
    raw_top = {k: v for k, v in merged.items() if k in top_fields}
    for k, v in merged.items():
        if k in top_fields:
            continue
        if isinstance(v, dict) or (isinstance(v, list) and v
                                   and all(isinstance(e, dict) for e in v)):
            b.error(k, "unknown section" + _suggest(k, top_fields))
        else:       # `key = value` above the first [section] header of a file
            homes = _key_homes().get(k, ())
            b.error(k, "a key outside any [section]" + (
                f"; {k} is a key of {', '.join(homes)}" if homes
                else "; put it under the [section] it belongs to"))
    partial = b.build(_TopLevel, raw_top, "")

    # Policies: <root>/policies/*.toml unless [gateway] policies says otherwise.
    gw = partial.gateway if partial else GatewayConfig()
    pdir = Path(gw.policies) if gw.policies else Path("policies")
    pdir = pdir if pdir.is_absolute() else root / pdir
    if gw.policies and not pdir.is_dir():     # the default may be missing: no filters
        b.error("gateway.policies", f"{pdir} does not exist or is not a directory")
    policy_files = tuple(_toml_files(pdir, replace))
    porigins = _Origins()
    pmerged = _read_toml_files(policy_files, porigins, errors, replace)
    pb = _Builder(root, porigins, str(policy_files[0]) if policy_files else str(pdir),
                  b.environ, conf_d=False)
    for k in pmerged:
        if k != "filter":
            pb.error(k, "unknown section in a policy file (only [[filter]] is allowed)")
    filters: list[FilterConfig] = []
    raw_filters = pmerged.get("filter", [])
    if not isinstance(raw_filters, list):
        pb.error("filter", "use [[filter]] (an array of tables)")
        raw_filters = []
    for i, raw in enumerate(raw_filters):
        # Messages name a filter filter[name] as the filter checks do, or filter[i]
        # when it has no usable name; its own builder files them under its file.
        name = raw.get("name") if isinstance(raw, dict) else None
        usable = isinstance(name, str) and bool(name.strip()) and name_problem(name) is None
        fb = _Builder(root, _Origins(), porigins.file(f"filter[{i}]", pb.default_file),
                      b.environ, conf_d=False)
        built = fb.build(FilterConfig, raw, f"filter[{name}]" if usable else f"filter[{i}]",
                         salvage=_FILTER_SALVAGE)
        pb.errors.extend(fb.errors)
        if built is not None:
            if not built.name.strip():  # left out: the checks would name it filter[]
                pb.error(f"filter[{i}].name", "must not be empty (filters run in name order)")
                continue
            problem = name_problem(built.name)
            if problem is not None:     # left out: its later errors' keys would hold it
                pb.error(f"filter[{i}].name", problem)
                continue
            filters.append(built)
    errors.extend(b.errors)
    errors.extend(pb.errors)
    if partial is None:
        raise ConfigErrors(errors)

    cfg = Config(root=root, conf_dir=conf, filters=tuple(sorted(filters, key=lambda f: f.name)),
                 policy_files=policy_files, key_files=dict(origins.by_key),
                 **{f.name: getattr(partial, f.name) for f in dataclasses.fields(_TopLevel)})

    def add(file: str, key: str, reason: str) -> None:
        errors.append(ConfigError(file, key, reason))

    # A key no file sets (at its default, in no file's section) is filed under the
    # directory, as the section checks file it (_in_its_file).
    validate_core(cfg, lambda key: origins.file(key, str(conf)), add)
    # The checks of the other sections (filters, crypto, DKIM, dashboard, ...): their
    # modules import this one, so the table is imported here, when it is needed.
    if section_checks:
        from gateway.validators import validators

        for v in validators():
            v.fn(cfg, _in_its_file(add, origins, str(conf)))
    if errors:
        raise ConfigErrors(errors)
    return cfg


# Keys of a [[filter]] that may be invalid while the rest of it is still checked (its
# conditions and set keys), so one run reports all of its problems; not match or any,
# whose absence the filter check reports as a problem of its own.
_FILTER_SALVAGE = frozenset({"stop_after_match", "comment", "set"})

# The sections of conf.d: Config's fields but those the loader fills in itself, as a
# dataclass of their own that _Builder builds from the merged TOML.
_INTERNAL = ("root", "conf_dir", "filters", "policy_files", "key_files")
_HINTS = typing.get_type_hints(Config)
_TopLevel = dataclasses.make_dataclass("_TopLevel", [
    (f.name, _HINTS[f.name], field(default=f.default, default_factory=f.default_factory))
    for f in dataclasses.fields(Config) if f.name not in _INTERNAL], frozen=True)
