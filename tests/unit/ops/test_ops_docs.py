"""The admin documentation stays true to the code: every configuration key is in
docs/configuration.md with its current default, every CLI command in docs/cli.md,
and the README links the documents."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from pathlib import Path

from gateway import config as C
from gateway.config.load import _TopLevel

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
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            h = hints[f.name]
            inner = [a for a in typing.get_args(h) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(h) or inner:
                walk(h if dataclasses.is_dataclass(h) else inner[0], prefix + f.name + ".")
                continue
            out.append((prefix + f.metadata.get("secret", f.name.rstrip("_")), f))

    walk(_TopLevel, "")
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


def _leaf_parsers() -> list[tuple[str, typing.Any]]:
    """(command path, parser) of every command that takes no further subcommand."""
    import argparse

    from gateway.cli import build_parser

    out: list[tuple[str, typing.Any]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((prefix, parser))
            return
        for name, child in subs[0].choices.items():
            walk(f"{prefix} {name}".strip(), child)

    walk("", build_parser())
    return out


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

    def test_every_subcommand_and_option_in_cli_doc(self):
        """Every leaf command of the argument parser (`deskgate keys smime import`, ...) has
        its usage line in docs/cli.md naming each of its options and arguments, and a table
        row for each option; nothing in the doc's usage lines is unknown to the parser."""
        text = (DOCS / "cli.md").read_text()
        usage = {m.group(1).strip(): m.group(2) for m in
                 re.finditer(r"^deskgate ((?:[a-z][a-z0-9-]* ?)+?) ?(\[-h\].*)$", text, re.M)}
        sections = re.split(r"^deskgate ", text, flags=re.M)
        problems = []
        leaves = dict(_leaf_parsers())
        for path, parser in leaves.items():
            if path not in usage:
                problems.append(f"deskgate {path}: no usage line")
                continue
            line = usage[path]
            section = next(s for s in sections if s.startswith(path + " [-h]"))
            for a in parser._actions:
                if a.option_strings and "-h" in a.option_strings:
                    continue
                if a.help == argparse.SUPPRESS:     # a global option: see the next test
                    continue
                names = [str(n) for n in (a.option_strings or (a.metavar, a.dest)) if n]
                shown = max(names, key=len)
                if not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", line)
                           for n in names):
                    problems.append(f"deskgate {path}: {shown} missing from the usage line")
                if not any(re.search(rf"^\| `[^`]*(?<![\w-]){re.escape(n)}(?![\w-])", section,
                                     re.M) for n in names):
                    problems.append(f"deskgate {path}: {shown} has no row in the option table")
        problems += [f"deskgate {path}: documented but not a command" for path in usage
                     if path not in leaves]
        assert not problems, "\n".join(problems)

    def test_global_options_documented_once(self):
        """The global options every command also takes after its name (hidden in each
        command's help) are the top-level parser's, and docs/cli.md's introduction says
        they go before or after the command and which one wins."""
        from gateway.cli import build_parser

        top = {s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
        hidden = {s for _, parser in _leaf_parsers() for a in parser._actions
                  if a.help == argparse.SUPPRESS for s in a.option_strings}
        assert hidden == top
        intro = (DOCS / "cli.md").read_text().split("\n## ", 1)[0]
        assert "deskgate COMMAND [--config DIR] ..." in intro
        assert "the one after the command wins" in intro

    def test_referenced_documents_exist(self):
        """Every Markdown file that code, tests, docs or the README mention is in the repository
        (no pointers to design notes that are not shipped)."""
        shipped = {p.name for p in REPO.glob("*.md")} | {p.name for p in DOCS.glob("*.md")}
        files = [REPO / "README.md", *DOCS.glob("*.md"), *(REPO / "gateway").rglob("*.py"),
                 *(REPO / "gateway").rglob("*.html"), *(REPO / "tests").rglob("*.py"),
                 *(REPO / "conf.d").glob("*.toml"), REPO / "Makefile"]
        missing = sorted({f"{f.relative_to(REPO)}: {name}" for f in files
                          for name in re.findall(r"\b[A-Za-z][\w-]*\.md\b", f.read_text())
                          if name not in shipped})
        assert not missing

    def test_configuration_headings_are_plain(self):
        """Each section heading of configuration.md is `### [name]` or `### [[name]]` (no
        stray backticks from a sentence pasted into the heading)."""
        headings = re.findall(r"^### (\[.*)$", (DOCS / "configuration.md").read_text(), re.M)
        assert headings
        bad = [h for h in headings if not re.fullmatch(r"\[[a-z0-9_.]+\]|\[\[[a-z0-9_.]+\]\]", h)]
        assert bad == []

    def test_documented_commands_and_extras_exist(self):
        """Every `deskgate COMMAND` and `deskgate[EXTRA]` that the README and docs name
        exists (nothing is documented before it is built)."""
        import argparse
        import tomllib

        from gateway.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]
        texts = [(REPO / "README.md").read_text(), *(p.read_text() for p in DOCS.glob("*.md"))]
        # As a command is written: in a code block or in backticks.
        code = [c for t in texts for c in re.findall(r"```.*?```", t, re.S)]
        code += [c for t in texts for c in re.findall(r"`[^`]+`", re.sub(r"```.*?```", "", t,
                                                                           flags=re.S))]
        commands = {m for c in code for m in re.findall(
            r"^[ \t]*(?:sudo -u \S+ |\S*bin/)?deskgate (?:(?:-c|--config) \S+ )?"
            r"([a-z][a-z-]*[a-z])(?=\s|$)",
            re.sub(r"#.*", "", c.strip("`")), re.M)}
        named_extras = {m for t in texts for m in re.findall(r"deskgate\[([a-z0-9_-]+)\]", t)}
        assert {"serve", "check", "keys"} <= commands
        assert sorted(c for c in commands if c not in sub.choices) == []
        assert sorted(named_extras - set(extras)) == []

    def test_readme_links_docs(self):
        """The README links every document in docs/."""
        readme = (REPO / "README.md").read_text()
        for doc in sorted(DOCS.glob("*.md")):
            assert f"docs/{doc.name}" in readme, doc.name
