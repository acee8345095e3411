"""Machine-learning classification of new tickets' queue and priority (deskgate[classify]).

This module stays light: scikit-learn and numpy are imported by
gateway.classify.model, and only when `[classifier] enabled = true` and a message
needs a prediction (or by `deskgate classify`).

The prepare stage `classify` predicts, for a message that would otherwise land in
the default queue (no X-header/filter queue, no account dispatch queue, no system
address of another queue). Messages that may need it are prepared on the worker
pool (a prediction takes about half a millisecond, too long for the event loop).
The commit stage `classify`, after follow-up detection and routing, applies the
prediction to a new ticket still in the default queue when its confidence reaches
`min_confidence`, and records the decision on the ticket and in the log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Connection

from gateway.config import Config
from gateway.inbound.route import candidates
from gateway.model import Envelope, MessageContext
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.classify.model import Model

log = structlog.get_logger(__name__)

INSTALL_HINT = ("the classifier needs scikit-learn and numpy: "
                "pip install 'deskgate[classify]'")
TRAIN_HINT = "train one with `deskgate classify train` (needs stored tickets in 2+ queues)"
RECHECK_SECONDS = 2.0

_warned: set[str] = set()
_warned_lock = threading.Lock()


def extra_installed() -> bool:
    """Whether deskgate[classify] is installed (without importing it)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sklearn", "numpy", "scipy"))


def model_dir(cfg: Config) -> Path:
    """[classifier] model, by default `classifier` under the state directory."""
    return cfg.path(cfg.classifier.model) if cfg.classifier.model else cfg.state_dir / "classifier"


def _warn_once(problem: str) -> bool:
    with _warned_lock:
        if problem in _warned:
            return False
        _warned.add(problem)
    log.warning("classifier unavailable; messages keep the default queue", problem=problem)
    return True


class Classifier:
    """The model of one Runtime: loaded on first use, re-read when model.json changes
    (after `deskgate classify train` or a scheduled retraining), so a running
    gateway picks up a new model without a restart."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.directory = model_dir(cfg)
        self._lock = threading.Lock()
        self._model: Model | None = None
        self._problem = ""
        self._stamp: tuple[int, int] | None = None
        self._checked = -RECHECK_SECONDS

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.directory / "model.json").stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> tuple[Model | None, str]:
        """(model, "") or (None, why not); checks the file at most every RECHECK_SECONDS."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return self._model, self._problem
        with self._lock:
            if now - self._checked < RECHECK_SECONDS:
                return self._model, self._problem
            stamp = self._file_stamp()
            if stamp != self._stamp or (self._model is None and not self._problem):
                self._model, self._problem = self._load()
                self._stamp = stamp
                if self._model is not None:
                    from gateway.classify.meta import summary

                    log.info("classifier model loaded", directory=str(self.directory),
                             model=summary(self._model.meta))
            self._checked = now
            return self._model, self._problem

    def _load(self) -> tuple[Model | None, str]:
        if not extra_installed():
            return None, INSTALL_HINT
        from gateway.classify.meta import ModelError
        from gateway.classify.model import load

        try:
            return load(self.directory), ""
        except ModelError as exc:
            return None, str(exc)
        except Exception as exc:       # never let a broken file stop delivery
            return None, f"{self.directory}: {type(exc).__name__}: {exc}"


def build_classifier(cfg: Config) -> Classifier | None:
    """The Runtime's classifier (a row of gateway.runtime's builder table)."""
    global _active
    _active = cfg if cfg.classifier.enabled else None
    return Classifier(cfg) if cfg.classifier.enabled else None


# The config of the latest Runtime with the classifier enabled (for the offload
# predicate, which only sees the envelope).
_active: Config | None = None


def would_default(ctx: MessageContext, rt: Runtime) -> bool:
    """Whether routing would put this message in the default queue (as route() decides)."""
    cfg = rt.config
    wanted = ctx.param("Queue")
    if wanted and cfg.queue_by_name(wanted) is not None:
        return False
    if ctx.envelope.dispatch_queue:
        return False
    default = cfg.postmaster.default_queue.lower()
    for rcpt in candidates(ctx):
        addr = cfg.address_by_email(rcpt)
        if addr is not None and addr.queue and addr.valid == "valid":
            return addr.queue.lower() == default
    return True


def may_need_model(env: Envelope) -> bool:
    """Prepare on the worker pool when the message may be classified."""
    cfg = _active
    if cfg is None or env.dispatch_queue:
        return False
    default = cfg.postmaster.default_queue.lower()
    for rcpt in env.recipients:
        addr = cfg.address_by_email(rcpt)
        if addr is not None and addr.queue and addr.valid == "valid":
            return addr.queue.lower() == default
    return True     # unknown recipient or no queue: To/Cc or the default decide


