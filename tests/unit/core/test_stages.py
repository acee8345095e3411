"""The inbound stage table: one place, built by the gateway, checked at startup."""

from __future__ import annotations

import pytest

from gateway.app import Gateway
from gateway.inbound import pipeline
from gateway.inbound.pipeline import Stage, Stages
from gateway.inbound.stages import COMMIT_NAMES, PREPARE_NAMES, build_stages, check_stages


def names(rows: tuple[Stage, ...]) -> list[str]:
    return [r.name for r in rows]


class TestTable:
    def test_production_order(self):
        """The table lists every stage of the inbound path in the documented order."""
        st = build_stages()
        assert names(st.prepare) == ["parse", "decrypt", "trust", "filters", "loop", "bounce",
                                     "ignore", "classify"]
        assert names(st.commit) == ["dedupe", "followup", "route", "classify", "store",
                                    "handoff", "record", "autoresponse"]
        assert [r.name for r in st.commit if r.dropped] == ["dedupe", "record"]
        assert len(st.offload) == 2

    def test_gateway_uses_the_table(self, config):
        """Gateway builds the table itself: importing no stage module beforehand is enough."""
        gw = Gateway(config)
        try:
            assert names(gw.pipeline.stages.prepare) == list(PREPARE_NAMES)
            assert names(gw.pipeline.stages.commit) == list(COMMIT_NAMES)
        finally:
            gw.close()

    def test_passed_stages_are_used(self, config):
        """A Gateway given a stage table runs that one (tests pass the stages they want)."""
        st = build_stages().with_stage("commit", "autoresponse", lambda ctx, rt, conn: None)
        gw = Gateway(config, stages=st)
        try:
            assert gw.pipeline.stages is st
        finally:
            gw.close()


class TestCheck:
    def test_missing_stage_refused(self):
        """A table without one of its stages is refused, naming it."""
        st = build_stages()
        short = st._replace(prepare=tuple(r for r in st.prepare if r.name != "loop"))
        with pytest.raises(RuntimeError, match="prepare stage 'loop' missing"):
            check_stages(short)

    def test_repeated_stage_refused(self):
        """A stage listed twice is refused."""
        st = build_stages()
        twice = st._replace(commit=(*st.commit, st.commit[-1]))
        with pytest.raises(RuntimeError, match="commit stage 'autoresponse' present 2 times"):
            check_stages(twice)

    def test_unknown_stage_refused(self):
        """A stage the table does not know is refused."""
        st = build_stages().with_stage("prepare", "extra", lambda ctx, rt: None)
        with pytest.raises(RuntimeError, match="prepare stage 'extra' unknown"):
            check_stages(st)


class TestWithStage:
    def test_replace_keeps_position_and_flag(self):
        """with_stage replaces a stage in place and keeps its dropped flag."""
        def fn(ctx, rt, conn):
            return None

        st = build_stages().with_stage("commit", "dedupe", fn)
        assert st.commit[0] == Stage("dedupe", fn, dropped=True)
        assert st.fn("commit", "dedupe") is fn

    def test_insert_before(self):
        """A new stage goes before the one named, or at the end."""
        def fn(ctx, rt):
            return None

        st = build_stages().with_stage("prepare", "spy", fn, before="trust")
        assert names(st.prepare)[1:4] == ["decrypt", "spy", "trust"]


class TestEngine:
    def test_skip_runs_only_dropped_stages(self):
        """After a stage raises Skip, only the stages marked dropped=True still run."""
        ran: list[str] = []

        def mk(name: str, skip: bool = False):
            def fn(ctx, rt, conn):
                ran.append(name)
                if skip:
                    raise pipeline.Skip
            return fn

        class Ctx:
            action = "new"

        stages = Stages(prepare=(), commit=(
            Stage("a", mk("a", skip=True)), Stage("b", mk("b")),
            Stage("c", mk("c"), dropped=True), Stage("d", mk("d"))))
        pipeline.commit(Ctx(), None, None, stages.commit)
        assert ran == ["a", "c"]

    def test_ignored_message_runs_only_dropped_stages(self):
        """A message already ignored at prepare time only goes through dedupe and record."""
        ran: list[str] = []

        class Ctx:
            action = "ignore"

        st = build_stages()
        for row in st.commit:
            st = st.with_stage("commit", row.name,
                               lambda ctx, rt, conn, n=row.name: ran.append(n))
        pipeline.commit(Ctx(), None, None, st.commit)
        assert ran == ["dedupe", "record"]
