"""Fixtures of the core integration tests: one throwaway Postfix per module that
relays example.org to the LMTP socket of the gateway under test, and helpers to
read what the gateway stored."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import load_config
from tests.integration.core.stored import POSTFIX_SOCKET_CONF, Store
from tests.peers import postfix as pfmod
from tests.peers.postfix import Postfix
from tests.peers.require import missing_peer

if TYPE_CHECKING:
    from tests.conftest import RunningGateway



@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    """A Postfix instance relaying example.org to <base>/lmtp.sock, shared by a module."""
    if not pfmod.available():
        missing_peer("Postfix binaries missing or not running as root")
    with pfmod.postfix_dir() as base:
        pf = Postfix(base, f"unix:{base / 'lmtp.sock'}")
        try:
            pf.start()        # marks the instance running before it waits for smtpd
            yield pf
        finally:
            pf.stop()


@pytest.fixture
def pf_gateway(postfix: Postfix, make_confdir: Callable[..., Path],
               run_gateway: Callable[..., RunningGateway]
               ) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway whose LMTP socket is the one Postfix delivers to.

    The gateway's root lives under the Postfix base directory (pytest's temp
    dirs are 0700, so user postfix could not reach a socket there); the fixed
    socket path Postfix knows is a symlink to the socket of this test's gateway.
    """
    link = postfix.base / "lmtp.sock"

    def start(files: dict[str, str] | None = None, **kw: Any) -> RunningGateway:
        root = postfix.base / f"gw-{uuid.uuid4().hex[:8]}"
        conf = make_confdir({"20-postfix.toml": POSTFIX_SOCKET_CONF, **(files or {})},
                            root=root)
        root.chmod(0o755)
        rg = run_gateway(load_config(conf), **kw)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(rg.socket_path)
        return rg

    yield start
    postfix.purge()
    with contextlib.suppress(FileNotFoundError):
        link.unlink()


@pytest.fixture
def store_of() -> Callable[[RunningGateway], Store]:
    return lambda rg: Store(rg.gateway.engine)


@pytest.fixture
def gateway(make_confdir: Callable[..., Path], run_gateway: Callable[..., RunningGateway]
            ) -> Callable[..., RunningGateway]:
    """Start a gateway (LMTP on a unix socket and a TCP port) with extra conf.d files."""

    def start(files: dict[str, str] | None = None) -> RunningGateway:
        return run_gateway(load_config(make_confdir(files)))

    return start


