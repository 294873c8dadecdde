"""`GET /api/v1/events/stream`: the event log as server-sent events (the WHATWG HTML "Server-sent
events" format): `id: <events.id>` and `data: <the event as JSON>` per event, a `: keepalive` comment
when nothing happened for a while (so that proxies keep the connection and a dead client is noticed).

A client that reconnects sends `Last-Event-ID` (browsers do it by themselves): the stream first replays
the stored events after that id, then follows the bus. It subscribes to the bus before it reads the
store, so nothing committed in between is lost, and skips what it already sent.

Each event is encoded once for all the streams that follow the bus (flowforged.bus.Message), in the
shape `GET /events` shows it (flowforged.api.schemas.Event).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flowforged.api.base import Context, Query, bad_parameter, context, log
from flowforged.api.reads import KINDS
from flowforged.api.schemas import Event
from flowforged.bus import Message
from flowforged.store import reads as sql

KEEPALIVE = 15.0
REPLAY_PAGE = 500
_CLOSING = Message({"type": "closing"})  # put in each stream's queue when the daemon stops


async def stream(request: web.Request) -> web.StreamResponse:
    query = Query(request, "source", "run_id", "kind", "after")
    filters = {"source": query.text("source"), "run_id": query.text("run_id"), "kind": query.choice("kind", KINDS)}
    last = _last_event_id(request, query)
    ctx = context(request)
    wanted = _matcher(filters)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not hold the events back in its buffer
        }
    )
    with ctx.bus.subscribe() as queue:
        ctx.streams.add(queue)
        try:
            newest = await ctx.store.read(sql.last_event_id)
            # No Last-Event-ID: from now on. One beyond the newest (a client of a database since
            # replaced) must not hide the events to come.
            last = newest if last is None else min(last, newest)
            await response.prepare(request)
            last = await _replay(ctx, response, filters, last)
            await _follow(ctx, response, queue, filters, wanted, last)
        except ConnectionResetError:
            pass  # the client went away
        finally:
            ctx.streams.discard(queue)
    return response


def _last_event_id(request: web.Request, query: Query) -> int | None:
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        if not header.isascii() or not header.isdigit():
            raise bad_parameter("Last-Event-ID", f"expected an event id, got {header!r}")
        return int(header)
    return query.integer("after")


def _matcher(filters: dict[str, str | None]) -> Callable[[dict[str, Any]], bool]:
    wanted = {key: value for key, value in filters.items() if value is not None}
    return lambda event: all(event.get(key) == value for key, value in wanted.items())


async def _replay(ctx: Context, response: web.StreamResponse, filters: dict[str, str | None], last: int) -> int:
    """Send the stored events after `last`, in order; return the id of the last one sent."""
    while True:
        rows = await ctx.store.read(functools.partial(sql.events, **filters, after=last, limit=REPLAY_PAGE))
        for event in rows:
            await response.write(frame(event))
            last = event["id"]
        if len(rows) < REPLAY_PAGE:
            return last


async def _follow(
    ctx: Context,
    response: web.StreamResponse,
    queue: asyncio.Queue[Message],
    filters: dict[str, str | None],
    wanted: Callable[[dict[str, Any]], bool],
    last: int,
) -> None:
    # Ingest publishes each commit's events in id order (flowforged.ingest.Ingest.commit), so an id at
    # or below `last` has been sent already, by the replay or before.
    while True:
        if queue.full():
            # The bus drops the oldest message of a subscriber that does not keep up: fill from the store.
            last = await _replay(ctx, response, filters, last)
        try:
            async with asyncio.timeout(ctx.keepalive):  # not wait_for: see flowforged.dispatch
                message = await queue.get()
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if message is _CLOSING:
            return
        event_id = message.data.get("id")
        if message.data.get("type") != "event" or not isinstance(event_id, int) or event_id <= last:
            continue
        last = event_id
        if wanted(message.data):
            await response.write(message.encoded(frame))


def frame(event: dict[str, Any]) -> bytes:
    """One event as a server-sent event."""
    data = Event.model_validate(event).model_dump_json()
    return f"id: {event['id']}\ndata: {data}\n\n".encode()


async def close_streams(app: web.Application, ctx: Context) -> None:
    """on_shutdown: end every open stream, so that draining the daemon does not wait for them."""
    for queue in list(ctx.streams):
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(_CLOSING)
    if ctx.streams:
        log.info("api: closing event streams", streams=len(ctx.streams))
