"""Fake provider servers for tests: the base a plugin's fake API is built on (docs/plugins.md).

A fake is an aiohttp application that behaves as the provider documents: a subclass of
`FakeProviderAPI` adds the provider's routes (`add_routes`) and, where they differ from the defaults,
its words (`authorized`, `unauthorized`, `rate_headers`, `limit_exceeded`, `error`). The base records
every request (without its credential headers), refuses a wrong credential, counts a rate-limit
budget and a per-minute limit, answers ETags and 304s, plays scripted faults (`fail_next`,
`retry_after_next`, `stall`), and helps page a list in each style the core follows: `links()` for
Link headers, `next_url()` for a `next` URL in the body, `continue_token()` for Kubernetes.

    class FakeAcme(FakeProviderAPI):
        def add_routes(self, router):
            router.add_get("/builds", self.list_builds)
    fake = FakeAcme("token", rate_limit=1000, window=3600)
    server = await aiohttp_server(fake.app)  # pytest-aiohttp
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, MultiDict


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # as sent, percent-encoding kept
    query: MultiDict[str]
    headers: CIMultiDict[str]  # without the credential headers
    json: Any
    status: int | None = None  # what the fake answered
    at: float = 0.0  # the fake's clock when it arrived


@dataclasses.dataclass(frozen=True)
class Fault:
    status: int
    body: Any
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What the daemon answered to a webhook the fake sent."""

    delivery_id: str
    status: int
    body: bytes


