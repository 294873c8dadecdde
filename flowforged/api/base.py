"""What every `/api/v1` handler shares: the Operations seam, the error hierarchy, the middleware that
authenticates and turns every failure into `{"error": {"code", "message"}}`, and query/body parsing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from flowforged import logs
from flowforged.bus import Bus
from flowforged.config import Config
from flowforged.errors import FlowForgeError, ProviderError, RateLimited, StoreUnavailable
from flowforged.store import Store

log = logs.get("flowforged.api")
PREFIX = "/api/v1"
OPENAPI_PATH = f"{PREFIX}/openapi.json"  # served without a token: it describes the API, holds no data
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class Operations(Protocol):
    """What the API asks of the providers (the daemon implements it over the poller's clients).

    Failures are raised as ProviderError (status, code, message go to the caller as they are) or
    RateLimited (503 with Retry-After).
    """

    async def trigger(self, source: str, pipeline: str, ref: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """Start a run; return it (run-object field names, any subset) if the provider tells which it is."""
        ...

    async def rerun(self, run: dict[str, Any], failed_only: bool) -> object:
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
    streams: set[asyncio.Queue[dict[str, Any]]] = dataclasses.field(default_factory=set)  # open SSE


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
    secret = context(request).config.api.token
    if secret is None:
        # A daemon may run for webhooks and metrics only: the API stays off until a token is set.
        raise Unavailable("set api.token in the config", code="api_disabled")
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    challenge = 'Bearer realm="flowforged"'
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized(
            "an Authorization: Bearer <token> header is required", headers={"WWW-Authenticate": challenge}
        )
    if not hmac.compare_digest(given.strip().encode(), secret.get().encode()):
        log.warning("api request with a wrong token", path=request.path, remote=request.remote)
        raise Unauthorized(
            "the bearer token is not valid", headers={"WWW-Authenticate": f'{challenge}, error="invalid_token"'}
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
        return values[0] if values and values[0] != "" else None

    def choice(self, name: str, choices: Iterable[str]) -> str | None:
        value = self.text(name)
        choices = tuple(choices)
        if value is not None and value not in choices:
            raise bad_parameter(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        top = f" to {maximum}" if maximum is not None else " or more"
        if (
            not value.isascii()
            or not value.isdigit()
            or int(value) < minimum
            or (maximum is not None and int(value) > maximum)
        ):
            raise bad_parameter(name, f"expected an integer from {minimum}{top}, got {value!r}")
        return int(value)

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
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit():
        raise bad_parameter(name, f"expected an integer id, got {value!r}")
    return int(value)


# --- cursors: opaque to callers, the last id of the page they saw -----------------------------------


def encode_cursor(kind: str, last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).rstrip(b"=").decode()


def decode_cursor(kinds: tuple[str, ...], value: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_parameter("cursor", "not a cursor this API gave out") from None
    kind, _, number = text.partition(":")
    if kind not in kinds or not number.isascii() or not number.isdigit():
        raise bad_parameter("cursor", "not a cursor of this list: use the next_cursor it answered")
    return kind, int(number)


def page(items: list[dict[str, Any]], limit: int, kind: str) -> tuple[list[dict[str, Any]], str | None]:
    """Handlers ask the store for limit + 1 rows: the extra one says whether another page exists."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_cursor(kind, items[-1]["id"])


# --- request bodies -------------------------------------------------------------------------------


async def json_body(request: web.Request, *fields: str) -> dict[str, Any]:
    """The JSON object of a request body (an empty body is `{}`); a key it does not know is an error,
    so that a misspelt option (`failedOnly`) is not silently ignored."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_body("body", f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise bad_body("body", "expected a JSON object")
    for key in body:
        if key not in fields:
            raise bad_body(key, f"unknown field (expected {', '.join(fields) or 'none'})")
    return body


def body_bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise bad_body(name, "expected true or false")
    return value


def body_str(body: dict[str, Any], name: str, default: str | None = None, *, required: bool = False) -> str:
    value = body.get(name, default)
    if value is None and required:
        raise bad_body(name, "required")
    if not isinstance(value, str) or (required and not value.strip()):
        raise bad_body(name, "expected a non-empty string" if required else "expected a string")
    return value


def body_globs(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, ["*"])
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise bad_body(name, "expected a non-empty list of glob patterns (strings)")
    return value


# --- timestamps -----------------------------------------------------------------------------------


def timestamp(epoch: float | None) -> str | None:
    """Unix seconds from the outbox as ISO 8601 UTC, like every other time the API shows."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
