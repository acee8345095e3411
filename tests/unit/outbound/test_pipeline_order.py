"""The outbound stage table: rewrite, crypto, DKIM last, checked at startup."""

from __future__ import annotations

import pytest

from gateway.crypto.outbound import crypto_stage
from gateway.outbound.dkim import dkim_stage
from gateway.outbound.rewrite import rewrite
from gateway.outbound.stages import (
    ORDER,
    OutboundStage,
    build_outbound_stages,
    check_outbound_stages,
    default_stages,
)


def noop(ctx, rt):
    return None


class TestStageTable:
    def test_production_table(self):
        """The production table is rewrite, S/MIME/PGP crypto, DKIM, in that order."""
        stages = build_outbound_stages()
        assert tuple(s.name for s in stages) == ORDER == ("rewrite", "crypto", "dkim")
        assert [s.fn for s in stages] == [rewrite, crypto_stage, dkim_stage]

    def test_default_is_built_once(self):
        """The pipeline's default table is the production one, built once per process."""
        assert default_stages() is default_stages()
        assert [s.name for s in default_stages()] == list(ORDER)

    def test_missing_stage_refused(self):
        """A table without the crypto stage is refused, naming it."""
        stages = tuple(s for s in build_outbound_stages() if s.name != "crypto")
        with pytest.raises(RuntimeError, match="'crypto' missing"):
            check_outbound_stages(stages)

    def test_repeated_stage_refused(self):
        """A stage present twice is refused."""
        stages = build_outbound_stages()
        with pytest.raises(RuntimeError, match="'rewrite' present 2 times"):
            check_outbound_stages((stages[0], *stages))

    def test_unknown_stage_refused(self):
        """A stage the table does not know is refused."""
        with pytest.raises(RuntimeError, match="'stamp' unknown"):
            check_outbound_stages((*build_outbound_stages(), OutboundStage("stamp", noop)))

    def test_nothing_after_dkim(self):
        """DKIM must be last: a table that signs before crypto is refused."""
        r, c, d = build_outbound_stages()
        with pytest.raises(RuntimeError, match="out of order"):
            check_outbound_stages((r, d, c))
