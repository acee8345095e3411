"""The model's metadata file (model.json): readable without numpy, for `classify
status`, `check` and the retraining schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FORMAT = 1
META = "model.json"


class ModelError(Exception):
    """The model directory holds no usable model (missing, unreadable, not ours)."""


def read_meta(directory: Path) -> dict[str, Any]:
    """model.json only (no arrays): what `classify status` shows."""
    path = directory / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"no model in {directory} ({META} missing)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a deskgate classifier model (format {FORMAT})")
    return meta


def summary(meta: dict[str, Any]) -> str:
    """One line for logs: date, queues, held-out accuracy."""
    q = meta.get("queue") or {}
    ev = q.get("evaluation") or {}
    acc = ev.get("accuracy")
    return (f"trained {meta.get('trained_at', '?')} on {meta.get('tickets', '?')} tickets, "
            f"{len(q.get('classes') or [])} queues"
            + (f", held-out accuracy {acc:.3f}" if isinstance(acc, int | float)
               and math.isfinite(acc) else ""))