async def json_body(request: web.Request) -> Any:
    raw = await request.read()  # cached: the request log has read it already
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def weak_etag(body: bytes) -> str:
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: If-None-Match uses the weak comparison (the W/ prefix does not matter)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def page_of(items: list[Any], page: int, per_page: int) -> tuple[list[Any], int]:
    """One page of a list (pages count from 1) and the number of the last page (at least 1)."""
    last = max((len(items) + per_page - 1) // per_page, 1)
    return items[(page - 1) * per_page : page * per_page], last


def int_param(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        value = default
    value = max(value, 1)
    return min(value, maximum) if maximum else value


class FakeProviderAPI:
    """Request log, auth, faults, rate limit and ETags; subclasses add routes and the provider's words."""

    credential_headers: tuple[str, ...] = ("Authorization",)
    not_modified_counts = False  # whether a 304 spends a request of the budget

    def __init__(
        self,
        token: str,
        *,
        rate_limit: int,
        window: float,
        clock: Callable[[], float] = time.time,
        per_minute: int | None = None,
        minute: float = 60.0,
    ) -> None:
        """`per_minute`: the provider's per-minute limit in points (GitHub's secondary limit, GitLab's
        requests a minute), every request counted, 304s and refusals too, in any window of `minute`
        seconds (shorter in a test); None: not enforced, still counted."""
        self.token = token
        self.clock = clock
        self.rate_limit = rate_limit
        self.window = window
        self.remaining = rate_limit
        self.reset_at = int(clock() + window)
        self.requests: list[RecordedRequest] = []
        # While set and not yet set free, every answer waits for it: a request in flight, for tests
        # of what happens to it (a shutdown, a timeout).
        self.stall: asyncio.Event | None = None
        self.faults: collections.deque[Fault] = collections.deque()
        self.per_minute = per_minute
        self.minute = minute
        self.charged = 0  # requests counted against the budget, all windows together
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (at, points), last minute

    @functools.cached_property
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        self.add_routes(app.router)
        return app

    def add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    # --- scripting ---

    def fail_next(self, n: int = 1, status: int = 500, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """The next `n` requests (after auth) get this answer instead of the real one."""
        default = {"message": "Server Error"} if status >= 500 else {"message": "error"}
        for _ in range(n):
            self.faults.append(Fault(status, default if body is None else body, dict(headers or {})))

    def set_rate_limit(
        self, *, remaining: int | None = None, limit: int | None = None, reset_at: float | None = None
    ) -> None:
        if limit is not None:
            self.rate_limit = limit
        if remaining is not None:
            self.remaining = remaining
        if reset_at is not None:
            self.reset_at = int(reset_at)

    def exhaust(self, reset_in: float = 3600) -> None:
        """Spend the whole budget; it comes back `reset_in` seconds from now."""
        self.set_rate_limit(remaining=0, reset_at=self.clock() + reset_in)

    @property
    def used(self) -> int:
        return self.rate_limit - self.remaining

    # --- the per-minute limit ---

    def points(self, method: str) -> int:
        """What a request counts against the per-minute limit (1; GitHub weighs writes more)."""
        return 1

    def over_minute(self, request: web.Request) -> bool:
        """Count the request in the sliding minute; whether it goes over the per-minute limit."""
        now, cost = self.clock(), self.points(request.method)
        while self._recent and self._recent[0][0] + self.minute <= now:
            self._recent.popleft()
        self._recent.append((now, cost))
        return self.per_minute is not None and sum(p for _, p in self._recent) > self.per_minute

    def minute_exceeded(self) -> web.Response:
        return web.json_response({"message": "Retry later"}, status=429, headers={"Retry-After": "60"})

    def max_points_per_minute(self, since: int = 0) -> int:
        """The most points the requests from `since` (an index in `requests`) spent in any window
        of `minute` seconds, wherever it starts."""
        log = [(r.at, self.points(r.method)) for r in self.requests[since:]]
        best = total = 0
        first = 0
        for at, cost in log:  # in arrival order: the clock never goes back
            total += cost
            while log[first][0] + self.minute <= at:
                total -= log[first][1]
                first += 1
            best = max(best, total)
        return best

    def points_per_window(self, start: float, windows: int, since: int = 0) -> list[int]:
        """Points spent in each of `windows` consecutive windows of `minute` seconds from `start`."""
        counts = [0] * windows
        for r in self.requests[since:]:
            n = int((r.at - start) // self.minute)
            if 0 <= n < windows:
                counts[n] += self.points(r.method)
        return counts

    def retry_after_next(self, n: int = 1, seconds: int = 60, status: int = 429) -> None:
        """The next `n` requests are refused as over a rate limit, with Retry-After (RFC 9110 10.2.3)."""
        self.fail_next(n, status, {"message": "rate limit exceeded"}, {"Retry-After": str(seconds)})

    # --- hooks for the provider: what it says, where it differs from these defaults ---

    def authorized(self, request: web.Request) -> bool:
        """Bearer authentication with `token` (RFC 6750)."""
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def unauthorized(self) -> web.Response:
        return web.json_response({"message": "Unauthorized"}, status=401)

    def limit_exceeded(self) -> web.Response:
        """The answer once the budget is spent: 429, Retry-After until the reset, the budget's headers."""
        wait = max(int(self.reset_at - self.clock()), 0)
        response = web.json_response({"message": "rate limit exceeded"}, status=429)
        response.headers.update({"Retry-After": str(wait), **self.rate_headers()})
        return response

    def rate_headers(self) -> dict[str, str]:
        """The budget on every answer: the IETF draft's RateLimit-* (reset in seconds from now)."""
        return {
            "RateLimit-Limit": str(self.rate_limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(max(int(self.reset_at - self.clock()), 0)),
        }

    def error(self, status: int, message: Any) -> web.Response:
        return web.json_response({"message": message}, status=status)

    def body(self, request: web.Request, data: Any, status: int = 200, headers: Any = None) -> web.Response:
        return web.json_response(data, status=status, headers=headers)

    # --- the request path ---

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        await self._record(request)
        index = len(self.requests) - 1
        response = await self._answer(request, handler)
        self.requests[index] = dataclasses.replace(self.requests[index], status=response.status)
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.stall is not None:
            await self.stall.wait()
        if not self.authorized(request):
            return self.unauthorized()
        if self.over_minute(request):
            return self.minute_exceeded()
        if self.clock() >= self.reset_at:
            self.remaining, self.reset_at = self.rate_limit, int(self.clock() + self.window)
        if self.faults:
            fault = self.faults.popleft()
            response = web.json_response(fault.body, status=fault.status, headers=fault.headers)
            response.headers.update(self.rate_headers())
            return response
        if self.remaining <= 0:
            return self.limit_exceeded()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # an unknown route or method
            response = self.error(exc.status, exc.reason)
        if request.method == "GET" and response.status == 200 and isinstance(response, web.Response):
            etag = weak_etag(response.body or b"")  # type: ignore[arg-type]
            if etag_matches(request.headers.get("If-None-Match"), etag):
                response = web.Response(status=304, headers={"ETag": etag})
            else:
                response.headers["ETag"] = etag
        if response.status != 304 or self.not_modified_counts:
            self.remaining = max(self.remaining - 1, 0)
            self.charged += 1
        response.headers.update(self.rate_headers())
        return response

    async def _record(self, request: web.Request) -> None:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = CIMultiDict(request.headers)
        for name in self.credential_headers:
            headers.popall(name, None)
        self.requests.append(
            RecordedRequest(
                request.method, request.raw_path.split("?")[0], MultiDict(request.query), headers, body, at=self.clock()
            )
        )

    def links(self, request: web.Request, page: int, last: int, always_first_last: bool) -> str | None:
        """An RFC 8288 Link header on the fake's own host (GitHub omits first/prev on the first page and
        next/last on the last one; GitLab always sends first and last)."""
        url = request.url
        rels: list[tuple[str, int]] = []
        if page < last:
            rels.append(("next", page + 1))
        if page < last or always_first_last:
            rels.append(("last", last))
        if page > 1 or always_first_last:
            rels.append(("first", 1))
        if page > 1:
            rels.append(("prev", page - 1))
        if not rels:
            return None
        return ", ".join(f'<{url.update_query(page=str(n))}>; rel="{rel}"' for rel, n in rels)

    def next_url(self, request: web.Request, page: int, last: int) -> str | None:
        """The absolute URL of the next page, for a body's `next` field (NextInBody); None on the last."""
        return str(request.url.update_query(page=str(page + 1))) if page < last else None


def continue_token(offset: int, total: int) -> str:
    """A Kubernetes-style `continue` token for a list cut at `offset`; "" once nothing is left. Opaque
    to the client: it must send it back as it is."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode() if offset < total else ""


def continue_offset(token: str | None) -> int:
    """The offset a `continue` token names (0 without one); ValueError for a token it never gave."""
    if not token:
        return 0
    return int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
