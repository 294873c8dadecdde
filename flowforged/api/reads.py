"""The read endpoints: sources, pipelines, runs, one run, the event log."""

from __future__ import annotations

from typing import Any

import yarl
from aiohttp import web

from flowforged.api.base import NotFound, Query, bad_parameter, context, page, path_id
from flowforged.model import Status
from flowforged.store import api as sql
from flowforged.store import queries

STATUSES = tuple(status.value for status in Status)
KINDS = ("run", "job")


async def sources(request: web.Request) -> web.Response:
    Query(request)
    ctx = context(request)
    status = ctx.operations.sources_status()
    return web.json_response(
        {
            "sources": [
                source_dict(name, source, status.get(name, {}))
                for name, source in sorted(ctx.config.source_configs.items())
            ]
        }
    )


def source_dict(name: str, source: Any, status: dict[str, Any]) -> dict[str, Any]:
    api_url = source.api_url
    if api_url:
        api_url = str(yarl.URL(api_url).with_user(None))  # a user:password@ in a URL is a credential
    return {
        "name": name,
        "type": source.type,
        "webhook": {"path": f"/hooks/{name}", "authenticated": source.authenticated},
        "polling": {
            "enabled": source.poll_interval > 0,
            "interval_seconds": source.poll_interval,
            "last_poll_at": status.get("last_poll_at"),
            "last_ok_at": status.get("last_ok_at"),
            "last_error": status.get("last_error"),
            "next_poll_at": status.get("next_poll_at"),
        },
        "api": {
            "url": api_url,
            "token_configured": source.token is not None,
            "rate_limit_remaining": status.get("rate_limit_remaining"),
            "rate_limited_until": status.get("rate_limited_until"),
            "requests": dict(status.get("requests") or {}),
        },
        "repos": list(source.repos),
    }


async def pipelines(request: web.Request) -> web.Response:
    query = Query(request, "source", "limit", "cursor")
    limit = query.limit()
    rows = await context(request).store.read(
        lambda conn: sql.pipelines(
            conn, source=query.text("source"), after=cursor_id(query, "pipelines"), limit=limit + 1
        )
    )
    items, cursor = page(rows, limit, "pipelines")
    return web.json_response({"pipelines": items, "next_cursor": cursor})


async def pipeline(request: web.Request) -> web.Response:
    Query(request)
    return web.json_response({"pipeline": await find_pipeline(request)})


async def find_pipeline(request: web.Request) -> dict[str, Any]:
    pipeline_id = path_id(request)
    found = await context(request).store.read(sql.pipeline, pipeline_id)
    if found is None:
        raise NotFound(f"no pipeline {pipeline_id}")
    return found


async def runs(request: web.Request) -> web.Response:
    query = Query(request, "source", "pipeline", "branch", "status", "limit", "cursor")
    limit = query.limit()
    filters = {
        "source": query.text("source"),
        "pipeline": query.text("pipeline"),
        "branch": query.text("branch"),
        "status": query.choice("status", STATUSES),
    }
    before = cursor_id(query, "runs")
    rows = await context(request).store.read(lambda conn: queries.runs(conn, **filters, before=before, limit=limit + 1))
    items, cursor = page(rows, limit, "runs")
    return web.json_response({"runs": items, "next_cursor": cursor})


async def run(request: web.Request) -> web.Response:
    Query(request)
    found = await find_run(request)
    store = context(request).store
    key = (found["source"], found["run_id"], found["attempt"])
    return web.json_response(
        {"run": found, "jobs": await store.read(sql.run_jobs, *key), "events": await store.read(sql.run_events, *key)}
    )


async def find_run(request: web.Request) -> dict[str, Any]:
    run_id = path_id(request)
    found = await context(request).store.read(sql.run, run_id)
    if found is None:
        raise NotFound(f"no run {run_id}")
    return found


async def events(request: web.Request) -> web.Response:
    """Newest first, older pages through `cursor`. With `after` (an event id), oldest first from there:
    how a client follows the log without the stream. Its next_cursor is null once it has caught up;
    it then asks again with after=<the last id it saw>."""
    query = Query(request, "source", "run_id", "kind", "limit", "cursor", "after")
    limit = query.limit()
    cursor, after = query.cursor("events", "events.after"), query.integer("after")
    if cursor is not None and after is not None:
        raise bad_parameter("after", "give either cursor or after, not both")
    before = None
    if cursor is not None:
        kind, last = cursor
        before, after = (last, None) if kind == "events" else (None, last)
    filters = {"source": query.text("source"), "run_id": query.text("run_id"), "kind": query.choice("kind", KINDS)}
    rows = await context(request).store.read(
        lambda conn: sql.events(conn, **filters, before=before, after=after, limit=limit + 1)
    )
    items, next_cursor = page(rows, limit, "events" if after is None else "events.after")
    return web.json_response({"events": items, "next_cursor": next_cursor})


def cursor_id(query: Query, kind: str) -> int | None:
    cursor = query.cursor(kind)
    return None if cursor is None else cursor[1]
