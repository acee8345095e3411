"""The inbound stage table: every stage of the pipeline, in order, in one place.

Read top to bottom this is the inbound path. The composition root (app.py)
builds it with build_stages() and hands it to the Pipeline; a stage module only
defines its function and never adds itself. check_stages() refuses a table in
which a stage is missing, repeated or unknown, so a partial import can no
longer yield a silently shorter pipeline.

Prepare (no database; event loop or worker pool):
    parse → decrypt → trust → filters → loop → bounce → ignore → classify
Commit (inside the group-commit transaction; the reply waits for the commit):
    dedupe → followup → route → classify → store → handoff → record → autoresponse

`dedupe` and `record` also run for a dropped message (ignored, duplicate): an
ignored message is recorded as such, so its redelivery is a duplicate.
"""

from __future__ import annotations

from gateway.inbound.pipeline import Stage, Stages
from gateway.tablecheck import once_each

PREPARE_NAMES = ("parse", "decrypt", "trust", "filters", "loop", "bounce", "ignore", "classify")
COMMIT_NAMES = ("dedupe", "followup", "route", "classify", "store", "handoff", "record",
                "autoresponse")


def build_stages() -> Stages:
    """The production stage table (imports every stage's module)."""
    from gateway import classify
    from gateway.crypto import inbound as crypto_inbound
    from gateway.inbound import bounce, filters, followup, loop, pipeline, ticket
    from gateway.outbound import autoresponse

    stages = Stages(
        prepare=(
            Stage("parse", pipeline.parse),
            Stage("decrypt", crypto_inbound.decrypt_stage),
            Stage("trust", pipeline.trust),
            Stage("filters", filters.stage),
            Stage("loop", loop.detect_loop),
            Stage("bounce", bounce.detect_bounce),
            Stage("ignore", pipeline.ignore),
            Stage("classify", classify.predict_stage),
        ),
        commit=(
            Stage("dedupe", pipeline.dedupe, dropped=True),
            Stage("followup", followup.followup_stage),
            Stage("route", pipeline.route_stage),
            Stage("classify", classify.apply_stage),
            Stage("store", ticket.store),
            Stage("handoff", ticket.handoff),
            Stage("record", pipeline.record, dropped=True),
            Stage("autoresponse", autoresponse.auto_response_stage),
        ),
        offload=(crypto_inbound.may_need_crypto, classify.may_need_model),
    )
    check_stages(stages)
    return stages


def check_stages(stages: Stages) -> None:
    """Startup check: every stage of the table is present exactly once, in its part.

    Raises RuntimeError naming what is missing, repeated or unknown.
    """
    problems: list[str] = []
    for part, expected, rows in (("prepare", PREPARE_NAMES, stages.prepare),
                                 ("commit", COMMIT_NAMES, stages.commit)):
        problems += once_each(expected, (r.name for r in rows), prefix=f"{part} stage ")
        problems += [f"{part} stage {r.name!r} is not callable" for r in rows
                     if not callable(r.fn)]
    if problems:
        raise RuntimeError("inbound stage table: " + "; ".join(problems))
