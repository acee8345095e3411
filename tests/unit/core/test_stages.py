"""The inbound stage table: one place, built by the gateway, checked at startup."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.app import Gateway
from gateway.commlog import CommObj
from gateway.inbound import pipeline
from gateway.inbound.pipeline import Stage, Stages
from gateway.inbound.stages import COMMIT_NAMES, PREPARE_NAMES, build_stages, check_stages
from gateway.model import CONTINUE, DELIVER, Envelope, MessageContext, Verdict


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
    def test_verdict_runs_only_dropped_stages(self):
        """After a stage returns a verdict, only the stages marked dropped=True still run,
        and the verdict stays on the message."""
        ran: list[str] = []

        def mk(name: str, verdict: Verdict | None = None):
            def fn(ctx, rt, conn):
                ran.append(name)
                return verdict
            return fn

        ctx = MessageContext(envelope=Envelope(mail_from="", recipients=(), raw=b""),
                             log=CommObj("Message"))
        stages = Stages(prepare=(), commit=(
            Stage("a", mk("a", CONTINUE)), Stage("b", mk("b", Verdict("duplicate", "seen"))),
            Stage("c", mk("c")), Stage("d", mk("d"), dropped=True), Stage("e", mk("e"))))
        pipeline.commit(ctx, None, None, stages.commit)
        assert ran == ["a", "b", "d"]
        assert ctx.verdict == Verdict("duplicate", "seen")

    def test_ignored_message_runs_only_dropped_stages(self):
        """A message ignored at prepare time only goes through dedupe and record."""
        ran: list[str] = []
        ctx = MessageContext(envelope=Envelope(mail_from="", recipients=(), raw=b""),
                             log=CommObj("Message"), verdict=Verdict("ignore"))
        st = build_stages()
        for row in st.commit:
            st = st.with_stage("commit", row.name,
                               lambda ctx, rt, conn, n=row.name: ran.append(n))
        pipeline.commit(ctx, None, None, st.commit)
        assert ran == ["dedupe", "record"]


class TestReplies:
    def test_one_reply_per_verdict(self):
        """smtp_reply maps every final verdict to its reply; continue is no final verdict."""
        assert pipeline.smtp_reply(DELIVER) == errors.DELIVERED
        assert pipeline.smtp_reply(Verdict("ignore")) == errors.IGNORED
        assert pipeline.smtp_reply(Verdict("duplicate")) == errors.DUPLICATE
        assert pipeline.smtp_reply(Verdict("quarantine", "x")) == errors.QUARANTINED
        assert pipeline.smtp_reply(Verdict("tempfail", "db")) == errors.TEMPFAIL
        with pytest.raises(ValueError):
            pipeline.smtp_reply(CONTINUE)

    def test_ignore_stage_returns_a_verdict(self, config):
        """X-Deskgate-Ignore (trusted) makes the ignore stage return an ignore verdict."""
        from gateway.runtime import build_runtime

        ctx = MessageContext(envelope=Envelope(mail_from="", recipients=(), raw=b""),
                             log=CommObj("Message"), params={"Ignore": "yes"})
        assert pipeline.ignore(ctx, build_runtime(config)) == Verdict("ignore",
                                                                      "X-Deskgate-Ignore")
        assert ctx.action == "ignore"
