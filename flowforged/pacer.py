"""Pacing a source's requests so that no window of the provider's rate limit is ever overrun.

Providers limit requests per minute as well as per hour: GitHub's secondary limit allows 900 points a
minute for REST endpoints, 304s included (a GET is 1 point, a POST, PATCH, PUT or DELETE 5), GitLab.com
2,000 authenticated API requests a minute per user, Buildkite 200 a minute per organization (the
figures and their sources are in README.md, "Polling"). A poller that sends as fast as answers come
back overruns them with a thousand repositories.

`Pacer` is pure (time is passed in): each request reserves the moment it may start. A token bucket
spreads starts at the window's rate, with a small burst so that a handful of requests never waits;
a log of the starts in the last window then holds every window of `window` seconds, wherever it
begins, to `limit` points. Reservations are made in order on the event loop, so concurrent requests
each get their own moment.
"""

from __future__ import annotations

import collections
import math

BURST = 0.05  # of a window's points, spendable at once: 45 of GitHub's 900


class Pacer:
    """At most `limit` points in any `window` seconds, spread out; at most `max_rps` starts a second."""

    def __init__(
        self,
        limit: float | None = None,
        window: float = 60.0,
        *,
        max_rps: float | None = None,
        burst: float | None = None,
    ) -> None:
        if limit is not None and limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.window = window
        self.max_rps = max_rps
        self._spacing = 1.0 / max_rps if max_rps else 0.0
        self._rate = limit / window if limit else 0.0  # points a second
        self._capacity = max(1.0, limit * BURST if burst is None else burst) if limit else 0.0
        self._tokens = self._capacity
        self._filled_at: float | None = None
        self._log: collections.deque[tuple[float, float]] = collections.deque()  # (start, points)
        self._in_window = 0.0
        self._last_start = -math.inf

    @property
    def active(self) -> bool:
        return bool(self.limit or self._spacing)

    def points_per_second(self) -> float | None:
        """The sustained rate this pacer allows, in points a second; None when it allows any."""
        rates = [r for r in (self._rate, self.max_rps) if r]
        return min(rates) if rates else None

    def seconds_for(self, points: float) -> float:
        """How long `points` take at the sustained rate, from an empty window (0 when not paced)."""
        rate = self.points_per_second()
        return points / rate if rate else 0.0

    def reserve(self, points: float, now: float) -> float:
        """The moment (>= now) a request costing `points` may start; it is counted as spent then."""
        start = max(now, self._last_start + self._spacing)
        if self.limit:
            points = min(points, self.limit)  # a request worth more than a window goes alone in one
            start = self._fit_bucket(start, points)
            start = self._fit_window(start, points)
            self._tokens = self._tokens_at(start) - points
            self._filled_at = start
            self._log.append((start, points))
            self._in_window += points
        self._last_start = start
        return start

    def _tokens_at(self, when: float) -> float:
        if self._filled_at is None:
            return self._capacity
        return min(self._capacity, self._tokens + (when - self._filled_at) * self._rate)

    def _fit_bucket(self, start: float, points: float) -> float:
        missing = points - self._tokens_at(start)
        return start + missing / self._rate if missing > 0 else start

    def _fit_window(self, start: float, points: float) -> float:
        """The first moment from `start` at which the starts of the window ending there, and this one,
        come to at most `limit`. Starts only grow, so what leaves the window now never comes back."""
        assert self.limit is not None
        while True:
            while self._log and self._log[0][0] + self.window <= start:
                self._in_window -= self._log.popleft()[1]
            if self._in_window + points <= self.limit + 1e-9:
                return start
            start = self._log[0][0] + self.window
