"""`POST /hooks/slack/actions`: a click on a button of a Slack app's message (plugins/sinks/slack_app.py).

In order, as for a webhook (docs/architecture.md): the body is read within the same bounds (size,
time, the budget of unauthenticated bytes); the request is authenticated with the signing secret of a
`slack` sink that has one, before anything else; only then is the payload read. Slack wants an answer
within 3 seconds, so the click is acknowledged at once and acted on after: the clicker must be allowed by
the rule that sent the message (`actions.allowed_users`), else they get a message only they see; the
operation goes through the same code as the control API's; it is recorded with who asked
(operation_requests), and the message shows who asked for what.

Slack's facts (https://api.slack.com/authentication/verifying-requests-from-slack): `X-Slack-Signature`
is `v0=` and the hex HMAC-SHA256, keyed with the app's signing secret, of `v0:<X-Slack-Request-Timestamp>:
<body>`; a timestamp more than five minutes from now is refused, against replay. A click is
`application/x-www-form-urlencoded` with a `payload` field holding a `block_actions` payload
(https://api.slack.com/reference/interaction-payloads/block-actions).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import urllib.parse
from typing import Any

from aiohttp import web

from flowforged import logs
from flowforged.errors import FlowForgeError, ProviderError, RateLimited
from flowforged.guard import OverBudget
from flowforged.store import outbox, threads
from flowforged.store import reads as sql
from flowforged.webhooks import BODY_TIMEOUT, BUDGET, MAX_BODY, error

log = logs.get("flowforged.slack")
SIGNATURE_WINDOW = 300.0
SILENCE = 3600.0
TASKS = web.AppKey("slack_action_tasks", set)
DONE = {"rerun_failed": "re-run of the failed jobs", "rerun": "re-run", "silence_1h": "silence for 1 h"}


class Refused(FlowForgeError):
    """A click that is authentic but cannot be acted on: the clicker is told why, only them."""


def verify(secret: str, headers: Any, body: bytes, now: float) -> bool:
    """Whether Slack signed this body with `secret`, less than five minutes from `now`."""
    timestamp, signature = headers.get("X-Slack-Request-Timestamp", ""), headers.get("X-Slack-Signature", "")
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    expected = "v0=" + hmac.digest(secret.encode(), f"v0:{timestamp}:".encode() + body, "sha256").hex()
    # Compared first and in constant time, whatever the timestamp: the answer's timing tells nothing.
    signed = hmac.compare_digest(expected.encode(), signature.encode())
    return signed and abs(now - sent) <= SIGNATURE_WINDOW


async def receive(request: web.Request) -> web.Response:
    apps = _slack_apps(request.app)
    if not apps:
        return error(404, "not_configured", "no slack sink has a signing_secret")
    body = await _bounded_body(request)
    if isinstance(body, web.Response):
        return body
    now = time.time()
    signed = [(name, mode) for name, mode in apps if verify(mode.signing_secret.get(), request.headers, body, now)]
    if not signed:
        log.warning("slack action rejected: signature or timestamp invalid", remote=request.remote)
        return error(401, "unauthorized", "signature missing, invalid or too old")
    name, mode = signed[0]
    try:
        fields = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
        payload = json.loads(fields["payload"][0])
        click = _click(payload)
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, RecursionError):
        return error(400, "invalid_payload", "expected a form with a block_actions payload")
    if click is None:
        return web.Response(status=200)  # another kind of interaction: nothing of ours
    task = asyncio.create_task(_act(request.app, name, mode, click, payload.get("message") or {}))
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.Response(status=200)


def _click(payload: Any) -> dict[str, str] | None:
    """What was clicked by whom on which message, from a block_actions payload; None for other kinds."""
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    action = payload["actions"][0]
    if action.get("action_id") not in DONE:
        return None
    user, container = payload["user"], payload["container"]
    return {
        "action": str(action["action_id"]),
        "user": str(user["id"]),
        "username": str(user.get("username") or user.get("name") or user["id"]),
        "channel": str(container["channel_id"]),
        "ts": str(container["message_ts"]),
    }


async def _act(app: web.Application, sink: str, mode: Any, click: dict[str, str], message: dict[str, Any]) -> None:
    try:
        await _act_on(app, sink, mode, click, message)
    except Exception:  # the click was acknowledged: nobody else would see this
        log.exception("slack: action failed", sink=sink, action=click["action"], user=click["user"])


async def _act_on(app: web.Application, sink: str, mode: Any, click: dict[str, str], message: dict[str, Any]) -> None:
    from flowforged.app import HTTP, STORE

    store, http = app[STORE], app[HTTP]
    request: dict[str, Any] = {"at": time.time(), "via": f"slack:{sink}", "user_id": click["user"]}
    request |= {"user_name": click["username"], "action": click["action"]}
    try:
        row = await _subject(app, sink, click)
        request |= {"source": row["source"], "pipeline": row["pipeline"], "branch": row["branch"], "run": row["run"]}
        await _allowed(app, mode, row["rule"], click["user"])
        await _operate(app, click, row)
    except Refused as exc:
        await _record(store, request, "refused", str(exc))
        await _tell(mode, http, click, f"FlowForge did not do the {DONE[click['action']]}: {exc}")
        return
    except (ProviderError, RateLimited) as exc:
        await _record(store, request, "failed", str(exc))
        await _tell(mode, http, click, f"The {DONE[click['action']]} failed: {exc}")
        return
    await _record(store, request, "accepted", None)
    line = f"{DONE[click['action']].capitalize()} requested by <@{click['user']}>"
    try:
        await mode.note(http, message | {"ts": click["ts"]}, click["channel"], line)
    except Exception as exc:  # the operation is done and recorded; only the note is missing
        log.warning("slack: the message was not updated", sink=sink, error=str(exc))


async def _subject(app: web.Application, sink: str, click: dict[str, str]) -> dict[str, Any]:
    """The notification behind the clicked message: its rule, source, pipeline, branch and run."""
    from flowforged.app import STORE

    thread = await app[STORE].read(threads.thread_of_message, click["channel"], click["ts"])
    if thread is None or thread["sink"] != sink or thread["notification"] is None:
        raise Refused("this message is not one FlowForge can act on")
    row = await app[STORE].read(sql.notification, thread["notification"])
    if row is None:
        raise Refused("the notification of this message is no longer stored")
    return row


async def _allowed(app: web.Application, mode: Any, rule_name: str, user: str) -> None:
    from flowforged.app import HTTP, PLANNER

    rule = next((rule for rule in app[PLANNER].rules if rule.name == rule_name), None)
    allowed = rule.actions.allowed_users if rule is not None else []
    if user in allowed:
        return
    for group in (item for item in allowed if item.startswith("S")):
        try:
            if await mode.in_group(app[HTTP], group, user):
                return
        except Exception as exc:  # a group that cannot be read allows nobody
            log.warning("slack: user group not read", group=group, error=str(exc))
    raise Refused(f"you are not allowed to act on the notifications of rule {rule_name!r} (actions.allowed_users)")


async def _operate(app: web.Application, click: dict[str, str], row: dict[str, Any]) -> None:
    from flowforged.api import API, CONTEXT
    from flowforged.api.reads import capabilities

    ctx = app[API][CONTEXT]
    action = click["action"]
    if action == "silence_1h":
        now = time.time()
        comment = f"from Slack by @{click['username']}"
        branches = [row["branch"] or ""]
        await ctx.store.write(
            outbox.add_silence, [row["source"]], [row["pipeline"]], branches, now + SILENCE, comment, now
        )
        return
    run = await ctx.store.read(sql.run, row["run"])
    if run is None:
        raise Refused("the run is no longer stored")
    failed_only = action == "rerun_failed"
    configured = ctx.config.source_configs.get(run["source"])
    if configured is None:
        raise Refused(f"source {run['source']} is no longer configured")
    refusal = capabilities(configured.type).refusal(configured.type, "rerun", {"failed_only": failed_only})
    if refusal is not None:
        raise Refused(refusal[1])
    log.info(
        "slack: re-run requested", run=run["id"], source=run["source"], user=click["user"], failed_only=failed_only
    )
    await ctx.operations.rerun(run, failed_only)


async def _record(store: Any, request: dict[str, Any], outcome: str, detail: str | None) -> None:
    await store.write(threads.record_request, request | {"outcome": outcome, "detail": detail})
    log.info(
        "slack: operation requested",
        action=request["action"],
        user=request["user_id"],
        outcome=outcome,
        detail=detail,
    )


async def _tell(mode: Any, http: Any, click: dict[str, str], text: str) -> None:
    try:
        await mode.tell(http, click["channel"], click["user"], text)
    except Exception as exc:
        log.warning("slack: ephemeral message not sent", error=str(exc))


async def _bounded_body(request: web.Request) -> bytes | web.Response:
    """The body, read within the webhooks' bounds: size, time and the unauthenticated bytes budget."""
    limit, budget = request.app[MAX_BODY], request.app[BUDGET]
    if request.content_length is not None and request.content_length > limit:
        return error(413, "too_large", f"the body is over the {limit}-byte limit (server.max_body_bytes)")
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            body = await budget.read(request.content, limit)
    except TimeoutError:
        return error(408, "timeout", "the request body was not received in time")
    except web.HTTPRequestEntityTooLarge:
        return error(413, "too_large", f"the body is over the {limit}-byte limit (server.max_body_bytes)")
    except OverBudget:
        return error(503, "busy", "too many requests are being received at once; retry later")
    budget.give(len(body))  # read: authenticated next, without awaiting
    return body


def _slack_apps(app: web.Application) -> list[tuple[str, Any]]:
    """The `slack` sinks that are Slack apps with a signing secret: clicks on their messages come here."""
    from flowforged.app import DISPATCHER

    dispatcher = app.get(DISPATCHER)
    sinks = dispatcher.sinks if dispatcher is not None else {}
    found = []
    for name, sink in sinks.items():
        mode = sink.app_mode() if callable(getattr(sink, "app_mode", None)) else None
        if mode is not None and mode.signing_secret is not None:
            found.append((name, mode))
    return found


async def _cancel_tasks(app: web.Application) -> None:
    for task in list(app[TASKS]):
        task.cancel()
    await asyncio.gather(*app[TASKS], return_exceptions=True)


def setup(app: web.Application) -> None:
    app[TASKS] = set()
    app.on_shutdown.append(_cancel_tasks)
    app.router.add_post("/hooks/slack/actions", receive)
