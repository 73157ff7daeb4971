"""The one structlog setup, and log-once helpers.

Console output on a terminal, one JSON object per line otherwise (journald, files, tests).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure_logging(debug: bool = False, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog once for the process. Safe to call again (e.g. in tests)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if debug else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class OnceLog:
    """Log a condition once while it lasts; count every occurrence.

    ``warn(key, event, **kw)`` logs the first time ``key`` is seen and then stays quiet until
    ``clear(key)`` says the condition is over (then a recovery line is logged)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.active: dict[str, int] = {}

    def warn(self, key: str, event: str, level: str = "warning", **kw: Any) -> None:
        n = self.active.get(key)
        if n is None:
            self.active[key] = 1
            getattr(self.logger, level)(event, key=key, **kw)
        else:
            self.active[key] = n + 1

    def clear(self, key: str) -> None:
        n = self.active.pop(key, None)
        if n is not None:
            self.logger.info("recovered", key=key, occurrences=n)
