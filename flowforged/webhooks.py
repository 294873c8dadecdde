"""`POST /hooks/{source}`: authenticate, decode, store durably, then acknowledge.

Status codes: 202 accepted, 200 duplicate, 401 bad or missing signature/token, 404 unknown source,
408 body not received in time, 413 over the body limit, 415 a compressed body (guard.py), 503 the store
cannot commit or too many unauthenticated bodies at once. Nothing is stored before the request is
authenticated. An authentic delivery is acknowledged once its raw body is committed, and decoded,
normalized and applied after (docs/architecture.md, "Accept, then apply"): one that is not JSON, or
that cannot be normalized, is acknowledged all the same and kept raw with its error.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import hdrs, web

from flowforged import logs
from flowforged.errors import StoreUnavailable, WebhookRejected
from flowforged.guard import BodyBudget, OverBudget
from flowforged.ingest import Ingest
from flowforged.plugin import Provider

log = logs.get("flowforged.webhooks")
INGEST = web.AppKey("ingest", Ingest)
MAX_BODY = web.AppKey("max_body_bytes", int)
BUDGET = web.AppKey("unauthenticated_body_budget", BodyBudget)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
OBSERVERS = web.AppKey("webhook_observers", list)  # callables (source, event, outcome, seconds)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def receive(request: web.Request) -> web.Response:
    started = time.perf_counter()
    response, source, event = await _receive(request)
    outcome = _OUTCOMES.get(response.status, "error")
    for observe in request.app[OBSERVERS]:
        observe(source, event, outcome, time.perf_counter() - started)
    return response


_OUTCOMES = {
    202: "accepted",
    200: "duplicate",
    401: "rejected",
    404: "unknown_source",
    408: "invalid",
    413: "too_large",
    503: "unavailable",
}


async def _receive(request: web.Request) -> tuple[web.Response, str, str]:
    ingest = request.app[INGEST]
    name = request.match_info["source"]
    provider = ingest.providers.get(name)
    if provider is None:
        return error(404, "unknown_source", "no source of that name is configured"), "unknown", "unknown"
    body = await _authentic_body(request, name, provider)
    if isinstance(body, web.Response):
        return body, name, "unknown"
    # Counted from authentication on (a client that sends slowly must not hold applying back): the
    # store applies deliveries in the pauses between webhooks (docs/architecture.md).
    store = ingest.store
    store.receiving += 1
    try:
        return await _accept(request, ingest, name, provider, body)
    finally:
        store.receiving -= 1


async def _accept(
    request: web.Request, ingest: Ingest, name: str, provider: Provider, body: bytes
) -> tuple[web.Response, str, str]:
    try:
        delivery, duplicate = await ingest.webhook(provider, request.headers, body)
    except StoreUnavailable as exc:
        log.error("webhook not stored: the store cannot commit", source=name, error=str(exc))
        event = provider.event_name(request.headers, None)
        return error(503, "store_unavailable", "the event log cannot commit; retry later"), name, event
    # The event as its headers name it: a provider that names it in the body (Jenkins) says "unknown" here.
    answer = (
        _answer(200, b"duplicate", delivery.delivery_id)
        if duplicate
        else _answer(202, b"accepted", delivery.delivery_id)
    )
    return answer, name, delivery.event


def _answer(status: int, word: bytes, delivery: str) -> web.Response:
    body = b'{"status":"' + word + b'","delivery":' + msgspec.json.encode(delivery) + b"}"
    return web.Response(body=body, status=status, content_type="application/json")


async def _authentic_body(request: web.Request, name: str, provider: Provider) -> bytes | web.Response:
    """The body once authenticated, or the answer refusing it."""
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        log.warning("webhook over the body limit", source=name, limit=limit, remote=request.remote)
        return _too_large(limit)
    budget = request.app[BUDGET]
    try:
        body = budget.received(request.content, limit)  # the whole body came with the headers
        if body is None:
            async with asyncio.timeout(request.app[BODY_TIMEOUT]):
                body = await budget.read(request.content, limit)
    except TimeoutError:
        log.warning("webhook body not received in time", source=name, remote=request.remote)
        return error(408, "timeout", "the request body was not received in time")
    except web.HTTPRequestEntityTooLarge:
        log.warning("webhook over the body limit", source=name, limit=limit, remote=request.remote)
        return _too_large(limit)
    except OverBudget:
        log.warning(
            "webhook refused for now: too many unauthenticated bodies at once", source=name, remote=request.remote
        )
        response = error(503, "busy", "too many requests are being received at once; retry later")
        response.headers[hdrs.RETRY_AFTER] = "1"
        return _closing(response)
    try:
        provider.verify(request.headers, body, time.time())
    except WebhookRejected as exc:
        log.warning("webhook rejected", source=name, reason=str(exc), remote=request.remote)
        return error(401, "unauthorized", "signature or token missing or invalid")
    finally:
        budget.give(len(body))  # authenticated or refused: no longer the budget's concern
    return body


def _too_large(limit: int) -> web.Response:
    return _closing(error(413, "too_large", f"the body is over the {limit}-byte limit (server.max_body_bytes)"))


def _closing(response: web.Response) -> web.Response:
    """Close the connection after `response`: the body it refused is then never read."""
    response.force_close()
    return response


def setup(
    app: web.Application,
    ingest: Ingest,
    max_body_bytes: int,
    body_timeout: float = 30.0,
    max_unauthenticated_bytes: int | None = None,
) -> None:
    app[INGEST] = ingest
    app[MAX_BODY] = max_body_bytes
    app[BUDGET] = BodyBudget(max_unauthenticated_bytes or max_body_bytes * 32)
    app[BODY_TIMEOUT] = body_timeout
    app[OBSERVERS] = []
    app.router.add_post("/hooks/{source}", receive)
