"""The read endpoints: sources, pipelines, runs, one run, the event log."""

from __future__ import annotations

import dataclasses
from typing import Any

import yarl
from aiohttp import web

from flowforged import plugin
from flowforged.api import schemas
from flowforged.api.base import NotFound, Query, answer, context, page, path_id
from flowforged.model import Status
from flowforged.store import queries
from flowforged.store import reads as sql

STATUSES = tuple(status.value for status in Status)
KINDS = ("run", "job")


async def sources(request: web.Request) -> web.Response:
    Query(request)
    ctx = context(request)
    status = ctx.operations.sources_status()
    return answer(
        schemas.SourceList,
        {
            "sources": [
                source_dict(name, source, status.get(name, {}))
                for name, source in sorted(ctx.config.source_configs.items())
            ]
        },
    )


def capabilities(source_type: str) -> plugin.Capabilities:
    """What the provider of a source can do (none if its plugin is not installed any more)."""
    provider = plugin.providers().get(source_type)
    return provider.capabilities if provider is not None else plugin.Capabilities()


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
        "capabilities": dataclasses.asdict(capabilities(source.type)),
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
    return answer(schemas.PipelinePage, {"pipelines": items, "next_cursor": cursor})


async def pipeline(request: web.Request) -> web.Response:
    Query(request)
    return answer(schemas.OnePipeline, {"pipeline": await find_pipeline(request)})


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
    return answer(schemas.RunPage, {"runs": items, "next_cursor": cursor})


async def run(request: web.Request) -> web.Response:
    Query(request)
    found = await find_run(request)
    store = context(request).store
    key = (found["source"], found["run_id"], found["attempt"])
    return answer(
        schemas.RunDetail,
        {"run": found, "jobs": await store.read(sql.run_jobs, *key), "events": await store.read(sql.run_events, *key)},
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
    it then asks again with after=<the last id it saw>. A cursor keeps the order of the page it came
    from; `after` given with it is a lower bound that still holds."""
    query = Query(request, "source", "run_id", "kind", "limit", "cursor", "after")
    limit = query.limit()
    cursor, after = query.cursor("events", "events.after"), query.integer("after")
    before, oldest_first = None, after is not None
    if cursor is not None:
        kind, last = cursor
        oldest_first = kind == "events.after"
        if oldest_first:
            after = last if after is None else max(last, after)
        else:
            before = last
    filters = {"source": query.text("source"), "run_id": query.text("run_id"), "kind": query.choice("kind", KINDS)}
    rows = await context(request).store.read(
        lambda conn: sql.events(conn, **filters, before=before, after=after, limit=limit + 1, oldest_first=oldest_first)
    )
    items, next_cursor = page(rows, limit, "events.after" if oldest_first else "events")
    return answer(schemas.EventPage, {"events": items, "next_cursor": next_cursor})


def cursor_id(query: Query, kind: str) -> int | None:
    cursor = query.cursor(kind)
    return None if cursor is None else cursor[1]
