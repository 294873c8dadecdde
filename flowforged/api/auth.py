"""What stops a client from guessing the bearer token of /api/v1 (flowforged.api.base.authenticate).

A client address that sends `LIMIT` wrong tokens within `WINDOW` seconds is refused with 429 and
Retry-After until that window ends, without its token even being compared. One warning is logged
per burst of failures from an address (its first), not one per attempt: a guesser cannot flood the log.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

LIMIT = 10
WINDOW = 60.0
ADDRESSES = 4096  # failures are remembered for this many addresses at most


@dataclasses.dataclass
class _Burst:
    started: float
    failures: int = 0


class FailedTokens:
    """Wrong tokens by client address, in fixed windows that start at an address's first failure."""

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        addresses: int = ADDRESSES,
    ):
        self.limit, self.window, self.clock, self.addresses = limit, window, clock, addresses
        self._bursts: collections.OrderedDict[str, _Burst] = collections.OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None if it may now."""
        burst = self._bursts.get(address)
        if burst is None or burst.failures < self.limit:
            return None
        left = burst.started + self.window - self.clock()
        if left <= 0:
            del self._bursts[address]
            return None
        return left

    def failed(self, address: str) -> int | None:
        """Count a wrong token; at the first of a burst, the failures of the previous one (0 if none)."""
        now = self.clock()
        burst = self._bursts.get(address)
        previous = None
        if burst is None or now - burst.started >= self.window:
            previous = burst.failures if burst is not None else 0
            self._forget(now)
            burst = self._bursts[address] = _Burst(now)
        self._bursts.move_to_end(address)
        burst.failures += 1
        return previous

    def _forget(self, now: float) -> None:
        """Room for one more address: the ended windows go first, then the oldest."""
        if len(self._bursts) < self.addresses:
            return
        for address in [a for a, b in self._bursts.items() if now - b.started >= self.window]:
            del self._bursts[address]
        while len(self._bursts) >= self.addresses:
            self._bursts.popitem(last=False)
