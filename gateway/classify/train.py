"""Train from the store and activate the model unless it is below the accuracy floor;
shared by `deskgate classify train` and the scheduled retraining in `serve`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from gateway.classify import model_dir
from gateway.classify.data import load_examples, moves_since
from gateway.config import Config


@dataclass
class TrainResult:
    """What a training run did: the model's metadata, and whether it became active."""

    meta: dict[str, Any] = field(default_factory=dict)
    activated: bool = False
    refused: str = ""            # why the model was not activated
    readback: Any = None         # gateway.classify.readback.ReadBack when it ran


def examples_for(cfg: Config, engine: Engine, since: datetime | None = None) -> list[Any]:
    """The labelled tickets: everything outside the default queue and exclude_queues."""
    excluded = (cfg.postmaster.default_queue, *cfg.classifier.exclude_queues)
    with engine.connect() as conn:
        return load_examples(conn, since=since, exclude_queues=excluded)


def train_and_activate(cfg: Config, engine: Engine, *, since: datetime | None = None,
                       min_per_class: int | None = None,
                       progress: Callable[[str], None] | None = None,
                       readback: bool = False) -> TrainResult:
    """Train on the stored tickets; write the model when its held-out accuracy reaches
    [classifier] accuracy_floor (raises ModelError when there is too little to learn).
    With `readback` the helpdesk's current queues are read back first (where the
    connector can), so agents' moves in the helpdesk are learnt."""
    from gateway.classify.model import save, train

    cl = cfg.classifier
    rb = None
    if readback and cfg.helpdesk.enabled:
        from gateway.classify.readback import read_back

        rb = read_back(cfg, engine, since=since, progress=progress)
    examples = examples_for(cfg, engine, since)
    with engine.connect() as conn:
        moves = moves_since(conn, None)
    model = train(examples, min_per_class=min_per_class or cl.min_per_class,
                  with_priority=cl.priority, progress=progress or (lambda _m: None),
                  info={"since": since.isoformat() if since else None, "moves": moves})
    acc = float(model.queue.evaluation.get("accuracy", 0.0))
    if acc < cl.accuracy_floor:
        return TrainResult(meta=model.meta, readback=rb, refused=(
            f"held-out accuracy {acc:.3f} is below [classifier] accuracy_floor "
            f"{cl.accuracy_floor:.2f}; the active model is unchanged"))
    save(model, model_dir(cfg))
    return TrainResult(meta=model.meta, activated=True, readback=rb)
