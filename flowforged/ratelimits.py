"""Reading a provider's rate limits from its answers: the hook each provider plugin fills in.

The client (`flowforged/http.py`) asks the source's `RateLimits` which budget an answer announces,
whether an error answer is a rate limit, which budget a request spends and how long to send nothing
after a refusal. The core knows header families, not providers: the IETF draft's `RateLimit-*`
(with a prefix, so that a second budget such as `RateLimit-User-*` reads the same way), the
`X-RateLimit-*` family most REST APIs send, and the tightest of several budgets. A provider picks one
in its `RemoteAPI` declaration, or subclasses one for what is its own (GitHub's 403 rate limits and
its search budget are in plugins/github/remote.py). Everything here is pure: time is passed in.
"""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

# Without Retry-After or a spent budget's reset, how long to wait after a rate-limit answer. GitHub:
# "wait for at least one minute before retrying"; no provider asks for less.
# https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit
DEFAULT_BLOCK = 60.0
# A reset below this is seconds from now (the IETF draft, Buildkite), above it an epoch time (GitLab).
EPOCH_THRESHOLD = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """What is left of a rate-limit window, as the provider's last answer told it."""

    limit: int | None
    remaining: int
    reset_at: float | None  # epoch seconds
    resource: str = "core"

    def reserve(self, headroom: int) -> int:
        # Keeping 50 of a 60-request budget (GitHub unauthenticated, 30/min search) would leave it
        # almost unusable: the reserve is at most a quarter of the limit.
        return min(headroom, self.limit // 4) if self.limit is not None else headroom

    def spent(self, headroom: int, now: float) -> bool:
        """No more requests until the reset: only the reserve is left and the window is still open."""
        if self.reset_at is None or self.reset_at <= now:
            return False
        return self.remaining <= self.reserve(headroom)


def header_map(headers: Mapping[str, str]) -> CIMultiDict[str] | CIMultiDictProxy[str]:
    """Headers looked up without regard to case, as HTTP has them."""
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        return headers
    return CIMultiDict(headers)


def integer(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """`Retry-After` in seconds from `now`: delay-seconds or an HTTP-date (RFC 9110, section 10.2.3)."""
    value = header_map(headers).get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


class RateLimits:
    """A provider that announces no budget (Jenkins): only a 429 is a rate limit. Subclasses read
    headers; a provider subclasses one of them for what only it does."""

    def budget(self, headers: Mapping[str, str], now: float) -> Budget | None:
        """The budget an answer announces, None when it announces none."""
        return None

    def limited(self, status: int, headers: Mapping[str, str], data: Any) -> bool:
        """Whether an error answer is a rate limit rather than a refusal of the request itself."""
        return status == 429

    def resource(self, path: str) -> str:
        """Which budget a request to `path` (below the API's root) spends: most APIs have one."""
        return "core"

    def block_seconds(self, headers: Mapping[str, str], now: float) -> float:
        """How long to send nothing after a rate-limit answer: Retry-After, else the reset of a spent
        budget, else DEFAULT_BLOCK."""
        after = retry_after(headers, now)
        if after is not None:
            return after
        budget = self.budget(headers, now)
        if budget is not None and budget.remaining == 0 and budget.reset_at is not None:
            return max(budget.reset_at - now, 0.0)
        return DEFAULT_BLOCK


class RateLimitHeaders(RateLimits):
    """`{prefix}Limit`, `-Remaining` (or `-Observed`, what was used), `-Reset` (seconds from now as
    the IETF draft has it, or an epoch time): GitLab (`RateLimit-`), Buildkite (`RateLimit-` and
    `RateLimit-User-`), and the IETF draft (draft-ietf-httpapi-ratelimit-headers)."""

    def __init__(self, prefix: str = "RateLimit-", resource: str = "core") -> None:
        self.prefix = prefix
        self.name = resource

    def budget(self, headers: Mapping[str, str], now: float) -> Budget | None:
        h = header_map(headers)
        limit = integer(h.get(f"{self.prefix}Limit"))
        remaining = integer(h.get(f"{self.prefix}Remaining"))
        if remaining is None:
            observed = integer(h.get(f"{self.prefix}Observed"))
            if observed is None or limit is None:
                return None
            remaining = max(limit - observed, 0)
        reset = integer(h.get(f"{self.prefix}Reset"))
        if reset is not None and reset < EPOCH_THRESHOLD:
            reset = int(now) + reset
        return Budget(limit, remaining, float(reset) if reset is not None else None, self.name)


class XRateLimitHeaders(RateLimits):
    """`X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds) and, where the API has several
    budgets, `-Resource`: GitHub's family, which many REST APIs copy."""

    def budget(self, headers: Mapping[str, str], now: float) -> Budget | None:
        h = header_map(headers)
        remaining = integer(h.get("x-ratelimit-remaining"))
        if remaining is None:
            return None
        reset = integer(h.get("x-ratelimit-reset"))
        return Budget(
            limit=integer(h.get("x-ratelimit-limit")),
            remaining=remaining,
            reset_at=float(reset) if reset is not None else None,
            resource=h.get("x-ratelimit-resource") or "core",
        )


class Tightest(RateLimits):
    """Several budgets announced side by side, of which a 429 comes from whichever runs out first:
    the one with the fewest requests left is the one to count."""

    def __init__(self, *readers: RateLimits) -> None:
        self.readers = readers

    def budget(self, headers: Mapping[str, str], now: float) -> Budget | None:
        found = [b for b in (r.budget(headers, now) for r in self.readers) if b is not None]
        return min(found, key=lambda b: b.remaining) if found else None
