"""The one structlog setup, and log-once helpers.

Console output on a terminal, one JSON object per line otherwise (journald, files, tests).

This module is imported first by the ``hostsflow`` package, so that structlog is imported
without rich (see :func:`_import_structlog_without_rich`).
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType
from typing import Any, TextIO


def _import_structlog_without_rich() -> ModuleType:
    """Import structlog with rich hidden, the first time.

    structlog imports rich (and pygments) whenever it is installed, for pretty tracebacks:
    about 5 MB of RSS in the agent, which renders JSON or plain text and never uses them.  A
    ``None`` entry in ``sys.modules`` makes ``import rich`` fail while structlog is imported;
    it is removed afterwards, so ``hostsflow top`` and modules still import rich as usual."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog


structlog = _import_structlog_without_rich()


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
