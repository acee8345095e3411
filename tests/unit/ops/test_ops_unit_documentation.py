"""The unit's Documentation= points at files the documented install puts there: the
commands docs/install.md gives for /usr/share/doc/deskgate are run against a scratch
directory, and every file: URL of deskgate.service must then exist in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOC_DIR = "/usr/share/doc/deskgate"


def documentation_urls() -> list[str]:
    text = (REPO / "systemd" / "deskgate.service").read_text()
    return [url for line in text.splitlines() if line.startswith("Documentation=")
            for url in line.split("=", 1)[1].split()]


def install_doc_commands() -> list[str]:
    """The shell lines of docs/install.md's code blocks that write DOC_DIR."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "docs" / "install.md").read_text(), re.S)
    return [line.split("#", 1)[0].strip() for block in blocks
            for line in block.splitlines() if DOC_DIR in line]


class TestDocumentationUrls:
    def test_every_file_url_exists_after_the_documented_install(self, tmp_path):
        """Run install.md's commands for /usr/share/doc/deskgate (into a scratch copy of
        that directory, from the source tree); each file: URL of Documentation= is there."""
        urls = documentation_urls()
        assert urls, "deskgate.service has no Documentation="
        scratch = tmp_path / "doc"
        for command in install_doc_commands():
            subprocess.run(["bash", "-ec", command.replace(DOC_DIR, str(scratch))],
                           cwd=REPO, check=True, timeout=30)
        for url in urls:
            assert url.startswith(("file:", "https:", "man:")), url
            if url.startswith("file:"):
                path = url.removeprefix("file:")
                assert path.startswith(DOC_DIR + "/"), url
                assert (scratch / path.removeprefix(DOC_DIR + "/")).is_file(), url
            assert not url.startswith("man:"), f"{url}: deskgate installs no man pages"
