"""Log lines: written to the current stderr, batched per pass of an event loop."""

from __future__ import annotations

import asyncio
import json
import sys
import threading

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
