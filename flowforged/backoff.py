"""The one backoff of the daemon: a retry of a provider request (flowforged/http.py) and of a
notification (flowforged/dispatch.py) waits the same way."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter, uniform in [0, min(cap, base * 2**attempt)) (AWS
    Architecture Blog, "Exponential Backoff and Jitter"): retries of many clients spread out."""
    return rng() * min(cap, base * 2**attempt)
