"""structlog set-up: one event per line, JSON when not on a TTY."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

import structlog


class LineLogger:
    """Writes each event as one line in ONE write(2): with ``--workers N`` every process
    shares stderr, and structlog's PrintLogger (``print``: the text, then the newline, two
    writes) let lines of two processes run into each other."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        try:
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # not a real file (a test's capture): its own write

    def msg(self, message: str) -> None:
        line = message + "\n"
        with self._lock:
            if self._fd is None:
                self._file.write(line)
                self._file.flush()
                return
            self._file.flush()  # anything written through the file object goes first
            data = memoryview(line.encode("utf-8", "backslashreplace"))
            while data:
                try:
                    data = data[os.write(self._fd, data) :]
                except InterruptedError:
                    continue
                except OSError:
                    return  # stderr gone: nothing to tell it

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


def configure(level: str = "info", fmt: str = "auto") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    line_logger = LineLogger(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: line_logger,
        cache_logger_on_first_use=True,
    )
    # aiortc/aioice log through the standard library; keep their noise out of INFO.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
