"""structlog JSON logs on stdout, with the standard library (aiohttp, APScheduler) routed through it.

Every resolved secret is registered with `redact()`; the step before rendering replaces each one with
`[redacted]` in every value of the event (message, fields, nested values, the traceback's text). It
works on the values, not on the rendered line: JSON escapes `"`, `\\` and non-ASCII characters, so a
secret holding one would no longer match once rendered. Tracebacks never carry local variables
(`show_locals=False`), which is where tokens would otherwise leak.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_secrets: list[str] = []  # longest first, so that a secret inside another goes with it
REDACTED = "[redacted]"


def redact(value: str) -> None:
    """Never let `value` appear in a log line. Very short values would redact ordinary words."""
    if not value or len(value) < 4:
        return
    # Also as repr() shows it (escaped backslashes and quotes): a KeyError, a dict or a `!r` in a
    # message carries that form.
    for form in (value, repr(value)[1:-1]):
        if form not in _secrets:
            _secrets.append(form)
    _secrets.sort(key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `[redacted]`."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item) for item in value]
    # What the JSON renderer would do with any other object, done here so that its text is cleaned.
    return scrub(repr(value))


def _redact(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    return _clean(event) if _secrets else event


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
            _redact,
            structlog.processors.JSONRenderer(sort_keys=False),
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
