"""What every `/api/v1` handler shares: the Operations seam, the error hierarchy, the middleware that
authenticates and turns every failure into `{"error": {"code", "message"}}`, query and body parsing,
and answers serialized through their models (flowforged.api.schemas).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import pydantic
from aiohttp import web

from flowforged import logs
from flowforged.api.auth import FailedTokens
from flowforged.api.bodies import Request
from flowforged.api.schemas import Response
from flowforged.bus import Bus, Message
from flowforged.config import Config
from flowforged.errors import FlowForgeError, ProviderError, RateLimited, StoreUnavailable
from flowforged.store import Store

log = logs.get("flowforged.api")
PREFIX = "/api/v1"
OPENAPI_PATH = f"{PREFIX}/openapi.json"  # served without a token: it describes the API, holds no data
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id, cursor or `after` names nothing
CHALLENGE = 'Bearer realm="flowforged"'


class Operations(Protocol):
    """What the API asks of the providers (the daemon implements it over the poller's clients).

    Failures are raised as ProviderError (status, code, message go to the caller as they are) or
    RateLimited (503 with Retry-After).
    """

    async def trigger(
        self, source: str, pipeline: str, ref: str, inputs: Mapping[str, Any], variables: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """Start a run; return it (run-object field names, any subset) if the provider tells which it is."""
        ...

    async def rerun(self, run: dict[str, Any], failed_only: bool | None) -> object:
        """Re-run a run (a run object); what it returns is not used."""
        ...

    async def cancel(self, run: dict[str, Any], force: bool) -> object:
        """Cancel a run (a run object); what it returns is not used."""
        ...

    def sources_status(self) -> dict[str, dict[str, Any]]:
        """Per source: last_poll_at, last_ok_at, last_error, next_poll_at, rate_limit_remaining,
        rate_limited_until, requests ({outcome: count}); any key may be missing."""
        ...


@dataclasses.dataclass
class Context:
    config: Config
    store: Store
    bus: Bus
    operations: Operations
    wake_dispatcher: Callable[[], None]
    keepalive: float
    streams: set[asyncio.Queue[Message]] = dataclasses.field(default_factory=set)  # open SSE
    failed_tokens: FailedTokens = dataclasses.field(default_factory=FailedTokens)


CONTEXT = web.AppKey("api", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


# --- errors ---------------------------------------------------------------------------------------


class ApiError(FlowForgeError):
    """An answer other than success, with the status and code the caller sees."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code or self.code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.code, str(self), self.headers)


class BadRequest(ApiError):
    status, code = 400, "invalid_parameter"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unprocessable(ApiError):
    """A request its schema allows but that cannot be done: an option the source's provider does not
    have, a silence that would end in the past."""

    status, code = 422, "not_supported"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


def bad_parameter(name: str, problem: str) -> BadRequest:
    return BadRequest(f"{name}: {problem}")


def bad_body(name: str, problem: str) -> BadRequest:
    return BadRequest(f"{name}: {problem}", code="invalid_body")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


# --- middleware -----------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The bearer token, then JSON errors for everything that can go wrong."""
    try:
        if request.path != OPENAPI_PATH:
            authenticate(request)
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except ProviderError as exc:
        status = exc.status if 400 <= exc.status <= 599 else 502
        log.warning("provider operation failed", path=request.path, status=status, code=exc.code, error=str(exc))
        return error_response(status, exc.code, str(exc))
    except RateLimited as exc:
        wait = max(int(exc.retry_after + 0.999), 1)
        return error_response(503, "rate_limited", str(exc), {"Retry-After": str(wait)})
    except StoreUnavailable as exc:
        log.error("api request failed: the store cannot commit", path=request.path, error=str(exc))
        return error_response(503, "store_unavailable", "the event log cannot commit; retry later")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The router's own 404 and 405 (with its Allow header), or a body over the size limit.
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code, message = {
            404: ("not_found", f"no such path: the paths are in {OPENAPI_PATH}"),
            405: ("method_not_allowed", f"{request.method} is not allowed here (allowed: {headers.get('Allow')})"),
            413: ("too_large", "the body is over the size limit"),
        }.get(exc.status, ("http_error", exc.reason))
        return error_response(exc.status, code, message, headers)
    except Exception:
        # The one place nothing else caught it: logged with its traceback, never sent to the caller.
        log.exception("api request failed", method=request.method, path=request.path)
        return error_response(500, "internal", "internal error; the daemon's log has the details")


def authenticate(request: web.Request) -> None:
    ctx = context(request)
    if ctx.config.api.token is None:
        # A daemon may run for webhooks and metrics only: the API stays off until a token is set.
        raise Unavailable("set api.token in the config", code="api_disabled")
    address = request.remote or "unknown"
    wait = ctx.failed_tokens.retry_after(address)
    if wait is not None:  # refused before comparing: a guesser learns nothing more for a while
        raise TooManyRequests(
            "too many requests with a wrong bearer token from this address; retry later",
            headers={"Retry-After": str(max(math.ceil(wait), 1))},
        )
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized(
            "an Authorization: Bearer <token> header is required", headers={"WWW-Authenticate": CHALLENGE}
        )
    if not hmac.compare_digest(given.strip().encode(), ctx.config.api.token.get().encode()):
        previous = ctx.failed_tokens.failed(address)
        if previous is not None:
            log.warning(
                "api request with a wrong bearer token; more from this address are not logged until the burst ends",
                remote=address,
                path=request.path,
                limit=ctx.failed_tokens.limit,
                window_seconds=ctx.failed_tokens.window,
                previous_burst_failures=previous,
            )
        raise Unauthorized(
            "the bearer token is not valid", headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'}
        )


# --- query parameters -----------------------------------------------------------------------------


class Query:
    """The query string of one request, checked against the parameters its endpoint documents."""

    def __init__(self, request: web.Request, *names: str):
        for name in request.query:
            if name not in names:
                expected = ", ".join(names) if names else "none"
                raise bad_parameter(name, f"unknown parameter (this endpoint takes: {expected})")
        self._query = request.query

    def text(self, name: str) -> str | None:
        values = self._query.getall(name, [])
        if len(values) > 1:
            raise bad_parameter(name, "given more than once")
        return values[0] if values else None

    def choice(self, name: str, choices: Iterable[str]) -> str | None:
        value = self.text(name)
        choices = tuple(choices)
        if value is not None and value not in choices:
            raise bad_parameter(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, name: str, *, minimum: int = 0, maximum: int = MAX_ID) -> int | None:
        value = self.text(name)
        return None if value is None else bounded_integer(name, value, minimum, maximum)

    def boolean(self, name: str) -> bool:
        value = self.choice(name, ("true", "false"))
        return value == "true"

    def limit(self) -> int:
        limit = self.integer("limit", minimum=1, maximum=MAX_LIMIT)
        return DEFAULT_LIMIT if limit is None else limit

    def cursor(self, *kinds: str) -> tuple[str, int] | None:
        """The (kind, last id) of a `cursor` this API gave out for one of these lists."""
        value = self.text("cursor")
        return None if value is None else decode_cursor(kinds, value)


def path_id(request: web.Request, name: str = "id") -> int:
    return bounded_integer(name, request.match_info[name], 0, MAX_ID)


def bounded_integer(name: str, value: str, minimum: int, maximum: int) -> int:
    # Length first: int() refuses more than 4300 digits (ValueError), and no id has more than 19.
    if not value.isascii() or not value.isdigit() or len(value) > 19 or not minimum <= int(value) <= maximum:
        raise bad_parameter(name, f"expected an integer from {minimum} to {maximum}, got {value[:40]!r}")
    return int(value)


# --- cursors: the list they page and the last id of the page seen --------------------------------


def cursor_pattern(*kinds: str) -> str:
    """What a cursor of these lists looks like (`runs:42`): the document and the check share it.
    Eighteen digits at most, so that every cursor the pattern allows is an id SQLite can hold."""
    return f"^({'|'.join(re.escape(kind) for kind in kinds)}):[0-9]{{1,18}}$"


def encode_cursor(kind: str, last_id: int) -> str:
    return f"{kind}:{last_id}"


def decode_cursor(kinds: tuple[str, ...], value: str) -> tuple[str, int]:
    if not value.isascii() or not re.fullmatch(cursor_pattern(*kinds), value):
        raise bad_parameter("cursor", "not a cursor of this list: use the next_cursor it answered")
    kind, _, number = value.partition(":")
    return kind, int(number)


def page(items: list[dict[str, Any]], limit: int, kind: str) -> tuple[list[dict[str, Any]], str | None]:
    """Handlers ask the store for limit + 1 rows: the extra one says whether another page exists."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_cursor(kind, items[-1]["id"])


# --- request bodies and answers --------------------------------------------------------------------

R = TypeVar("R", bound=Request)


async def json_body(request: web.Request, model: type[R]) -> R:
    """The request body as its model (an empty body is `{}`). The message names the field at fault."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
        # A lone surrogate (`"\ud800"`) is valid JSON but no text: SQLite and the providers refuse it.
        json.dumps(body, ensure_ascii=False).encode()
    except RecursionError:
        raise bad_body("body", "nested too deeply") from None
    except UnicodeError:
        raise bad_body("body", "not UTF-8 text (a lone surrogate?)") from None
    except ValueError as exc:
        raise bad_body("body", f"not JSON ({exc})") from None
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise _invalid(exc.errors()[0], model) from None


def _invalid(error: Any, model: type[Request]) -> BadRequest:
    where = [str(part) for part in error["loc"]]
    name = where[0] if where else "body"
    if error["type"] == "extra_forbidden":
        expected = ", ".join(model.model_fields) or "none"
        return bad_body(name, f"unknown field (expected {expected})")
    if error["type"] == "missing":
        return bad_body(name, "required")
    inner = ".".join(where[1:])
    return bad_body(name, f"{inner + ': ' if inner else ''}{error['msg']}")


def answer(
    model: type[Response], data: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An answer serialized through its model: what the OpenAPI document says is what is sent."""
    body = model.model_validate(data).model_dump(mode="json")
    return web.json_response(body, status=status, headers=headers)
