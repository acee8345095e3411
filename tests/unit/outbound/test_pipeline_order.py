"""The outbound stage order is data: rewrite, crypto slot, DKIM last."""

from __future__ import annotations

import pytest

from gateway.outbound import pipeline


@pytest.fixture
def restore_order():
    stages, order = dict(pipeline.STAGES), list(pipeline.OUTBOUND_ORDER)
    yield
    pipeline.STAGES.clear()
    pipeline.STAGES.update(stages)
    pipeline.OUTBOUND_ORDER[:] = order


class TestStageOrder:
    def test_default_order(self):
        """The default order is rewrite, crypto, dkim."""
        order = pipeline.OUTBOUND_ORDER
        assert order[0] == "rewrite"
        assert order.index("rewrite") < order.index("crypto") < order.index("dkim")
        assert order[-1] == "dkim"

    def test_new_stage_goes_before_dkim(self, restore_order):
        """A stage registered without `before` lands before dkim, which stays last."""
        pipeline.register_outbound_stage("stamp", lambda ctx, rt: None)
        assert pipeline.OUTBOUND_ORDER[-1] == "dkim"
        assert pipeline.OUTBOUND_ORDER.index("stamp") < pipeline.OUTBOUND_ORDER.index("dkim")

    def test_crypto_slot_can_be_filled_in_place(self, restore_order):
        """Registering "crypto" replaces the no-op slot without moving it."""
        def fn(ctx, rt):
            return None

        before = list(pipeline.OUTBOUND_ORDER)
        pipeline.register_outbound_stage("crypto", fn)
        assert before == pipeline.OUTBOUND_ORDER
        assert pipeline.STAGES["crypto"] is fn

    def test_unknown_anchor_refused(self, restore_order):
        """Inserting before a stage that does not exist is an error."""
        with pytest.raises(ValueError, match="no outbound stage"):
            pipeline.register_outbound_stage("x", lambda ctx, rt: None, before="nope")
