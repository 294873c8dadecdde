"""structlog JSON logs on stdout, with the standard library (aiohttp, APScheduler) routed through it.

Every resolved secret is registered with `redact()`; the last step of every log line replaces each one
with `[redacted]`, whatever field, message or traceback it ended up in. Tracebacks never carry local
variables (`show_locals=False`), which is where tokens would otherwise leak.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
REDACTED = "[redacted]"


def redact(value: str) -> None:
    """Never let `value` appear in a log line. Very short values would redact ordinary words."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _scrub(text: str) -> str:
    for value in _secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class _RedactingJSON:
    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer(sort_keys=False)

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        return _scrub(self._render(logger, name, event))


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library. Safe to call more than once (tests do)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            _RedactingJSON(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per webhook: useful at debug, noise at info.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
