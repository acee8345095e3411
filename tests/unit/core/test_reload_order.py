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


def test_a_service_that_fails_to_follow_a_reload_does_not_undo_it(make_confdir,
                                                                    run_gateway):
    """Once the new configuration is in place, a reload hook that raises is logged:
    the other hooks still run, the reload counts as done (so the other processes
    are signalled and follow), and the gateway runs with the new configuration."""
    from gateway import metrics
    from gateway.config import load_config

    conf = make_confdir()
    rg = run_gateway(load_config(conf))
    seen: list[str] = []

    def broken(cfg):
        raise RuntimeError("cannot follow")

    async def fine(cfg):
        seen.append(cfg.postmaster.default_queue)

    rg.gateway.reload_hooks[:0] = [broken, fine]
    (conf / "60-queue.toml").write_text('[postmaster]\ndefault_queue = "Support"\n')
    ok_before = metrics.RELOADS.labels("ok")._value.get()
    assert rg.call(rg.gateway.reload()) is True
    assert seen == ["Support"]
    assert rg.gateway.config.postmaster.default_queue == "Support"
    assert metrics.RELOADS.labels("ok")._value.get() == ok_before + 1
