"""Fixtures of the OTOBO connector tests: one OTOBO source tree and template database
for the session, a fresh OTOBO database per test, and a deskgate config pointing at it."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from tests.peers import otobo as ot

pytestmark = pytest.mark.otobo


@pytest.fixture(scope="session")
def otobo_site() -> Iterator[ot.OtoboSite]:
    why = ot.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"OTOBO cannot run under CI=true: {why}")
        pytest.skip(why)
    site = ot.make_site()
    try:
        yield site
    finally:
        site.destroy()


@pytest.fixture
def otobo(otobo_site: ot.OtoboSite, tmp_path: Path) -> Iterator[ot.Otobo]:
    """A fresh OTOBO (its own database) for one test; its plackup is stopped afterwards."""
    o = otobo_site.new(tmp_path / "otobo")
    try:
        yield o
    finally:
        o.drop()


@pytest.fixture
def helpdesk_config(make_confdir: Callable[..., Path]) -> Callable[..., Config]:
    """helpdesk_config('type = "otobo-rest"', 'url = "..."', ...) → a loaded Config."""

    def make(*lines: str, extra: str = "") -> Config:
        body = "[helpdesk]\n" + "\n".join(lines) + "\n" + textwrap.dedent(extra)
        return load_config(make_confdir({"60-helpdesk.toml": body}))

    return make
