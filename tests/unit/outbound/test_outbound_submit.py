"""OutboundPipeline.submit against a migrated SQLite store and the group-commit writer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway.outbound.context import OutboundContext
from gateway.outbound.pipeline import OutboundPipeline
from gateway.store.tables import Article, OutboundMessage, Ticket
from gateway.store.writer import BatchWriter

RAW = (b"From: app@internal.test\r\nTo: c@customer.test\r\nSubject: Hello\r\n\r\nbody\r\n")


class RerunWriter(BatchWriter):
    """Runs each job once in a transaction that is rolled back (a batch that failed for
    a neighbour's sake), then again on its own, as the writer does."""

    async def run(self, job: Any, *, isolated: bool = False) -> Any:
        with self.engine.connect() as conn:
            trans = conn.begin()
            job(conn)
            trans.rollback()
        return await super().run(job, isolated=isolated)


class TestSubmit:
    async def test_job_run_again_after_a_failed_batch(self, ob_engine, rt):
        """Run again after its batch was rolled back, a message on a new ticket is queued
        on a ticket that exists (it kept the rolled-back ticket's id and got 451)."""
        writer = RerunWriter(ob_engine)
        try:
            pipeline = OutboundPipeline(lambda: rt, writer)
            ctx = OutboundContext(mail_from="app@internal.test", recipients=["c@customer.test"],
                                  raw=RAW, trusted=True)
            result = await pipeline.submit(ctx)
        finally:
            writer.close()
        with ob_engine.connect() as conn:
            tickets = conn.execute(select(Ticket.id, Ticket.number)).all()
            arts = conn.execute(select(Article.ticket_id)).scalars().all()
            rows = conn.execute(select(OutboundMessage.ticket_id)).scalars().all()
        assert result.reply.code == 250
        assert [t.number for t in tickets] == [result.ticket_number]
        assert arts == rows == [tickets[0].id]

    async def test_a_wake_up_that_fails_after_the_commit_still_answers_queued(
            self, ob_engine, rt, caplog):
        """The sender's wake-up runs after the commit: when it raises, the message is
        queued all the same and submit answers 250 (a 4xx would make the client send it
        a second time)."""
        writer = BatchWriter(ob_engine)

        def broken_wake() -> None:
            raise RuntimeError("wake-up failed")

        try:
            pipeline = OutboundPipeline(lambda: rt, writer, on_queued=broken_wake)
            ctx = OutboundContext(mail_from="app@internal.test", recipients=["c@customer.test"],
                                  raw=RAW, trusted=True)
            result = await pipeline.submit(ctx)
        finally:
            writer.close()
        with ob_engine.connect() as conn:
            rows = conn.execute(select(OutboundMessage.id)).scalars().all()
        assert result.reply.code == 250
        assert rows == [result.outbound_id]

    async def test_a_failure_that_cannot_be_logged_still_answers_its_reply(self, ob_engine, rt):
        """A refused message whose communication log cannot be queued (the writer is
        closed) still gets its own reply, not an exception out of submit."""
        writer = BatchWriter(ob_engine)
        pipeline = OutboundPipeline(lambda: rt, writer)
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["c@customer.test"],
                              raw=b"not a message", trusted=True)

        def refuse(*_a: Any) -> None:
            from gateway.errors import PermanentError

            raise PermanentError("refused for the test")

        def closed(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("writer closed")

        pipeline._prepare = refuse      # type: ignore[method-assign]
        writer.submit = closed          # type: ignore[method-assign]
        try:
            result = await pipeline.submit(ctx)
        finally:
            BatchWriter.close(writer)
        assert result.reply.code == 554

    async def test_a_temporary_error_is_a_warning_and_451(self, ob_engine, rt):
        """A stage that raises a TemporaryError (gpg not answering) gets 451 and one
        warning naming the cause, not an error with a traceback."""
        from structlog.testing import capture_logs

        from gateway.errors import TemporaryError

        writer = BatchWriter(ob_engine)
        pipeline = OutboundPipeline(lambda: rt, writer)
        ctx = OutboundContext(mail_from="app@internal.test", recipients=["c@customer.test"],
                              raw=RAW, trusted=True)

        def unavailable(*_a: Any) -> None:
            raise TemporaryError("gpg did not answer within 30 s")

        pipeline._prepare = unavailable     # type: ignore[method-assign]
        try:
            with capture_logs() as logs:
                result = await pipeline.submit(ctx)
        finally:
            writer.close()
        assert result.reply.code == 451
        [entry] = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert entry["log_level"] == "warning" and "exc_info" not in entry
        assert "gpg did not answer" in entry["error"]
