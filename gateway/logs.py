"""structlog setup: console lines on a terminal, JSON otherwise."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    import asyncio


class _Stderr:
    """Writes to whatever sys.stderr is now (tests and daemons swap it), not the one
    seen when logging was configured: a cached logger never writes to a closed file.

    A line logged on a thread that runs an event loop is held back until the end
    of that pass of the loop (a callback the line schedules), and all lines held
    by then go out in one write. A write lets the GIL go, and on the event loop
    thread getting it back from the group-commit writer thread cost more than the
    line itself: with one line per delivered message (level info) the inbound
    path lost ~0.4 of its throughput. A line logged anywhere else (CLI, worker
    threads) is written at once, after the lines held back, so the order stays;
    lines still held at exit are written then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._scheduled: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def write(self, text: str) -> int:
        loop: asyncio.AbstractEventLoop | None = None
        aio = sys.modules.get("asyncio")    # not imported: no loop runs (light CLI commands)
        if aio is not None:
            with contextlib.suppress(RuntimeError):
                loop = aio.get_running_loop()
        with self._lock:
            if loop is None:
                self._pending.append(text)
                self._write_pending()
                return len(text)
            self._pending.append(text)
            if loop in self._scheduled:
                return len(text)
            self._scheduled.add(loop)
        loop.call_soon(self._drain_for, loop)
        return len(text)

    def flush(self) -> None:
        """print(flush=True) calls this per line; the lines are written by write/drain."""

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            sys.stderr.write(text)
            sys.stderr.flush()

    def _drain_for(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._scheduled.discard(loop)
            self._write_pending()

    def drain(self) -> None:
        """Write every line held back."""
        with self._lock:
            self._write_pending()

    def forget(self) -> None:
        """In a forked child: the lines held back are the parent's to write."""
        self._lock = threading.Lock()
        self._pending = []
        self._scheduled = weakref.WeakSet()


_STDERR = _Stderr()
atexit.register(_STDERR.drain)
os.register_at_fork(after_in_child=_STDERR.forget)


def _fallback(obj: Any) -> Any:
    """A value JSON has no type for: its __structlog__() when it has one, else its repr
    (what structlog's JSONRenderer does)."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


_LEVEL = {"warn": "warning", "exception": "error"}


def _level_time_exc(logger: Any, method_name: str,
                    event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """structlog's add_log_level, TimeStamper(fmt="iso", utc=True) and format_exc_info
    in one call: the same keys in the same order, one function call per line
    instead of six."""
    event_dict["level"] = _LEVEL.get(method_name, method_name)
    event_dict["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, method_name, event_dict)
    return event_dict


# json.dumps with a `default` builds a new encoder for every line; this one is built once.
_JSON = json.JSONEncoder(default=_fallback)


def _dumps(obj: Any, **_kw: Any) -> str:
    return _JSON.encode(obj)


# structlog keeps each logger once it has logged (cheaper per line). The test suite turns
# this off: structlog.testing.capture_logs cannot see a logger cached before it.
CACHE_LOGGERS = True


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _level_time_exc,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # WriteLogger: one write of the line with its newline (print makes two, and a flush)
        logger_factory=structlog.WriteLoggerFactory(file=_STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
