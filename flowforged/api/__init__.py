"""The control API, `/api/v1` (docs/architecture.md), described by the OpenAPI 3.1
document at `GET /api/v1/openapi.json`.

Every request needs `Authorization: Bearer <api.token>` except the document itself, which holds no
data. Without `api.token` in the config the API answers 503 `api_disabled` (the daemon still takes
webhooks and serves metrics). Every error is `{"error": {"code", "message"}}`.

Lists are newest first (pipelines: oldest first) and paged by a `cursor`: pass a response's
`next_cursor` to get the next page; it is null on the last one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flowforged.api import actions, reads, stream
from flowforged.api.base import CONTEXT, OPENAPI_PATH, PREFIX, Context, Operations, middleware
from flowforged.api.openapi import document

__all__ = ["API", "CONTEXT", "Context", "Operations", "ROUTES", "setup"]

API = web.AppKey("api_app", web.Application)  # the mounted sub-application
Handler = Callable[[web.Request], Any]
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/sources", reads.sources),
    ("GET", "/pipelines", reads.pipelines),
    ("GET", "/pipelines/{id}", reads.pipeline),
    ("POST", "/pipelines/{id}/trigger", actions.trigger),
    ("GET", "/runs", reads.runs),
    ("GET", "/runs/{id}", reads.run),
    ("POST", "/runs/{id}/rerun", actions.rerun),
    ("POST", "/runs/{id}/cancel", actions.cancel),
    ("GET", "/events", reads.events),
    ("GET", "/events/stream", stream.stream),
    ("GET", "/notifications", actions.notifications),
    ("POST", "/notifications/{id}/retry", actions.retry),
    ("GET", "/silences", actions.silences),
    ("POST", "/silences", actions.add_silence),
    ("GET", "/silences/{id}", actions.silence),
    ("POST", "/silences/{id}/expire", actions.expire_silence),
]


async def serve_document(request: web.Request) -> web.Response:
    return web.json_response(document())


def setup(app: web.Application, operations: Operations, *, keepalive: float = stream.KEEPALIVE) -> None:
    """Mount the API on the daemon's application (after CONFIG, STORE and BUS are set).

    It is a sub-application: its middleware (token, JSON errors) sees only /api/v1 requests, never the
    webhooks.
    """
    # Imported here: flowforged.app imports this module to wire it.
    from flowforged.app import BUS, CONFIG, DISPATCHER, STORE

    def wake_dispatcher() -> None:
        dispatcher = app.get(DISPATCHER)
        if dispatcher is not None:
            dispatcher.wake()

    ctx = Context(
        config=app[CONFIG],
        store=app[STORE],
        bus=app[BUS],
        operations=operations,
        wake_dispatcher=wake_dispatcher,
        keepalive=keepalive,
    )
    api = web.Application(middlewares=[middleware])
    api[CONTEXT] = ctx
    api.router.add_get(OPENAPI_PATH.removeprefix(PREFIX), serve_document)
    for method, path, handler in ROUTES:
        if method == "GET":
            api.router.add_get(path, handler, allow_head=handler is not stream.stream)
        else:
            api.router.add_route(method, path, handler)
    api.on_shutdown.append(functools.partial(stream.close_streams, ctx=ctx))
    app[API] = api
    app.add_subapp(PREFIX, api)
