"""The HTTP client the core lends every provider plugin's remote half (docs/architecture.md, "Polling").

It owns what every provider needs, so that no plugin writes it twice: the base URL, the auth header
asked of the source's `Auth` for each request (flowforged/credentials.py: a renewable token fits),
TLS with the source's CA bundle, `ETag` / `If-None-Match` caching, rate-limit accounting through the
provider's `RateLimits` hook (flowforged/ratelimits.py: refuse to spend the last `headroom`
requests, honour `Retry-After`, never sleep an hour inside a request), pages in the provider's
`Pagination` style (flowforged/pagination.py), backoff with full jitter on 5xx and network errors,
pacing to the provider's per-minute limit (flowforged/pacer.py) and an optional requests-per-second
cap, and the figures the metrics export.

The functions at the top are pure; `ProviderClient` is the thin async part. Credentials are never in
a log line, an exception or a repr: every value the Auth sent is scrubbed from errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json as jsonlib
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from flowforged import __version__, logs
from flowforged.backoff import backoff
from flowforged.credentials import Auth, StaticAuth
from flowforged.errors import ProviderError, RateLimited
from flowforged.pacer import Pacer
from flowforged.pagination import LinkHeader, Pagination, parse_link
from flowforged.ratelimits import Budget, RateLimits, retry_after

__all__ = ["Budget", "ProviderClient", "Response", "retry_after"]  # retry_after: sinks read it from here

log = logs.get("flowforged.http")

BACKOFF_BASE = 1.0  # seconds: the first retry waits up to this, then doubling
BACKOFF_CAP = 60.0
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# A POST is repeated only on a gateway's answer or when no connection was made. A 504 can hide a
# request that did run, so a retried trigger may, rarely, start two runs.
POST_RETRY_STATUSES = frozenset({502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
OUTCOMES = ("ok", "not_modified", "rate_limited", "error")


# --- pure half ---------------------------------------------------------------------------------


def provider_message(data: Any) -> str:
    """The human message of an error body: GitHub `{"message"}`, GitLab `{"message"}` or `{"error"}`."""
    if not isinstance(data, dict):
        return ""
    message = data.get("message") or data.get("error") or ""
    if isinstance(message, dict) and isinstance(message.get("message"), str):  # {"error": {"message"}}
        return message["message"]
    if isinstance(message, dict | list):  # GitLab validation errors: {"message": {"ref": ["is missing"]}}
        return jsonlib.dumps(message, sort_keys=True)
    return str(message)


def error_for(source: str, status: int, data: Any) -> ProviderError:
    """The ProviderError for a 4xx answer that is not a rate limit."""
    message = provider_message(data)
    detail = f": {message}" if message else ""
    if status == 401:
        # Our token, not the user's request, is at fault: a gateway-side error for the API caller.
        return ProviderError(f"the API token for source {source} was rejected", status=502, code="provider_auth_failed")
    if status == 403:
        return ProviderError(f"{source}: forbidden{detail}", status=403, code="forbidden")
    if status == 404:
        return ProviderError(f"{source}: not found{detail}", status=404, code="not_found")
    if status in (409, 422):
        return ProviderError(f"{source}: conflict{detail}", status=409, code="conflict")
    return ProviderError(f"{source}: the provider answered {status}{detail}", status=502, code="provider_error")


def query_items(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Query parameters as pairs: None dropped, booleans as true/false, a list repeats its key."""
    items: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        for one in value if isinstance(value, list | tuple) else [value]:
            if one is None:
                continue
            items.append((key, ("true" if one else "false") if isinstance(one, bool) else str(one)))
    return items


def cache_key(url: str, query: list[tuple[str, str]]) -> str:
    """The key an ETag is stored under: the URL with all its query parameters, sorted."""
    parts = urlsplit(url)
    pairs = sorted([*parse_qsl(parts.query, keep_blank_values=True), *query])
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return f"{base}?{urlencode(pairs)}" if pairs else base


