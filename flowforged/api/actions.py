"""The endpoints that change something: provider operations (rerun, cancel, trigger) through the
Operations seam, and the notifications and silences of the outbox."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from aiohttp import web

from flowforged import config
from flowforged.api import bodies, schemas
from flowforged.api.base import (
    Conflict,
    NotFound,
    Query,
    Unprocessable,
    answer,
    bad_body,
    context,
    json_body,
    log,
    page,
    path_id,
)
from flowforged.api.reads import capabilities, cursor_id, find_pipeline, find_run
from flowforged.api.times import timestamp
from flowforged.store import outbox
from flowforged.store import reads as sql

LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last time RFC 3339 (and gmtime) can show

# --- provider operations --------------------------------------------------------------------------
# Whether a run can be re-run or cancelled is the provider's to say (our copy of its state may lag):
# its refusal comes back as a ProviderError, 409 for a finished run, 403 for a token without the right.
# Whether the provider has an option at all is known here: one it has not is refused before asking.


def _honoured(request: web.Request, source: str, action: str, options: dict[str, Any]) -> None:
    """Conflict if the source is gone; Unprocessable naming the option its provider cannot honour."""
    configured = context(request).config.source_configs.get(source)
    if configured is None:
        raise Conflict(f"source {source} is no longer configured", code="unknown_source")
    refusal = capabilities(configured.type).refusal(configured.type, action, options)
    if refusal is not None:
        option, reason = refusal
        raise Unprocessable(f"{option}: {reason} (source {source})")


async def rerun(request: web.Request) -> web.Response:
    Query(request)
    failed_only = (await json_body(request, bodies.RerunRequest)).failed_only
    return await _run_action(request, "rerun", failed_only=failed_only)


async def cancel(request: web.Request) -> web.Response:
    Query(request)
    force = (await json_body(request, bodies.CancelRequest)).force
    return await _run_action(request, "cancel", force=force)


async def _run_action(request: web.Request, action: str, **options: Any) -> web.Response:
    """Re-run or cancel one run: the two differ only in the operation and its one option."""
    run = await find_run(request)
    _honoured(request, run["source"], action, options)
    log.info(
        f"api: {action} requested",
        run=run["id"],
        source=run["source"],
        pipeline=run["pipeline"],
        remote=request.remote,
        **options,
    )
    await getattr(context(request).operations, action)(run, *options.values())
    return answer(schemas.Accepted, {"status": "accepted", "action": action, "run": run}, status=202)


async def trigger(request: web.Request) -> web.Response:
    Query(request)
    body = await json_body(request, bodies.TriggerRequest)
    pipeline = await find_pipeline(request)
    _honoured(request, pipeline["source"], "trigger", {"inputs": body.inputs, "variables": body.variables})
    log.info(
        "api: trigger requested",
        source=pipeline["source"],
        pipeline=pipeline["pipeline"],
        ref=body.ref,
        inputs=sorted(body.inputs),
        variables=sorted(body.variables),
        remote=request.remote,
    )
    run = await context(request).operations.trigger(
        pipeline["source"], pipeline["pipeline"], body.ref, body.inputs, body.variables
    )
    return answer(schemas.TriggerAccepted, {"status": "accepted", "action": "trigger", "run": run}, status=202)


# --- notifications --------------------------------------------------------------------------------


async def notifications(request: web.Request) -> web.Response:
    query = Query(request, "state", "limit", "cursor")
    limit = query.limit()
    state, before = query.choice("state", outbox.STATES), cursor_id(query, "notifications")
    rows = await context(request).store.read(
        lambda conn: outbox.notifications(conn, state=state, before=before, limit=limit + 1)
    )
    items, cursor = page(rows, limit, "notifications")
    return answer(schemas.NotificationPage, {"notifications": items, "next_cursor": cursor})


async def retry(request: web.Request) -> web.Response:
    """Send a dead (or suppressed, or still pending) notification again, now."""
    Query(request)
    await json_body(request, bodies.EmptyRequest)
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
    return answer(schemas.OneNotification, {"notification": row}, status=202)


# --- silences -------------------------------------------------------------------------------------


async def silences(request: web.Request) -> web.Response:
    """Active silences; with all=true, expired ones too."""
    query = Query(request, "all")
    everything = query.boolean("all")
    rows = await context(request).store.read(outbox.silences, time.time(), everything)
    return answer(schemas.SilenceList, {"silences": rows})


def _until(value: str, now: float) -> float:
    """A duration from now (`2h`, `1d`) or an RFC 3339 time (the model checked which), in the future."""
    try:
        until = now + float(config.parse_duration(value))
    except ValueError:
        try:
            until = datetime.fromisoformat(value.upper()).timestamp()
        except (ValueError, OverflowError):
            raise bad_body("until", f"{value!r} is not a time (a day that does not exist?)") from None
    if until <= now:
        raise Unprocessable(f"until: {value!r} is not in the future", code="invalid_body")
    if until >= LATEST:
        raise Unprocessable(f"until: {value!r} is too far in the future", code="invalid_body")
    return until


async def add_silence(request: web.Request) -> web.Response:
    Query(request)
    body = await json_body(request, bodies.SilenceRequest)
    now = time.time()
    until = _until(body.until, now)
    patterns = {"sources": body.sources, "pipelines": body.pipelines, "branches": body.branches}
    comment = body.comment
    store = context(request).store
    silence_id = await store.write(
        outbox.add_silence, patterns["sources"], patterns["pipelines"], patterns["branches"], until, comment, now
    )
    log.info("api: silence added", silence=silence_id, until=timestamp(until), remote=request.remote, **patterns)
    row = await store.read(sql.silence, silence_id, now)
    return answer(
        schemas.OneSilence, {"silence": row}, status=201, headers={"Location": f"/api/v1/silences/{silence_id}"}
    )


async def silence(request: web.Request) -> web.Response:
    Query(request)
    return answer(schemas.OneSilence, {"silence": await _find_silence(request)})


async def _find_silence(request: web.Request) -> dict[str, Any]:
    silence_id = path_id(request)
    row = await context(request).store.read(sql.silence, silence_id, time.time())
    if row is None:
        raise NotFound(f"no silence {silence_id}")
    return row


async def expire_silence(request: web.Request) -> web.Response:
    """Ends a silence now. Expiring one that has already ended changes nothing and answers the same."""
    Query(request)
    await json_body(request, bodies.EmptyRequest)
    row = await _find_silence(request)
    if row["expired_at"] is None:
        await context(request).store.write(outbox.expire_silence, row["id"], time.time())
        log.info("api: silence expired", silence=row["id"], remote=request.remote)
        row = await _find_silence(request)
    return answer(schemas.OneSilence, {"silence": row})
