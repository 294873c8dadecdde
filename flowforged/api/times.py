"""Times as the control API shows them: null or RFC 3339 in UTC (`2024-01-02T10:05:00Z`), whatever
the store holds (epoch seconds from the outbox, ISO 8601 strings from the providers)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from flowforged import model


def parse_time(value: Any) -> datetime | None:
    """A stored time as a UTC datetime: epoch seconds (as a number, or as text in a TEXT column), or
    what a provider wrote (flowforged.model.parse_time reads those). What cannot be read as a time is
    unknown (None) rather than a malformed time in an answer."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*", value):
        value = float(value)
    try:
        if isinstance(value, float | int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC) if math.isfinite(value) else None
        if isinstance(value, str):
            text = model.parse_time(value)
            return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        pass
    return None


def rfc3339(moment: datetime | None) -> str | None:
    """Whole seconds with a Z, as the store writes times (isoformat: four-digit years, unlike %Y)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def timestamp(value: Any) -> str | None:
    """Any stored time (epoch seconds, ISO 8601) as the API shows it."""
    return rfc3339(parse_time(value))


Time = Annotated[
    datetime | None,
    BeforeValidator(parse_time),
    PlainSerializer(rfc3339),
    WithJsonSchema({"type": ["string", "null"], "format": "date-time"}),
]