def predict_stage(ctx: MessageContext, rt: Runtime) -> None:
    """Prepare stage: the prediction for a message bound for the default queue."""
    clf = rt.classifier
    p = ctx.parsed
    if not isinstance(clf, Classifier) or p is None or ctx.is_bounce or ctx.loop:
        return
    if not would_default(ctx, rt):
        return
    from gateway import metrics

    model, problem = clf.current()
    if model is None:
        metrics.CLASSIFIER_PREDICTIONS.labels("unavailable").inc()
        if _warn_once(problem):
            ctx.log.log("Warn", "Classifier", f"not used: {problem}; {TRAIN_HINT}")
        return
    from gateway.classify.text import message_text

    t0 = time.perf_counter()
    try:
        pred = model.predict(message_text(p.subject, p.body, p.body_html))
    except Exception as exc:     # a prediction problem never blocks delivery
        metrics.CLASSIFIER_PREDICTIONS.labels("failed").inc()
        if _warn_once(f"prediction failed: {type(exc).__name__}: {exc}"):
            ctx.log.log("Warn", "Classifier", f"prediction failed: {type(exc).__name__}: {exc}")
        return
    took = time.perf_counter() - t0
    metrics.CLASSIFIER_PREDICTIONS.labels("predicted").inc()
    metrics.CLASSIFIER_SECONDS.observe(took)
    pred["model"] = model.trained_at
    pred["milliseconds"] = round(took * 1000, 3)
    ctx.classification = pred


def apply_decision(ctx: MessageContext, rt: Runtime) -> None:
    """Use the prediction for a new ticket still in the default queue; record it."""
    c = ctx.classification
    if c is None:
        return
    cfg, cl = rt.config, rt.config.classifier
    default = cfg.postmaster.default_queue
    if ctx.action != "new" or ctx.queue.lower() != default.lower():
        ctx.classification = None          # follow-up, or routed by something else
        return
    rec = dict(c)
    q = cfg.queue_by_name(str(c["queue"]))
    conf = float(c["confidence"])
    runner = (f", runner-up {c['runner_up']} {c['runner_up_confidence']:.2f}"
              if "runner_up" in c else "")
    rec["applied_queue"] = q is not None and conf >= cl.min_confidence
    if q is None:
        why = f"queue {c['queue']!r} no longer exists; default queue {default} kept"
    elif rec["applied_queue"]:
        ctx.queue = q.name
        why = f"queue {q.name} ({conf:.2f} >= {cl.min_confidence:.2f}{runner})"
        ctx.trace.append(f"queue {q.name} from the classifier (confidence {conf:.2f})")
    else:
        why = (f"{c['queue']} {conf:.2f} < min_confidence {cl.min_confidence:.2f}{runner}; "
               f"default queue {default} kept")
        ctx.trace.append(f"classifier: {c['queue']} {conf:.2f} below min_confidence; "
                         "default queue kept")
    rec["applied_priority"] = False
    if "priority" in c:
        pconf = float(c["priority_confidence"])
        prio = str(c["priority"])
        if ctx.param("Priority"):
            why += f"; priority from X-header/filter kept ({prio} {pconf:.2f} not used)"
        elif (rec["applied_queue"] and pconf >= cl.min_priority_confidence
              and prio in cfg.postmaster.priorities):
            ctx.params["Priority"] = prio
            rec["applied_priority"] = True
            why += f"; priority {prio} ({pconf:.2f})"
        else:
            why += f"; priority {prio} {pconf:.2f} not used"
    if cl.confidence_field:
        ctx.params[f"DynamicField-{cl.confidence_field}"] = f"{conf:.2f}"
    ctx.classification = rec
    ctx.log.log("Info", "Classifier", why)


def apply_stage(ctx: MessageContext, rt: Runtime, conn: Connection) -> None:
    apply_decision(ctx, rt)


def model_problem(cfg: Config) -> str:
    """'' when the configured model loads, else what is wrong."""
    if not extra_installed():
        return INSTALL_HINT
    from gateway.classify.meta import ModelError
    from gateway.classify.model import load

    try:
        load(model_dir(cfg))
    except ModelError as exc:
        return f"no readable model: {exc}"
    return ""


def check_model(cfg: Config) -> str:
    """What `deskgate check` says when enabled = true and the model is not usable."""
    problem = model_problem(cfg)
    if not problem:
        return ""
    if problem == INSTALL_HINT:
        return f"enabled = true but {INSTALL_HINT}"
    return f"enabled = true but {problem}; {TRAIN_HINT}"
