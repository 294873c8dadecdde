"""The `slack` sink as a Slack app (`bot_token` and `channel`): one breakage is one thread.

The broken message is the thread's parent, with buttons when the sink has a `signing_secret`; each
still-failing run replies in the thread; the fix edits the parent (fixed, by which commit, after how
long) and replies. The parent's ids are kept in the store (SinkContext.threads), so a fix days later,
after restarts, still finds its thread. Clicks come back to `POST /hooks/slack/actions`
(flowforged/slack_actions.py).

Slack facts this relies on:
- Web API methods answer HTTP 200 with `{"ok": true, ...}` or `{"ok": false, "error": "<code>"}`, and
  HTTP 429 with Retry-After when rate limited; limits are per method, per workspace
  (https://api.slack.com/web, https://api.slack.com/apis/rate-limits);
- chat.postMessage answers the message's `channel` id and `ts`; `thread_ts` posts a reply
  (https://api.slack.com/methods/chat.postMessage); chat.update edits a message by `channel` and `ts`
  (https://api.slack.com/methods/chat.update); both need the `chat:write` scope and, for chat.postMessage,
  the app in the channel (`not_in_channel` otherwise);
- chat.postMessage allows about one message per second per channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp

from flowforged.errors import PermanentSinkError, SinkError
from flowforged.http import retry_after
from flowforged.plugin import Notification, SinkContext
from flowforged.secrets import Secret
from flowforged_plugins.sinks import slack
from flowforged_plugins.sinks.webhook import transport_error

ACTIONS_BLOCK = "flowforge-actions"
BUTTONS = (("rerun_failed", "Re-run failed jobs"), ("rerun", "Re-run"), ("silence_1h", "Silence for 1 h"))

# Errors that are Slack's own trouble: the same call may work later.
RETRYABLE = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
# What to do about the others: sending again will not help until someone changes something.
HINTS = {
    "invalid_auth": "the bot token is not valid; install the app again and update bot_token",
    "not_authed": "no bot token was sent",
    "account_inactive": "the app's token belongs to a deactivated app or user",
    "token_revoked": "the bot token was revoked; install the app again",
    "token_expired": "the bot token expired; install the app again",
    "missing_scope": "the app needs the chat:write scope (and usergroups:read for user groups)",
    "channel_not_found": "no such channel, or a private one the app was not invited to",
    "not_in_channel": "the app is not in the channel: invite it (/invite @app-name)",
    "is_archived": "the channel is archived",
    "restricted_action": "a workspace admin restricts posting in this channel",
    "message_not_found": "the message was deleted",
    "cant_update_message": "the message cannot be edited by this app",
    "edit_window_closed": "the message is too old to be edited",
    "invalid_blocks": "Slack refused the message layout (a FlowForge bug; please report it)",
    "msg_too_long": "the message is too long (a FlowForge bug; please report it)",
    "no_text": "the message had no text (a FlowForge bug; please report it)",
}
# A parent that cannot be edited any more: the fix is then told in a message of its own.
GONE = {"message_not_found", "cant_update_message", "edit_window_closed", "thread_not_found"}


class SlackAPIError(PermanentSinkError):
    def __init__(self, method: str, error: str):
        super().__init__(f"Slack refused {method}: {error}; {HINTS.get(error, 'see the Slack API documentation')}")
        self.error = error


class WebAPI:
    """The Slack Web API with one bot token. A method that answered 429 is not called again before its
    Retry-After has passed: the call fails at once with that wait, which the dispatcher honours."""

    def __init__(self, api_url: str, token: Secret, clock: Callable[[], float] = time.time):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.clock = clock
        self._paused: dict[str, float] = {}

    async def call(self, http: aiohttp.ClientSession, method: str, body: dict[str, Any], form: bool = False) -> Any:
        wait = self._paused.get(method, 0.0) - self.clock()
        if wait > 0:
            raise SinkError(f"Slack is rate limiting {method} (HTTP 429)", retry_after=wait)
        headers = {"Authorization": f"Bearer {self.token.get()}"}
        # JSON for the methods that write; form-encoded for the ones that read (https://api.slack.com/web#posting_json).
        send: dict[str, Any] = {"data": body} if form else {"json": body}
        try:
            async with http.post(
                f"{self.api_url}/{method}", headers=headers, allow_redirects=False, **send
            ) as response:
                status, wait = response.status, retry_after(response.headers, time.time())
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, "Slack") from None
        return self.answer(method, status, data, wait)

    def answer(self, method: str, status: int, data: Any, wait: float | None) -> Any:
        if status == 429:
            # Slack always sends Retry-After with a 429; a second is its pace for posting anyway.
            wait = wait if wait is not None else 1.0
            self._paused[method] = self.clock() + wait
            raise SinkError(f"Slack is rate limiting {method} (HTTP 429)", retry_after=wait)
        if status >= 500 or not isinstance(data, dict):
            raise SinkError(f"Slack answered {method} with HTTP {status}")
        if data.get("ok") is True:
            return data
        error = str(data.get("error") or "unknown_error")[:64]
        if error in RETRYABLE:
            raise SinkError(f"Slack could not do {method} for now: {error}")
        raise SlackAPIError(method, error)


class AppMode:
    """One `slack` sink configured as an app: what it posts, and the Web API it posts through."""

    def __init__(self, name: str, config: slack.SlackConfig, clock: Callable[[], float] = time.time):
        assert config.bot_token is not None and config.channel is not None  # noqa: S101 - SlackConfig._mode saw to it
        self.name = name
        self.channel = config.channel
        self.signing_secret = config.signing_secret
        self.api = WebAPI(config.api_url, config.bot_token, clock)
        self.clock = clock

    async def send(self, notification: Notification, context: SinkContext) -> str:
        if context.threads is None:  # outside the daemon (notify-test): a message, no thread to keep
            answer = await self._post(context, self._message(notification))
            return f"posted {answer['ts']}"
        key = (notification.source, notification.pipeline, notification.branch)
        thread = await context.threads.open(self.name, *key)
        if thread is not None and notification.transition == "fixed":
            return await self._fixed(notification, context, thread)
        if thread is not None and notification.transition == "still_failing":
            answer = await self._post(context, self._message(notification), thread["ts"])
            return f"replied in thread {thread['ts']}: {answer['ts']}"
        if notification.transition == "fixed":  # its breakage was told before this sink kept threads
            answer = await self._post(context, self._message(notification))
            return f"posted {answer['ts']}"
        return await self._start(notification, context)

    async def _start(self, notification: Notification, context: SinkContext) -> str:
        message = self._message(notification, buttons=self.signing_secret is not None)
        answer = await self._post(context, message)
        now = self.clock()
        await context.threads.start(
            {
                "sink": self.name,
                "source": notification.source,
                "pipeline": notification.pipeline,
                "branch": notification.branch,
                "channel": answer["channel"],
                "ts": answer["ts"],
                "notification": notification.id,
                "sha": notification.sha,
                "opened_at": now,
                "broken_at": _epoch(notification.finished_at) or now,
            }
        )
        return f"posted {answer['ts']} (thread of the breakage)"

    async def _fixed(self, notification: Notification, context: SinkContext, thread: dict[str, Any]) -> str:
        """The parent edited to show the fix, then a reply. Sent again after a failure, the edit is the
        same and the reply is posted once the edit has worked."""
        fixed_at = _epoch(notification.finished_at) or self.clock()
        after = slack.human_duration(max(fixed_at - thread["broken_at"], 0.0))
        text, blocks = fixed_parent(notification, thread, after)
        try:
            await self.api.call(
                context.http,
                "chat.update",
                {"channel": thread["channel"], "ts": thread["ts"], "text": text, "blocks": blocks},
            )
            answer = await self._post(
                context, {"text": text, "blocks": [fixed_reply(notification, after)]}, thread["ts"]
            )
        except SlackAPIError as exc:
            if exc.error not in GONE:
                raise
            context.log.warning(
                "slack: the breakage's message is gone; the fix is a message of its own", sink=self.name
            )
            answer = await self._post(context, self._message(notification))
        await context.threads.close(thread["id"], notification.sha, self.clock())
        return f"fixed thread {thread['ts']}: {answer['ts']}"

    async def _post(self, context: SinkContext, message: dict[str, Any], thread_ts: str | None = None) -> Any:
        body = {"channel": self.channel, "unfurl_links": False, **message}
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
        return await self.api.call(context.http, "chat.postMessage", body)

    def _message(self, notification: Notification, buttons: bool = False) -> dict[str, Any]:
        rendered = slack.render(notification)
        if buttons:
            rendered["blocks"] = rendered["blocks"][: slack.MAX_BLOCKS - 1] + [actions_block(notification.id)]
        return rendered

    # --- what a click changes (flowforged/slack_actions.py) ---------------------------------------

    async def note(self, http: aiohttp.ClientSession, message: dict[str, Any], channel: str, line: str) -> None:
        """Add a line under a message (`re-run requested by @name`), keeping its buttons."""
        blocks = [block for block in message.get("blocks") or [] if isinstance(block, dict)]
        at = next((i for i, block in enumerate(blocks) if block.get("type") == "actions"), len(blocks))
        note = {"type": "context", "elements": [{"type": "mrkdwn", "text": slack.truncate(line, 3000)}]}
        blocks = (blocks[:at] + [note] + blocks[at:])[-slack.MAX_BLOCKS :]
        body = {"channel": channel, "ts": message["ts"], "text": message.get("text") or line, "blocks": blocks}
        await self.api.call(http, "chat.update", body)

    async def tell(self, http: aiohttp.ClientSession, channel: str, user: str, text: str) -> None:
        """A message only `user` sees (a refusal, an error)."""
        await self.api.call(http, "chat.postEphemeral", {"channel": channel, "user": user, "text": text})

    async def in_group(self, http: aiohttp.ClientSession, group: str, user: str) -> bool:
        answer = await self.api.call(http, "usergroups.users.list", {"usergroup": group}, form=True)
        return user in (answer.get("users") or [])


def actions_block(notification_id: int) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": ACTIONS_BLOCK,
        "elements": [
            {
                "type": "button",
                "action_id": action,
                "text": {"type": "plain_text", "text": label},
                "value": str(notification_id),
            }
            for action, label in BUTTONS
        ],
    }


def fixed_parent(notification: Notification, thread: dict[str, Any], after: str) -> tuple[str, list[dict[str, Any]]]:
    """The breakage's message once fixed: what broke, and what fixed it after how long."""
    main = slack.render(notification)
    headline = main["blocks"][0]
    lines = [f"Was broken since `{slack.escape(str(thread['sha'] or '')[:7])}`" if thread["sha"] else "Was broken"]
    lines[0] += f" · fixed after *{after}*"
    lines.append(_commit_line("Fixed by", notification))
    blocks = [headline, slack._section("\n".join(line for line in lines if line))]
    return slack.fallback_text(notification) + f" after {after}", blocks


def fixed_reply(notification: Notification, after: str) -> dict[str, Any]:
    line = f"🟢 Fixed after *{after}*"
    by = _commit_line("by", notification)
    return slack._section(f"{line} {by}".rstrip() if by else line)


def _commit_line(label: str, notification: Notification) -> str:
    if not notification.sha:
        return ""
    first = (notification.commit_message or "").strip().splitlines()
    subject = slack.escape(slack.truncate(first[0], slack.MAX_COMMIT_LINE)) if first else ""
    commit = slack._link(notification.url, f"`{slack.escape(notification.sha[:7])}`")
    author = f" ({slack.escape(slack.truncate(notification.author, slack.MAX_NAME))})" if notification.author else ""
    return f"{label} {commit} {subject}{author}".rstrip()


def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
