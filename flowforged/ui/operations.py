"""The board's forms that change something: trigger, re-run, re-run failed jobs, cancel, add and expire
a silence. They go through what the control API's handlers call (the Operations of the daemon, the
providers' Capabilities, the outbox's silences), so a provider refuses the same things here as there:
an option it cannot honour is 422 naming it. Each answers with a redirect to the page it came from
(post/redirect/get), or with the error page."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from flowforged import config
from flowforged.api import reads
from flowforged.api.base import ApiError, Unprocessable, context, path_id
from flowforged.errors import ProviderError, RateLimited, StoreUnavailable
from flowforged.store import outbox
from flowforged.ui.access import log
from flowforged.ui.pages import render

MAX_SILENCE = 90 * 86400.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answers_errors(handler: Handler) -> Handler:
    """The error page, with the status the API would answer, for what an operation refuses."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(request, exc.status, str(exc))
        except ProviderError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 502
            log.warning("ui: provider operation failed", path=request.path, status=status, error=str(exc))
            return _error(request, status, str(exc))
        except RateLimited as exc:
            return _error(request, 503, f"{exc}; try again in {int(exc.retry_after) + 1}s")
        except StoreUnavailable:
            return _error(request, 503, "the event log cannot commit; try again later")

    wrapped.__name__ = handler.__name__
    return wrapped


def _error(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


def _refuse(source_type: str, source: str, action: str, options: dict[str, Any]) -> None:
    """422 naming the option the source's provider cannot honour (the API's own check)."""
    refusal = reads.capabilities(source_type).refusal(source_type, action, options)
    if refusal is not None:
        option, reason = refusal
        raise Unprocessable(f"{option}: {reason} (source {source})")


def _source_type(request: web.Request, source: str) -> str:
    configured = context(request).config.source_configs.get(source)
    if configured is None:
        raise Unprocessable(f"source {source} is no longer configured", code="unknown_source")
    return configured.type


@answers_errors
async def rerun(request: web.Request) -> web.StreamResponse:
    run = await reads.find_run(request)
    form = await request.post()
    failed_only = {"failed": True, "all": False}.get(str(form.get("jobs", "")))
    _refuse(_source_type(request, run["source"]), run["source"], "rerun", {"failed_only": failed_only})
    log.info(
        "ui: re-run requested", run=run["id"], source=run["source"], failed_only=failed_only, remote=request.remote
    )
    await context(request).operations.rerun(run, failed_only)
    raise web.HTTPSeeOther(f"/runs/{run['id']}?done={'rerun_failed' if failed_only else 'rerun'}")


@answers_errors
async def cancel(request: web.Request) -> web.StreamResponse:
    run = await reads.find_run(request)
    force = (await request.post()).get("force") == "on"
    _refuse(_source_type(request, run["source"]), run["source"], "cancel", {"force": force})
    log.info("ui: cancel requested", run=run["id"], source=run["source"], force=force, remote=request.remote)
    await context(request).operations.cancel(run, force)
    raise web.HTTPSeeOther(f"/runs/{run['id']}?done=cancel")


def pairs(text: str, field: str) -> dict[str, str]:
    """`name=value` lines (the trigger form's inputs and variables); a line without `=` is refused."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise Unprocessable(f"{field}: expected name=value lines, got {line.strip()[:60]!r}", code="invalid_body")
        out[name.strip()] = value.strip()
    return out


@answers_errors
async def trigger(request: web.Request) -> web.StreamResponse:
    pipeline = await reads.find_pipeline(request)
    form = await request.post()
    ref = str(form.get("ref", "")).strip()
    if not ref:
        raise Unprocessable("ref: required (a branch or a tag)", code="invalid_body")
    inputs = pairs(str(form.get("inputs", "")), "inputs")
    variables = pairs(str(form.get("variables", "")), "variables")
    source = pipeline["source"]
    _refuse(_source_type(request, source), source, "trigger", {"inputs": inputs, "variables": variables})
    log.info("ui: trigger requested", source=source, pipeline=pipeline["pipeline"], ref=ref, remote=request.remote)
    await context(request).operations.trigger(source, pipeline["pipeline"], ref, inputs, variables)
    raise web.HTTPSeeOther(f"/pipelines/{pipeline['id']}?done=trigger")


def _patterns(value: Any) -> list[str]:
    return [part.strip() for part in str(value or "").split(",") if part.strip()] or ["*"]


@answers_errors
async def add_silence(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    now = time.time()
    try:
        seconds = float(config.parse_duration(str(form.get("duration", "")).strip()))
    except ValueError as exc:
        raise Unprocessable(f"duration: {exc}", code="invalid_body") from None
    if not 0 < seconds <= MAX_SILENCE:
        raise Unprocessable("duration: between a second and 90 days", code="invalid_body")
    patterns = [_patterns(form.get(name)) for name in ("sources", "pipelines", "branches")]
    comment = str(form.get("comment", "")).strip()[:500]
    store = context(request).store
    silence_id = await store.write(outbox.add_silence, *patterns, now + seconds, comment, now)
    log.info("ui: silence added", silence=silence_id, until=now + seconds, remote=request.remote)
    raise web.HTTPSeeOther("/silences?done=silenced")


@answers_errors
async def expire_silence(request: web.Request) -> web.StreamResponse:
    silence_id = path_id(request)
    if await context(request).store.write(outbox.expire_silence, silence_id, time.time()):
        log.info("ui: silence expired", silence=silence_id, remote=request.remote)
    raise web.HTTPSeeOther("/silences?done=expired")
