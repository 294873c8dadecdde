"""The board's read pages: the board itself (and one tile, for live updates), a pipeline, a run, the
silences, the event stream and the static assets. Reads go through the control API's own lookups
(flowforged.api.reads) where one exists, so that the board shows what the API answers."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from flowforged.api import reads, stream
from flowforged.api.base import Context, context
from flowforged.store import board as board_reads
from flowforged.store import outbox
from flowforged.store import queries as store_queries
from flowforged.store import reads as sql
from flowforged.ui import board, chart
from flowforged.ui.access import session_of
from flowforged.ui.tiles import Tiles

AFTER = web.RequestKey("ui_after", int)
TILES = web.AppKey("ui_tiles", Tiles)
PAGE = 50  # runs per page on a pipeline page
CHART_RUNS = 60
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
ACTIONS_DONE = {
    "rerun": "Re-run requested.",
    "rerun_failed": "Re-run of the failed jobs requested.",
    "cancel": "Cancel requested.",
    "trigger": "Run triggered.",
    "silenced": "Silence added.",
    "expired": "Silence expired.",
}


async def mark(request: web.Request) -> None:
    """The newest event id, read before the page's data: its live updates follow the stream from
    there, so nothing committed between the read and the stream's start is missed."""
    request[AFTER] = await context(request).store.read(sql.last_event_id)


def render(request: web.Request, template: str, data: dict[str, Any], status: int = 200) -> web.Response:
    session = session_of(request)
    done = ACTIONS_DONE.get(request.query.get("done", ""))
    values = {"session": session, "done": done, "after": request.get(AFTER), **data}
    response = aiohttp_jinja2.render_template(template, request, values, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def providers_of(ctx: Context) -> dict[str, str]:
    return {name: source.type for name, source in ctx.config.source_configs.items()}


async def load_tiles(ctx: Context, source: str | None = None, pipeline: str | None = None) -> list[board.Tile]:
    branches = list(ctx.config.metrics.branches)
    data = await ctx.store.read(board_reads.board, branches, source, pipeline)
    return board.tiles(data, providers_of(ctx), branches)


async def board_page(request: web.Request) -> web.Response:
    ctx = context(request)
    await mark(request)
    cache = request.app[TILES]
    found = await cache.all()
    filters = {name: request.query.get(name, "").strip() for name in ("source", "provider", "state", "q")}
    shown = board.select(found, filters["source"], filters["provider"], filters["state"], filters["q"])
    macro = aiohttp_jinja2.get_env(request.app).get_template("macros.html").module.tile  # type: ignore[attr-defined]
    tiles_html = Markup("\n").join(cache.html(tile, macro) for tile in shown)
    response = render(
        request,
        "board.html",
        {
            "tiles_html": tiles_html,
            "shown": len(shown),
            "total": len(found),
            "counts": board.counts(found),
            "filters": filters,
            "sources": sorted(providers_of(ctx)),
            "providers": sorted(set(providers_of(ctx).values())),
            "states": board.FILTER_STATES,
        },
    )
    response.enable_compression()  # a board of thousands of tiles is mostly repeated markup
    return response


async def tile_fragment(request: web.Request) -> web.Response:
    """The tiles of one pipeline, for the board's live update (flowforged/ui/static/live.js)."""
    source, pipeline = request.query.get("source"), request.query.get("pipeline")
    if not source or not pipeline:
        raise web.HTTPBadRequest(text="source and pipeline are required")
    found = await load_tiles(context(request), source, pipeline)
    return render(request, "tiles.html", {"tiles": found})


async def pipeline_page(request: web.Request) -> web.Response:
    ctx = context(request)
    await mark(request)
    found = await reads.find_pipeline(request)
    source, name = found["source"], found["pipeline"]
    branch = request.query.get("branch") or None
    status = request.query.get("status") or None
    if status is not None and status not in reads.STATUSES:
        raise web.HTTPBadRequest(text=f"status: {status!r} is not one of {', '.join(reads.STATUSES)}")
    before = _int(request.query.get("before"))
    rows = await ctx.store.read(
        lambda conn: store_queries.runs(
            conn, source=source, pipeline=name, branch=branch, status=status, before=before, limit=PAGE + 1
        )
    )
    recent = await ctx.store.read(board_reads.history, source, name, branch, CHART_RUNS)
    breakages = await ctx.store.read(board_reads.breakages, source, name)
    source_config = ctx.config.source_configs.get(source)
    return render(
        request,
        "pipeline.html",
        {
            "pipeline": found,
            "tiles": await load_tiles(ctx, source, name),
            "provider": source_config.type if source_config else "?",
            "capabilities": reads.capabilities(source_config.type) if source_config else None,
            "runs": rows[:PAGE],
            "next_before": rows[PAGE - 1]["id"] if len(rows) > PAGE else None,
            "filters": {"branch": branch or "", "status": status or ""},
            "branches": await ctx.store.read(board_reads.branches_of, source, name),
            "statuses": reads.STATUSES,
            "chart": chart.svg(recent),
            "success_rate": chart.success_rate(recent),
            "chart_runs": len(recent),
            "fixes": chart.times_to_fix(breakages)[:20],
        },
    )


async def run_page(request: web.Request) -> web.Response:
    ctx = context(request)
    await mark(request)
    run = await reads.find_run(request)
    key = (run["source"], run["run_id"], run["attempt"])
    source_config = ctx.config.source_configs.get(run["source"])
    pipeline_id = await ctx.store.read(board_reads.pipeline_id, run["source"], run["pipeline"])
    return render(
        request,
        "run.html",
        {
            "run": run,
            "pipeline_id": pipeline_id,
            "provider": source_config.type if source_config else "?",
            "capabilities": reads.capabilities(source_config.type) if source_config else None,
            "jobs": await ctx.store.read(sql.run_jobs, *key),
            "events": await ctx.store.read(sql.run_events, *key),
            "notifications": await ctx.store.read(board_reads.run_notifications, run["id"]),
            "active": run["status"] in board.ACTIVE,
        },
    )


async def silences_page(request: web.Request) -> web.Response:
    ctx = context(request)
    rows = await ctx.store.read(outbox.silences, time.time(), False)
    prefill = {name: request.query.get(name, "") for name in ("source", "pipeline", "branch")}
    return render(request, "silences.html", {"silences": rows, "prefill": prefill, "when": _when})


def _when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value)) if value else "-"


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() and len(value) < 19 else None


async def events(request: web.Request) -> web.StreamResponse:
    """The control API's event stream for a signed-in browser (an EventSource cannot send a bearer
    token): the same handler, so replay after Last-Event-ID and the keepalives are the API's."""
    return await stream.stream(request)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise web.HTTPNotFound()
    asset = resources.files("flowforged.ui").joinpath("static", name)
    if not asset.is_file():
        raise web.HTTPNotFound()
    response = web.Response(body=asset.read_bytes(), content_type=STATIC_TYPES[suffix])
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
