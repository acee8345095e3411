"""A gpg or openssl call that runs past its timeout ends, with the processes it started,
even when a child of it keeps its output pipes open."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.crypto import pgp, pgpkeyring, smime
from gateway.crypto.pgpkeyring import GpgUnavailable, PgpStore
from tests.integration.crypto.crypto_helpers import SUPPORT, CryptoEnv

TIMEOUT = 2
# What a call may take beyond its timeout before it counts as stuck.
SLACK = 4.0


class Holder:
    """A wrapper of a program: for the matching arguments it starts a child that keeps
    stdout and stderr open and sleeps, and then sleeps itself; otherwise it runs the
    real program. Records both process ids."""

    def __init__(self, directory: Path, program: str, when: str) -> None:
        self.path = directory / f"{program}-holds"
        self.pids = directory / f"{program}.pids"
        self.path.write_text(
            '#!/bin/sh\nfor a in "$@"; do case "$a" in ' + when + ")\n"
            f'  echo $$ >> "{self.pids}"; sleep 300 & echo $! >> "{self.pids}"; wait; exit 2;;\n'
            f'esac; done\nexec {program} "$@"\n')
        self.path.chmod(0o755)

    def started(self) -> list[int]:
        return [int(p) for p in self.pids.read_text().split()] if self.pids.exists() else []

    def stop(self) -> None:
        for pid in self.started():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(pids: list[int]) -> bool:
    """Whether these processes have ended (a killed one takes a moment to be reaped)."""
    deadline = time.monotonic() + 2
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def bounded(fn: Callable[[], Any], limit: float) -> tuple[float, BaseException | None, Any]:
    """fn() on a daemon thread: (seconds it took, what it raised, what it returned).
    Fails when it has not returned within `limit` seconds (the thread is left)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=run, name="bounded-call", daemon=True)
    th.start()
    th.join(limit)
    took = time.monotonic() - t0
    assert not th.is_alive(), f"the call had not returned after {limit:g} s"
    return took, out.get("exc"), out.get("value")


def no_threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    """The threads started since `before` that are still running after a moment."""
    deadline = time.monotonic() + 2
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", TIMEOUT)
    monkeypatch.setattr(smime, "TIMEOUT", TIMEOUT)


@pytest.fixture
def holder(tmp_path) -> Iterator[Callable[[str, str], Holder]]:
    made: list[Holder] = []

    def make(program: str, when: str) -> Holder:
        made.append(Holder(tmp_path, program, when))
        return made[-1]

    yield make
    for h in made:
        h.stop()


class TestTimedGpg:
    def test_listing_whose_child_holds_the_pipes_ends(self, pgp_env: CryptoEnv, holder,
                                                      short_timeouts):
        """A key listing whose gpg leaves a child holding stdout/stderr raises
        GpgUnavailable within the timeout and a few seconds; the child is gone and no
        reader thread is left."""
        h = holder("gpg", "--list-keys|--list-secret-keys")
        store = PgpStore(pgp_env.gnupg_home, str(h.path))
        assert store.gpg is not None              # python-gnupg's version probe first
        before = set(threading.enumerate())
        took, exc, _ = bounded(store.all_keys, TIMEOUT + SLACK)
        assert isinstance(exc, GpgUnavailable) and "did not answer within 2 s" in str(exc)
        assert TIMEOUT <= took < TIMEOUT + SLACK
        assert len(h.started()) == 2 and gone(h.started())      # gpg and its child
        assert no_threads_left(before) == []

    def test_signing_whose_child_holds_the_pipes_ends(self, pgp_env: CryptoEnv, holder,
                                                      short_timeouts):
        """Signing (gpg fed through a writer thread) ends the same way: a temporary
        PgpError naming the timeout, the child gone, no thread left."""
        key = next(k for k in pgp_env.stores.pgp.all_keys() if k.secret)
        h = holder("gpg", "-s|-sa|-sb|--sign|--detach-sign")
        store = PgpStore(pgp_env.gnupg_home, str(h.path))
        store.all_keys()                            # listed by the real gpg
        before = set(threading.enumerate())
        took, exc, _ = bounded(lambda: pgp.sign_detached(store, b"x" * 200_000, key),
                               TIMEOUT + SLACK)
        assert isinstance(exc, pgp.PgpError) and exc.temporary
        assert "did not answer within 2 s" in str(exc)
        assert took < TIMEOUT + SLACK
        assert h.started() and gone(h.started())
        assert no_threads_left(before) == []

    def test_encrypting_a_large_message_ends_with_the_timeout(self, pgp_env: CryptoEnv,
                                                              holder, short_timeouts):
        """A message larger than a pipe holds, to a gpg that reads none of it: the
        timeout (a temporary PgpError), not the broken pipe of the writer thread."""
        keys = [k for k in pgp_env.stores.pgp.all_keys() if k.can_encrypt]
        h = holder("gpg", "-e|--encrypt")
        store = PgpStore(pgp_env.gnupg_home, str(h.path))
        store.all_keys()
        before = set(threading.enumerate())
        took, exc, _ = bounded(lambda: pgp.encrypt(store, b"x" * 500_000, keys),
                               TIMEOUT + SLACK)
        assert isinstance(exc, pgp.PgpError) and exc.temporary, repr(exc)
        assert took < TIMEOUT + SLACK
        assert "did not answer within 2 s" in str(exc)
        assert h.started() and gone(h.started())
        assert no_threads_left(before) == []

    def test_a_gpg_that_answers_is_unchanged(self, pgp_env: CryptoEnv, short_timeouts):
        """The real gpg signs as before, and leaves no process group or thread behind."""
        store = pgp_env.stores.pgp
        key = next(k for k in store.all_keys() if k.secret and SUPPORT in k.addresses)
        before = set(threading.enumerate())
        sig = pgp.sign_detached(store, b"hello\r\n", key)
        assert sig.startswith(b"-----BEGIN PGP SIGNATURE-----")
        assert no_threads_left(before) == []


class TestOpenssl:
    def test_openssl_whose_child_holds_the_pipes_ends(self, crypto_env: CryptoEnv, holder,
                                                      short_timeouts, monkeypatch):
        """An openssl verification past its timeout ends within a few seconds with the
        signature not checked, naming the timeout, and the child it left holding the
        pipes is gone."""
        h = holder("openssl", "-verify")
        monkeypatch.setattr(smime, "OPENSSL", str(h.path))
        took, exc, v = bounded(lambda: smime.verify(b"\x30\x03\x02\x01\x00", b"content",
                                                    crypto_env.root / "keys/smime/ca.pem"),
                               2 * TIMEOUT + SLACK)
        assert exc is None, exc
        assert not v.checked and not v.valid
        assert "openssl did not answer within 2 s" in v.error
        assert took < 2 * TIMEOUT + SLACK      # the check, then the signer lookup
        assert h.started() and gone(h.started())
