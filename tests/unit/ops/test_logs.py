"""Log lines: written to the current stderr, batched per pass of an event loop."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from gateway.logs import setup_logging


class Recorder:
    """A stderr that keeps each write separately."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[str] = []
        self.monkeypatch = monkeypatch

    def install(self) -> None:
        """Become sys.stderr (in the test body: pytest's capture sets its own before)."""
        self.monkeypatch.setattr(sys, "stderr", self)

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def events(self) -> list[str]:
        return [json.loads(line)["event"] for line in "".join(self.writes).splitlines()]


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    setup_logging("info", "json")
    return Recorder(monkeypatch)


class TestLogLines:
    def test_outside_a_loop_each_line_is_written_at_once(self, stderr: Recorder) -> None:
        """Without an event loop a line is on stderr when the call returns."""
        stderr.install()
        log = structlog.get_logger("t")
        log.info("one")
        assert stderr.events() == ["one"]
        log.info("two")
        assert stderr.events() == ["one", "two"]

    def test_lines_of_one_loop_pass_go_out_together_after_it(self, stderr: Recorder) -> None:
        """Lines logged in one pass of the loop are written in one write when it ends."""
        stderr.install()
        log = structlog.get_logger("t")
        seen: list[list[str]] = []

        async def main() -> None:
            for i in range(5):
                log.info(f"line {i}")
            seen.append(stderr.events())     # still held back
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(stderr.events())

        asyncio.run(main())
        assert seen[0] == []
        assert seen[1] == [f"line {i}" for i in range(5)]
        assert len(stderr.writes) == 1

    def test_order_holds_across_threads(self, stderr: Recorder) -> None:
        """A line from another thread is written after the lines the loop holds back."""
        stderr.install()
        log = structlog.get_logger("t")

        async def main() -> None:
            log.info("loop first")
            t = threading.Thread(target=lambda: log.info("thread second"))
            t.start()
            t.join()
            log.info("loop third")

        asyncio.run(main())
        assert stderr.events() == ["loop first", "thread second", "loop third"]

    def test_nothing_is_lost_when_the_loop_ends(self, stderr: Recorder) -> None:
        """The last lines of a loop are written by the time asyncio.run returns."""
        stderr.install()
        log = structlog.get_logger("t")

        async def main() -> None:
            log.info("last words")

        asyncio.run(main())
        assert stderr.events() == ["last words"]


class Opaque:
    """A value JSON has no type for."""

    def __repr__(self) -> str:
        return "<opaque>"


class TestLineContent:
    def test_a_json_line_has_the_fields_level_and_utc_timestamp_in_order(
            self, stderr: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
        """Fields as given, then event, level and an ISO UTC timestamp ending in Z
        (UTC even on a host whose local time is not)."""
        monkeypatch.setenv("TZ", "DGT+3")      # POSIX form, UTC-3, no zoneinfo needed
        time.tzset()
        try:
            stderr.install()
            structlog.get_logger("t").warning("stored", ticket="2026120310000001", article=7)
        finally:
            monkeypatch.undo()
            time.tzset()
        line = json.loads("".join(stderr.writes))
        assert list(line) == ["ticket", "article", "event", "level", "timestamp"]
        assert line["level"] == "warning"
        assert line["article"] == 7
        assert line["timestamp"].endswith("Z")
        assert "+00:00" not in line["timestamp"]
        stamp = datetime.fromisoformat(line["timestamp"].removesuffix("Z")).replace(tzinfo=UTC)
        assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5)

    def test_exception_is_logged_at_level_error_with_its_traceback(
            self, stderr: Recorder) -> None:
        """log.exception gives level "error" and the rendered traceback."""
        stderr.install()
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger("t").exception("failed")
        line = json.loads("".join(stderr.writes))
        assert line["level"] == "error"
        assert "ValueError: boom" in line["exception"]

    def test_a_value_without_a_json_type_is_rendered_as_its_repr(
            self, stderr: Recorder) -> None:
        """Objects JSON cannot encode are logged as their repr, not dropped."""
        stderr.install()
        structlog.get_logger("t").info("odd", value=Opaque())
        assert json.loads("".join(stderr.writes))["value"] == "<opaque>"

    def test_one_write_per_line_outside_a_loop(self, stderr: Recorder) -> None:
        """A line and its newline are one write."""
        stderr.install()
        structlog.get_logger("t").info("one")
        assert stderr.writes == ['{"event": "one", "level": "info", "timestamp": "'
                                 + json.loads(stderr.writes[0])["timestamp"] + '"}\n']
