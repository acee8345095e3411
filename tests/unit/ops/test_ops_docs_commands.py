"""The deskgate commands docs/install.md and docs/operations.md give in their shell
blocks are accepted by deskgate's command line as written: an admin who copies one
gets the command, not a usage error."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[3]
DOCS = ("install.md", "operations.md")


def shell_commands(text: str) -> list[str]:
    """The deskgate command of each line of the ```sh blocks (after `sudo -u deskgate`
    or `runuser -u deskgate --`), without its comment; `[...]` (optional parts) kept
    without the brackets, so that they are checked too."""
    out = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and words[0] in ("sudo", "runuser"):
                words = words[3:] if words[1] == "-u" else words[1:]
                if words and words[0] == "--":
                    words = words[1:]
            if words and words[0] == "deskgate":
                out.append(" ".join(w.strip("[]") for w in words[1:] if w.strip("[]")))
    return out


def _cases() -> list[tuple[str, str]]:
    return [(doc, cmd) for doc in DOCS
            for cmd in shell_commands((REPO / "docs" / doc).read_text())]


class TestExtraction:
    def test_reads_sh_blocks_only(self):
        text = ("```sh\ndeskgate log list --limit 5   # note\n"
                "sudo -u deskgate deskgate -c /etc/x check\nsystemctl status deskgate\n"
                "deskgate log show 1 [--json]\n```\n"
                "```toml\ndeskgate = 1\n```\n`deskgate not-a-block`\n")
        assert shell_commands(text) == ["log list --limit 5", "-c /etc/x check",
                                        "log show 1 --json"]

    def test_both_documents_have_commands(self):
        docs = {doc for doc, _ in _cases()}
        assert docs == set(DOCS)


@pytest.mark.parametrize("doc, cmd", _cases())
def test_command_parses(doc, cmd, capsys):
    """deskgate's parser accepts the command (exit 2 with a usage error otherwise)."""
    try:
        build_parser().parse_args(shlex.split(cmd))
    except SystemExit as exc:
        pytest.fail(f"docs/{doc}: `deskgate {cmd}` is refused (exit {exc.code}): "
                    f"{capsys.readouterr().err.strip()}")
