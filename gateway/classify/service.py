"""Scheduled retraining inside `serve` (opt-in): every retrain_interval, and/or once
retrain_after_moves tickets were moved since the active model was trained."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from gateway.classify import model_dir

if TYPE_CHECKING:
    from gateway.interfaces import Host

log = structlog.get_logger(__name__)


def _trained_at(gw: Host) -> datetime | None:
    import json

    try:
        meta = json.loads((model_dir(gw.config) / "model.json").read_text())
        return datetime.fromisoformat(str(meta["trained_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Retrainer:
    """Checks every `poll` seconds whether a retraining is due; trains on a thread."""

    name = "classifier-retrain"

    def __init__(self, gw: Host, poll: float = 60.0) -> None:
        self.gw = gw
        self.poll = poll
        self._task: asyncio.Task[None] | None = None
        self._not_before = 0.0          # after an attempt: wait before the next one
        self.runs = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.check()
            except Exception as exc:
                log.error("classifier retraining failed", error=repr(exc)[:500])

    def due(self) -> str:
        """Why a retraining is due now, or ''."""
        cl = self.gw.config.classifier
        if not cl.enabled or not (cl.retrain_interval or cl.retrain_after_moves):
            return ""
        if time.monotonic() < self._not_before:
            return ""
        trained = _trained_at(self.gw)
        if trained is None:
            return "no model yet"
        if cl.retrain_interval:
            age = (datetime.now(trained.tzinfo) - trained).total_seconds()
            if age >= cl.retrain_interval:
                return f"model is {age / 3600:.1f} h old"
        if cl.retrain_after_moves:
            from gateway.classify.data import moves_since

            with self.gw.engine.connect() as conn:
                moved = moves_since(conn, trained)
            if moved >= cl.retrain_after_moves:
                return f"{moved} ticket(s) moved since the model was trained"
        return ""

    async def check(self) -> bool:
        """Retrain when due; True when a new model was activated."""
        reason = await asyncio.get_running_loop().run_in_executor(None, self.due)
        if not reason:
            return False
        cfg = self.gw.config
        from gateway.classify import extra_installed

        if not extra_installed():
            log.warning("classifier retraining skipped: pip install 'deskgate[classify]'")
            self._not_before = time.monotonic() + 3600
            return False
        from gateway.classify.meta import ModelError, summary
        from gateway.classify.train import train_and_activate

        log.info("classifier retraining", reason=reason)
        self.runs += 1
        # A refused or failed attempt is not repeated before the interval (or an hour).
        self._not_before = time.monotonic() + max(cfg.classifier.retrain_interval or 3600, 600)
        try:
            res = await asyncio.get_running_loop().run_in_executor(
                None, lambda: train_and_activate(cfg, self.gw.engine, readback=True))
        except ModelError as exc:
            log.warning("classifier retraining: nothing to learn", error=str(exc))
            return False
        if not res.activated:
            log.warning("classifier retraining refused", reason=res.refused)
            return False
        log.info("classifier retrained", model=summary(res.meta))
        self._not_before = time.monotonic() + 600
        return True


def factory(gw: Host) -> Retrainer | None:
    """Always present in the main process: a reload may switch retraining on."""
    return Retrainer(gw)