def same_origin(url: str, base_url: str) -> bool:
    """Whether the token may go to `url`: same scheme, host and port as the configured API."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)


def parse_body(body: bytes) -> Any:
    if not body:
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:  # an HTML error page from a proxy, say
        return None


# --- the store for ETags -------------------------------------------------------------------------


class EtagStore(Protocol):
    async def get(self, source: str, key: str) -> str | None: ...

    async def put(self, source: str, key: str, etag: str) -> None: ...


class MemoryEtags:
    """ETags kept in memory: lost at restart, which costs one full request per URL."""

    def __init__(self) -> None:
        self._etags: dict[tuple[str, str], str] = {}

    async def get(self, source: str, key: str) -> str | None:
        return self._etags.get((source, key))

    async def put(self, source: str, key: str, etag: str) -> None:
        self._etags[(source, key)] = etag


# --- the client ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    data: Any  # parsed JSON, None for an empty body, a 304 or a body that is not JSON
    not_modified: bool = False
    links: dict[str, str] = dataclasses.field(default_factory=dict)  # RFC 8288 Link: rel -> absolute URL
    url: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientStats:
    requests: Mapping[str, int]  # by outcome: ok, not_modified, rate_limited, error
    budget_remaining: int | None
    blocked_until: float | None  # epoch seconds, None when not blocked


class ProviderClient:
    """One source's access to its provider's API, over the app's shared ClientSession."""

    def __init__(
        self,
        source: str,
        base_url: str,
        auth: Auth | tuple[str, str],
        session: aiohttp.ClientSession,
        etags: EtagStore | None = None,
        *,
        pagination: Pagination | None = None,
        rate_limits: RateLimits | None = None,
        tls: ssl.SSLContext | None = None,
        headroom: int = 50,
        max_rps: float | None = None,
        points_per_minute: float | None = None,
        points: Callable[[str], int] | None = None,
        max_retries: int = 4,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        """`auth` gives the header of each request (a (name, value) pair: a static one). `pagination`
        is how pages() follows a list (Link headers by default), `rate_limits` how answers announce
        budgets (none by default), `tls` the context certificates are verified with (the system's by
        default). `clock` is wall time (rate-limit resets are epoch seconds); `monotonic` paces requests
        to `points_per_minute` (each request costing `points(method)`, 1 by default) and `max_rps`.
        `headers` are sent with every request (GitHub: Accept, X-GitHub-Api-Version)."""
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.etags: EtagStore = etags if etags is not None else MemoryEtags()
        self.auth: Auth = StaticAuth(auth[0], auth[1], auth[1].split(" ", 1)[-1]) if isinstance(auth, tuple) else auth
        self.pagination: Pagination = pagination or LinkHeader()
        self.rate_limits = rate_limits or RateLimits()
        self.headroom = headroom
        self.max_retries = max_retries
        self.last_error: str | None = None
        self._tls: ssl.SSLContext | bool = tls if tls is not None else True
        self._headers = {"User-Agent": f"flowforged/{__version__}", **(headers or {})}
        self.pacer = Pacer(points_per_minute, 60.0, max_rps=max_rps)
        self._points = points or (lambda method: 1)
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._budgets: dict[str, Budget] = {}
        self._blocked_until: float | None = None
        self._counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))

    def __repr__(self) -> str:
        return f"ProviderClient(source={self.source!r}, base_url={self.base_url!r})"

    @property
    def budget(self) -> Budget | None:
        """The core budget (GitHub's `core` resource; most providers have only one)."""
        return self._budgets.get("core")

    @property
    def stats(self) -> ClientStats:
        blocked = self._blocked_until
        return ClientStats(
            requests=dict(self._counts),
            budget_remaining=self.budget.remaining if self.budget else None,
            blocked_until=blocked if blocked is not None and blocked > self._clock() else None,
        )

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        conditional: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request; raise RateLimited without sending while the budget is spent, and
        ProviderError for an answer that is an error (after retries, for 5xx and network errors).
        `headers` are added to this request alone (Jenkins: a CSRF crumb and the session it belongs to;
        Kubernetes: the content type of a merge patch)."""
        try:
            response = await self._request(method.upper(), path_or_url, query_items(params), json, conditional, headers)
        except RateLimited as exc:
            self._counts["rate_limited"] += 1
            self.last_error = str(exc)
            raise
        except ProviderError as exc:
            self._counts["error"] += 1
            self.last_error = str(exc)
            raise
        self._counts["not_modified" if response.not_modified else "ok"] += 1
        return response

    async def get(
        self, path_or_url: str, *, params: Mapping[str, Any] | None = None, conditional: bool = False
    ) -> Response:
        return await self.request("GET", path_or_url, params=params, conditional=conditional)

    async def pages(
        self,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        conditional: bool = False,
        max_pages: int | None = None,
        pagination: Pagination | None = None,
    ) -> AsyncIterator[Response]:
        """Each page of a list, followed in the provider's pagination style (or `pagination`). Stops
        after a page that is not modified: what follows it is what was seen before."""
        style = pagination or self.pagination
        response = await self.get(path_or_url, params=params, conditional=conditional)
        count = 1
        yield response
        while not response.not_modified and (max_pages is None or count < max_pages):
            following = style.following(response, path_or_url, params)
            if following is None:
                return
            path_or_url, params = following
            response = await self.get(path_or_url, params=params, conditional=conditional)
            count += 1
            yield response

    # --- internals ---

    async def _request(
        self,
        method: str,
        path_or_url: str,
        query: list[tuple[str, str]],
        body: Any,
        conditional: bool,
        extra: Mapping[str, str] | None = None,
    ) -> Response:
        url = self._resolve(path_or_url)
        key = cache_key(url, query)
        headers = {**self._headers, **(extra or {})}
        conditional = conditional and method == "GET"
        if conditional and (etag := await self.etags.get(self.source, key)):
            headers["If-None-Match"] = etag
        status, reply, raw, final_url = await self._send(method, url, query, body, headers)
        if status == 401 and self.auth.rejected():
            # A renewable credential expired early or was revoked: one more try with a new one.
            status, reply, raw, final_url = await self._send(method, url, query, body, headers)
        data = parse_body(raw)
        if status == 304:
            # GitHub: "Making a conditional request does not count against your primary rate limit if
            # a 304 response is returned". https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api
            return self._response(status, reply, None, final_url, not_modified=True)
        if 200 <= status < 300:
            if conditional and (etag := reply.get("ETag")):
                await self.etags.put(self.source, key, etag)
            return self._response(status, reply, data, final_url)
        if self.rate_limits.limited(status, reply, data):
            self._blocked_until = self._clock() + self.rate_limits.block_seconds(reply, self._clock())
            raise self._limited(self._blocked_until, f"the provider answered {status}")
        raise self._clean(error_for(self.source, status, data))

    @staticmethod
    def _response(
        status: int, headers: CIMultiDictProxy[str], data: Any, url: str, not_modified: bool = False
    ) -> Response:
        links = parse_link(headers.get("Link"))
        return Response(status, headers, data, not_modified=not_modified, links=links, url=url)

    def _resolve(self, path_or_url: str) -> str:
        if "://" not in path_or_url:
            return f"{self.base_url}/{path_or_url.lstrip('/')}"
        if not same_origin(path_or_url, self.base_url):
            # A Link or Location header pointing elsewhere must not receive the credentials.
            host = urlsplit(path_or_url).netloc
            raise ProviderError(
                f"{self.source}: refusing to send the API token to {host}, not the configured API host",
                status=502,
                code="provider_error",
            )
        return path_or_url

    def _refuse_while_limited(self, url: str) -> None:
        now = self._clock()
        if self._blocked_until is not None and now < self._blocked_until:
            raise self._limited(self._blocked_until, "blocked after a rate-limit answer")
        path = urlsplit(url).path.removeprefix(urlsplit(self.base_url).path.rstrip("/"))
        budget = self._budgets.get(self.rate_limits.resource(path))
        if budget is not None and budget.spent(self.headroom, now):
            reason = (
                f"{budget.remaining} of {budget.limit} {budget.resource} requests left, "
                f"{budget.reserve(self.headroom)} kept in reserve"
            )
            raise self._limited(budget.reset_at or now, reason)

    def _limited(self, until: float, reason: str) -> RateLimited:
        wait = max(until - self._clock(), 0.0)
        log.warning("provider rate limited", source=self.source, retry_after=round(wait, 1), reason=reason)
        return RateLimited(f"{self.source}: rate limited ({reason}); retry in {wait:.0f}s", retry_after=wait)

    async def _send(
        self, method: str, url: str, query: list[tuple[str, str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, CIMultiDictProxy[str], bytes, str]:
        """The exchange, retried with backoff on 5xx and network errors where that is safe."""
        last = "no answer"
        for attempt in range(self.max_retries + 1):
            self._refuse_while_limited(url)
            try:
                status, reply, raw, final_url = await self._exchange(method, url, query, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                safe = method in IDEMPOTENT or isinstance(exc, aiohttp.ClientConnectorError)
            else:
                if status < 500:
                    return status, reply, raw, final_url
                last = f"HTTP {status}"
                safe = method in IDEMPOTENT or status in POST_RETRY_STATUSES
            if not safe or attempt == self.max_retries:
                break
            delay = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, self._rng.random)
            log.debug("provider retry", source=self.source, method=method, last=self._scrub(last), delay=delay)
            await self._sleep(delay)
        tries = attempt + 1
        raise self._clean(
            ProviderError(
                f"{self.source}: the provider API is unavailable ({last} after {tries} "
                f"attempt{'s' if tries > 1 else ''}, {method} {urlsplit(url).path})",
                status=502,
                code="provider_unavailable",
            )
        )

    async def _exchange(
        self, method: str, url: str, query: list[tuple[str, str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, CIMultiDictProxy[str], bytes, str]:
        """One request, following redirects only to the configured host (aiohttp would carry a
        custom auth header like PRIVATE-TOKEN to any host)."""
        for _ in range(MAX_REDIRECTS + 1):
            await self._pace(method)
            credential = await self.auth.header()
            sent = {**headers, credential[0]: credential[1]} if credential else headers
            async with self.session.request(
                method, url, params=query or None, json=body, headers=sent, allow_redirects=False, ssl=self._tls
            ) as resp:
                raw = await resp.read()
                status, reply, final_url = (
                    resp.status,
                    CIMultiDictProxy(CIMultiDict(resp.headers)),
                    str(resp.url),
                )
            self._observe(reply)
            log.debug(
                "provider request",
                source=self.source,
                method=method,
                path=urlsplit(url).path,
                status=status,
                remaining=self.budget.remaining if self.budget else None,
            )
            location = reply.get("Location")
            if status not in REDIRECTS or not location:
                return status, reply, raw, final_url
            url, query = self._resolve(urljoin(final_url, location)), []
            # RFC 9110 15.4.2-3: after a POST, a 301 or 302 is followed with a GET, as every user agent
            # does (Jenkins answers a POST .../stop with 302 to the build's page).
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise ProviderError(f"{self.source}: too many redirects", status=502, code="provider_error")

    async def _pace(self, method: str) -> None:
        """Wait for the moment the pacer gives this request: redirects and retries are requests too."""
        if not self.pacer.active:
            return
        now = self._monotonic()
        start = self.pacer.reserve(self._points(method), now)
        if start > now:
            await self._sleep(start - now)

    def _observe(self, headers: CIMultiDictProxy[str]) -> None:
        budget = self.rate_limits.budget(headers, self._clock())
        if budget is None:
            return
        previous = self._budgets.get(budget.resource)
        if previous and previous.reset_at == budget.reset_at and previous.remaining < budget.remaining:
            # Concurrent answers arrive out of order; within one window the lowest count is current.
            budget = dataclasses.replace(budget, remaining=previous.remaining)
        self._budgets[budget.resource] = budget

    def _scrub(self, text: str) -> str:
        for secret in self.auth.secrets():
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _clean(self, error: ProviderError) -> ProviderError:
        """The provider's message is echoed in errors: make sure it cannot echo a credential back."""
        text = str(error)
        scrubbed = self._scrub(text)
        return error if scrubbed == text else ProviderError(scrubbed, status=error.status, code=error.code)
