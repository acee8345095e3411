"""The admin documentation stays true to the code: every configuration key is in
docs/configuration.md with its current default, every CLI command in docs/cli.md,
and the README links the documents."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

from gateway import config as C

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"


def _dur(s: float) -> str:
    if s == 0:
        return "0s"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{round(s * 1000)}ms" if s < 1 else f"{s}s"


def _size(b: int) -> str:
    for unit, n in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if b >= n and b % n == 0:
            return f"{b // n}{unit}"
    return str(b)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def documented_default(f: dataclasses.Field[object]) -> str | None:
    """The default as docs/configuration.md shows it (None: not compared)."""
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return "*required*"
    if v is None:
        return "—"
    fn = f.metadata.get("conv")
    if fn is C.parse_duration:
        return f'`"{_dur(v)}"`'
    if fn is C.parse_size:
        return f'`"{_size(v)}"`'
    if fn is C.parse_mode:
        return f'`"0{v:o}"`'
    if fn is C.parse_schedule or isinstance(v, dict):
        return None
    return f"`{_toml(v)}`".replace("|", "\\|")


def config_keys() -> list[tuple[str, dataclasses.Field[object]]]:
    out: list[tuple[str, dataclasses.Field[object]]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls, vars(C))
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            h = hints[f.name]
            inner = [a for a in typing.get_args(h) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(h) or inner:
                walk(h if dataclasses.is_dataclass(h) else inner[0], prefix + f.name + ".")
                continue
            out.append((prefix + f.metadata.get("secret", f.name.rstrip("_")), f))

    walk(C._TopLevel, "")
    walk(C.FilterConfig, "filter.")
    return out


class TestConfigurationReference:
    def test_every_key_documented_with_its_default(self):
        """Each config dataclass field has a row `| `section.key` | default | meaning |`
        in docs/configuration.md, and the default shown is the code's default."""
        text = (DOCS / "configuration.md").read_text()
        rows = {m.group(1): (m.group(2).strip(), m.group(3).strip()) for m in re.finditer(
            r"^\| `([a-z0-9_.]+)` \| (.*?) \| (.*) \|$", text, re.M)}
        problems = []
        for key, f in config_keys():
            if key not in rows:
                problems.append(f"{key}: missing — add a row to docs/configuration.md")
                continue
            want = documented_default(f)
            if want is not None and rows[key][0] != want:
                problems.append(f"{key}: docs say {rows[key][0]}, code says {want}")
            if not rows[key][1] or rows[key][1] == "TODO":
                problems.append(f"{key}: no description")
        assert not problems, "\n".join(problems)

    def test_no_stale_keys(self):
        """Every key documented still exists in the code."""
        text = (DOCS / "configuration.md").read_text()
        documented = {k for k in re.findall(r"^\| `([a-z0-9_.]+)` \|", text, re.M) if "." in k}
        known = {k for k, _ in config_keys()}
        assert documented - known == set()


class TestCliAndLinks:
    def test_every_command_in_cli_doc(self):
        """Every top-level `deskgate` command and its actions appear in docs/cli.md."""
        import argparse

        from gateway.cli import build_parser

        text = (DOCS / "cli.md").read_text()
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        missing = []
        for name, p in sub.choices.items():
            if f"deskgate {name}" not in text:
                missing.append(name)
            for a in p._actions:
                if isinstance(a, argparse._SubParsersAction):
                    missing += [f"{name} {act}" for act in a.choices
                                if not re.search(rf"deskgate {name}\b[^\n]*\b{act}\b", text)]
        assert not missing, f"not in docs/cli.md: {missing}"

    def test_readme_links_docs(self):
        """The README links every document in docs/."""
        readme = (REPO / "README.md").read_text()
        for doc in sorted(DOCS.glob("*.md")):
            assert f"docs/{doc.name}" in readme, doc.name
