"""SIGHUP in `deskgate serve`: the main process reloads first; the LMTP workers and
the commit process get SIGHUP only when that reload worked, so a refused or failed
reload never leaves some processes on the new configuration."""

from __future__ import annotations

import signal

import pytest

from gateway import supervise


class FakeGateway:
    def __init__(self, result: bool | Exception) -> None:
        self.result = result
        self.reloads = 0

    async def reload(self) -> bool:
        self.reloads += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def signalled(monkeypatch):
    sent: list[tuple[list[int], int]] = []
    monkeypatch.setattr(supervise, "_signal_workers",
                        lambda pids, sig: sent.append((list(pids), sig)))
    monkeypatch.setattr(supervise, "_settle_heap", lambda: None)
    return sent


@pytest.mark.parametrize(("result", "ok", "expected"), [
    (True, True, [([11, 12], signal.SIGHUP)]),
    (False, False, []),
    (RuntimeError("database write failed"), False, []),
])
async def test_the_others_reload_only_after_the_main_process_did(signalled, result, ok,
                                                                 expected):
    gw = FakeGateway(result)
    assert await supervise.reload_everywhere(gw, [11, 12]) is ok   # type: ignore[arg-type]
    assert gw.reloads == 1
    assert signalled == expected
