"""`POST /hooks/{source}`: authenticate, decode, store durably, then acknowledge.

Status codes (DESIGN.md): 202 accepted, 200 duplicate, 400 authentic but not JSON, 401 bad or missing
signature/token, 404 unknown source, 413 over the body limit, 503 the store cannot commit.
Nothing is stored before the request is authenticated.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from flowforged import logs
from flowforged.errors import NotJSON, StoreUnavailable, WebhookRejected
from flowforged.ingest import Ingest

log = logs.get("flowforged.webhooks")
INGEST = web.AppKey("ingest", Ingest)
MAX_BODY = web.AppKey("max_body_bytes", int)
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
    400: "invalid",
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
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            body = await request.read()
    except TimeoutError:
        log.warning("webhook body not received in time", source=name, remote=request.remote)
        return error(408, "timeout", "the request body was not received in time"), name, "unknown"
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        log.warning("webhook over the body limit", source=name, limit=limit)
        return error(413, "too_large", f"the body is over the {limit}-byte limit"), name, "unknown"
    try:
        provider.verify(request.headers, body, time.time())
    except WebhookRejected as exc:
        log.warning("webhook rejected", source=name, reason=str(exc), remote=request.remote)
        return error(401, "unauthorized", "signature or token missing or invalid"), name, "unknown"
    try:
        payload = provider.decode(request.headers, body)
    except NotJSON as exc:
        log.warning("authentic webhook is not JSON", source=name, reason=str(exc), bytes=len(body))
        return error(400, "not_json", f"the body is not JSON: {exc}"), name, "unknown"
    event = provider.event_name(request.headers, payload)
    try:
        result = await ingest.webhook(provider, request.headers, body, payload)
    except StoreUnavailable as exc:
        log.error("webhook not stored: the store cannot commit", source=name, error=str(exc))
        return error(503, "store_unavailable", "the event log cannot commit; retry later"), name, event
    delivery = result.delivery_id
    if result.duplicate:
        return web.json_response({"status": "duplicate", "delivery": delivery}, status=200), name, event
    return (
        web.json_response({"status": "accepted", "delivery": delivery, "events": len(result.events)}, status=202),
        name,
        event,
    )


def setup(app: web.Application, ingest: Ingest, max_body_bytes: int, body_timeout: float = 30.0) -> None:
    app[INGEST] = ingest
    app[MAX_BODY] = max_body_bytes
    app[BODY_TIMEOUT] = body_timeout
    app[OBSERVERS] = []
    app.router.add_post("/hooks/{source}", receive)
