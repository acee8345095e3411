"""The outbound stage table: the stages that change an outgoing message, in order.

Read top to bottom this is the outbound path between resolve and enqueue:
    rewrite → crypto → dkim
DKIM is last, after anything that changes the body (S/MIME, PGP). No module
adds itself: build_outbound_stages() imports each stage's module and
check_outbound_stages() refuses a table with a stage missing, repeated, unknown
or with anything after DKIM. Tests hand the pipeline the stages they want.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.outbound.context import OutboundContext
from gateway.tablecheck import once_each

if TYPE_CHECKING:
    from gateway.runtime import Runtime

ORDER = ("rewrite", "crypto", "dkim")

StageFn = Callable[[OutboundContext, "Runtime"], None]


@dataclass(frozen=True)
class OutboundStage:
    name: str
    fn: StageFn


OutboundStages = tuple[OutboundStage, ...]


def build_outbound_stages() -> OutboundStages:
    """The production table (imports every stage's module)."""
    from gateway.crypto.outbound import crypto_stage
    from gateway.outbound.dkim import dkim_stage
    from gateway.outbound.rewrite import rewrite

    stages = (
        OutboundStage("rewrite", rewrite),
        OutboundStage("crypto", crypto_stage),
        OutboundStage("dkim", dkim_stage),
    )
    check_outbound_stages(stages)
    return stages


def check_outbound_stages(stages: OutboundStages) -> None:
    """Startup check: every stage present once, in ORDER (so DKIM signs last).

    Raises RuntimeError naming what is wrong.
    """
    problems = once_each(ORDER, (s.name for s in stages), prefix="stage ")
    problems += [f"stage {s.name!r} is not callable" for s in stages if not callable(s.fn)]
    if not problems and tuple(s.name for s in stages) != ORDER:
        problems.append("stages out of order (expected " + " → ".join(ORDER) + ")")
    if problems:
        raise RuntimeError("outbound stage table: " + "; ".join(problems))


_DEFAULT: list[OutboundStages] = []


def default_stages() -> OutboundStages:
    """The production table, built (and checked) on first use in this process."""
    if not _DEFAULT:
        _DEFAULT.append(build_outbound_stages())
    return _DEFAULT[0]
