"""Settings that work but cost throughput on this machine (`deskgate check`, serve)."""

from __future__ import annotations

import os

from gateway.config.sections import Config


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, a cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not on Linux
        return os.cpu_count() or 1


def process_advice(cfg: Config, cpus: int | None = None) -> list[tuple[str, str]]:
    """(key, reason) for settings that work but cost throughput on this machine.

    LMTP processes that, with the commit process, outnumber the CPUs take turns on
    them: measured with `bench/lmtp.py` on two CPUs, `workers = 2` stored 0.79 of
    the messages per second of `workers = 1` (2,561 against 3,253, TCP, one
    recipient), because the commit process then waits for a CPU three times as
    often and the commit of every message waits with it."""
    cpus = usable_cpus() if cpus is None else cpus
    workers = cfg.lmtp.workers
    busy = workers + (1 if cfg.store.commit_process else 0)
    if workers > 1 and busy > cpus:
        with_commit = " and the commit process" if cfg.store.commit_process else ""
        return [("lmtp.workers",
                 f"{workers} LMTP processes{with_commit} need {busy} CPUs and deskgate "
                 f"may run on {cpus} CPU{'s' if cpus != 1 else ''} here: they take turns "
                 f"on them, and fewer workers store more messages per second (on two CPUs "
                 f"1 worker was faster than 2)")]
    return []
