"""The endpoints that change something: provider operations (rerun, cancel, trigger) through the
Operations seam, and the notifications and silences of the outbox."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from aiohttp import web

from flowforged import config
from flowforged.api.base import (
    Conflict,
    NotFound,
    Query,
    bad_body,
    body_bool,
    body_globs,
    body_str,
    context,
    json_body,
    log,
    page,
    path_id,
    timestamp,
)
from flowforged.api.reads import cursor_id, find_pipeline, find_run
from flowforged.store import api as sql
from flowforged.store import outbox

LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last time ISO 8601 (and gmtime) can show

# --- provider operations --------------------------------------------------------------------------
# Whether a run can be re-run or cancelled is the provider's to say (our copy of its state may lag):
# its refusal comes back as a ProviderError, 409 for a finished run, 403 for a token without the right.


def _configured(request: web.Request, source: str) -> None:
    if source not in context(request).config.source_configs:
        raise Conflict(f"source {source} is no longer configured", code="unknown_source")


async def _run_action(request: web.Request, action: str, flag: str) -> web.Response:
    """Re-run or cancel one run: the two differ only in the operation and its one boolean."""
    Query(request)
    value = body_bool(await json_body(request, flag), flag)
    run = await find_run(request)
    _configured(request, run["source"])
    log.info(
        f"api: {action} requested",
        run=run["id"],
        source=run["source"],
        pipeline=run["pipeline"],
        remote=request.remote,
        **{flag: value},
    )
    await getattr(context(request).operations, action)(run, value)
    return web.json_response({"status": "accepted", "action": action, "run": run}, status=202)


async def rerun(request: web.Request) -> web.Response:
    return await _run_action(request, "rerun", "failed_only")


async def cancel(request: web.Request) -> web.Response:
    return await _run_action(request, "cancel", "force")


async def trigger(request: web.Request) -> web.Response:
    Query(request)
    body = await json_body(request, "ref", "inputs")
    ref = body_str(body, "ref", required=True)
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict) or not all(isinstance(v, str | int | float | bool) for v in inputs.values()):
        raise bad_body("inputs", "expected an object of names to strings, numbers or booleans")
    pipeline = await find_pipeline(request)
    _configured(request, pipeline["source"])
    log.info(
        "api: trigger requested",
        source=pipeline["source"],
        pipeline=pipeline["pipeline"],
        ref=ref,
        inputs=sorted(inputs),
        remote=request.remote,
    )
    run = await context(request).operations.trigger(pipeline["source"], pipeline["pipeline"], ref, inputs)
    return web.json_response({"status": "accepted", "action": "trigger", "run": run}, status=202)


# --- notifications --------------------------------------------------------------------------------


def notification_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{key: timestamp(row[key]) for key in ("created_at", "due_at", "sent_at")}}


async def notifications(request: web.Request) -> web.Response:
    query = Query(request, "state", "limit", "cursor")
    limit = query.limit()
    state, before = query.choice("state", outbox.STATES), cursor_id(query, "notifications")
    rows = await context(request).store.read(
        lambda conn: outbox.notifications(conn, state=state, before=before, limit=limit + 1)
    )
    items, cursor = page(rows, limit, "notifications")
    return web.json_response({"notifications": [notification_dict(r) for r in items], "next_cursor": cursor})


async def retry(request: web.Request) -> web.Response:
    """Send a dead (or suppressed, or still pending) notification again, now."""
    Query(request)
    await json_body(request)
    notification_id = path_id(request)
    ctx = context(request)
    row = await ctx.store.read(sql.notification, notification_id)
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    if not await ctx.store.write(outbox.retry, notification_id, time.time()):
        raise Conflict(
            f"notification {notification_id} is {row['state']}: only dead, suppressed or pending"
            " notifications can be retried",
            code="not_retryable",
        )
    ctx.wake_dispatcher()
    log.info("api: notification retry requested", notification=notification_id, remote=request.remote)
    row = await ctx.store.read(sql.notification, notification_id)
    return web.json_response({"notification": notification_dict(row)}, status=202)


# --- silences -------------------------------------------------------------------------------------


def silence_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{key: timestamp(row[key]) for key in ("until", "created_at", "expired_at")}}


async def silences(request: web.Request) -> web.Response:
    """Active silences; with all=true, expired ones too."""
    query = Query(request, "all")
    everything = query.boolean("all")
    rows = await context(request).store.read(outbox.silences, time.time(), everything)
    return web.json_response({"silences": [silence_dict(r) for r in rows]})


def _until(value: str, now: float) -> float:
    """A duration from now (`2h`, `1d`) or an ISO 8601 time, as `flowforged silence add --until` takes."""
    try:
        until = now + float(config.parse_duration(value))
    except ValueError:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise bad_body("until", f"{value!r}: expected a duration (2h, 3d) or an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise bad_body("until", f"{value!r}: an ISO 8601 time needs its offset (Z or +hh:mm)") from None
        until = moment.timestamp()
    if until <= now:
        raise bad_body("until", f"{value!r} is not in the future")
    if until >= LATEST:
        raise bad_body("until", f"{value!r} is too far in the future")
    return until


async def add_silence(request: web.Request) -> web.Response:
    Query(request)
    body = await json_body(request, "sources", "pipelines", "branches", "until", "comment")
    now = time.time()
    until = _until(body_str(body, "until", "2h", required=True), now)
    patterns = {name: body_globs(body, name) for name in ("sources", "pipelines", "branches")}
    comment = body_str(body, "comment", "")
    store = context(request).store
    silence_id = await store.write(
        outbox.add_silence, patterns["sources"], patterns["pipelines"], patterns["branches"], until, comment, now
    )
    log.info("api: silence added", silence=silence_id, until=timestamp(until), remote=request.remote, **patterns)
    row = await store.read(sql.silence, silence_id, now)
    return web.json_response(
        {"silence": silence_dict(row)}, status=201, headers={"Location": f"/api/v1/silences/{silence_id}"}
    )


async def silence(request: web.Request) -> web.Response:
    Query(request)
    return web.json_response({"silence": silence_dict(await _find_silence(request))})


async def _find_silence(request: web.Request) -> dict[str, Any]:
    silence_id = path_id(request)
    row = await context(request).store.read(sql.silence, silence_id, time.time())
    if row is None:
        raise NotFound(f"no silence {silence_id}")
    return row


async def expire_silence(request: web.Request) -> web.Response:
    """Ends a silence now. Expiring one that has already ended changes nothing and answers the same."""
    Query(request)
    await json_body(request)
    row = await _find_silence(request)
    if row["expired_at"] is None:
        await context(request).store.write(outbox.expire_silence, row["id"], time.time())
        log.info("api: silence expired", silence=row["id"], remote=request.remote)
        row = await _find_silence(request)
    return web.json_response({"silence": silence_dict(row)})
