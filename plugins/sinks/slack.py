"""The `slack` sink: a Block Kit message, with a text fallback, posted to an incoming webhook.

Slack facts this relies on:
- a message has at most 50 blocks, a section's text at most 3000 characters
  (https://api.slack.com/reference/block-kit/blocks);
- in mrkdwn, &, < and > must be escaped as &amp; &lt; &gt;, and links are written <url|label>
  (https://api.slack.com/reference/surfaces/formatting#escaping);
- an incoming webhook answers 200 "ok", or an error string in the body: 400 invalid_payload,
  403 action_prohibited / invalid_token, 404 channel_not_found / no_service, 410 channel_is_archived,
  429 with Retry-After, 500 rollup_error (https://api.slack.com/messaging/webhooks#handling_errors,
  https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks);
- it accepts about one message per second (https://api.slack.com/apis/rate-limits).

The webhook URL is itself the credential: it never appears in a message, an error or a log line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
import pydantic

from flowforged.config import SecretValue, SinkConfig
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.http import retry_after
from flowforged.plugin import Notification, Sink, SinkContext
from flowforged.secrets import Secret
from flowforged_plugins.sinks.webhook import body_excerpt, check_http_url, transport_error, url_secret_parts

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
# What fits a message people read, well inside Slack's limits: the rest is counted, not listed.
MAX_OTHERS_LISTED = 20
MAX_JOBS_LISTED = 20
MAX_NAME = 150
MAX_COMMIT_LINE = 300

TRANSITIONS = {
    "broken": ("🔴", "Broken"),
    "still_failing": ("🔴", "Still failing"),
    "fixed": ("🟢", "Fixed"),
}

# Bodies that mean the message or the webhook itself is wrong: sending again will not help.
PERMANENT_ERRORS = {
    "invalid_payload": "Slack could not read the message (a FlowForge bug; please report it)",
    "invalid_blocks": "Slack refused the message layout (a FlowForge bug; please report it)",
    "no_text": "the message had no text (a FlowForge bug; please report it)",
    "channel_not_found": "the webhook's channel no longer exists",
    "channel_is_archived": "the webhook's channel is archived; unarchive it or create a new webhook",
    "no_service": "the webhook was disabled or removed; create a new one",
    "invalid_token": "the webhook URL is not valid any more; create a new one",
    "action_prohibited": "a workspace admin restricts this webhook",
    "posting_to_general_channel_denied": "only admins may post to that channel",
    "team_disabled": "the Slack workspace is disabled",
}


class SlackConfig(SinkConfig):
    """An incoming webhook (`webhook_url`), or a Slack app (`bot_token` and `channel`: threads and
    buttons, plugins/sinks/slack_app.py)."""

    webhook_url: SecretValue | None = None
    bot_token: SecretValue | None = None
    channel: str | None = None  # a channel id (C...): a name changes when the channel is renamed
    signing_secret: SecretValue | None = None  # buttons on the broken message, clicks verified with it
    api_url: str = "https://slack.com/api"

    @pydantic.field_validator("webhook_url")
    @classmethod
    def _url(cls, value: Secret | None) -> Secret | None:
        if value is not None and value.origin != "missing":  # commands that need no secret resolve leniently
            check_http_url(value.get())
        return value

    @pydantic.field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        check_http_url(value)
        return value

    @pydantic.model_validator(mode="after")
    def _mode(self) -> SlackConfig:
        """An incoming webhook or an app, each with its own keys; the error names the key at fault."""
        if self.webhook_url is not None and self.bot_token is not None:
            raise ValueError("bot_token: give webhook_url (an incoming webhook) or bot_token (a Slack app), not both")
        if self.bot_token is not None and not self.channel:
            raise ValueError("channel: missing: a Slack app posts to a channel id (C...)")
        for key in ("channel", "signing_secret"):
            if self.bot_token is None and getattr(self, key):
                raise ValueError(f"{key}: only for a Slack app (bot_token)")
        if self.webhook_url is None and self.bot_token is None:
            raise ValueError("webhook_url: missing: give webhook_url, or bot_token and channel for a Slack app")
        return self


class SlackSink(Sink):
    type = "slack"
    config_model = SlackConfig
    min_interval: ClassVar[float] = 1.0  # one message per second per incoming webhook
    config: SlackConfig

    _app: Any = None  # the Slack app mode (slack_app.AppMode), made when first needed

    def app_mode(self) -> Any:
        """The Slack app this sink is, or None for an incoming webhook."""
        if self._app is None and self.config.bot_token is not None:
            from flowforged_plugins.sinks.slack_app import AppMode  # it builds on this module's rendering

            self._app = AppMode(self.name, self.config)
        return self._app

    async def send(self, notification: Notification, context: SinkContext) -> str:
        if self.app_mode() is not None:
            return await self._app.send(notification, context)
        assert self.config.webhook_url is not None  # noqa: S101 - SlackConfig._mode saw to it
        body = json.dumps(render(notification), ensure_ascii=False).encode()
        try:
            async with context.http.post(
                self.config.webhook_url.get(),
                data=body,
                allow_redirects=False,
                headers={"Content-Type": "application/json; charset=utf-8"},
            ) as response:
                status = response.status
                text = (await response.text(errors="replace")).strip()
                wait = retry_after(response.headers, time.time())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, "Slack") from None
        return answer(status, text, wait, url_secret_parts(self.config.webhook_url.get()))


def answer(status: int, text: str, wait: float | None, secrets: Sequence[str] = ()) -> str:
    """Slack's answer as a string for people, or the error that says what to do next. A proxy in
    front of Slack may quote the request path, which is the webhook's credential: `secrets` go."""
    error = text if re.fullmatch(r"[a-z0-9_]{1,64}", text) else body_excerpt(text, 100, secrets)
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        # Slack always sends Retry-After with a 429; one second is its documented pace anyway.
        raise SinkError("Slack is rate limiting this webhook (HTTP 429)", retry_after=wait if wait is not None else 1.0)
    if status >= 500 and error not in PERMANENT_ERRORS:
        raise SinkError(f"Slack answered HTTP {status}: {error or 'no details'}")
    hint = PERMANENT_ERRORS.get(error, "Slack will not accept this message")
    raise PermanentSinkError(f"Slack refused the message: {error or 'no details'} (HTTP {status}); {hint}")


# --- rendering (pure) --------------------------------------------------------------------------


def render(notification: Notification) -> dict[str, Any]:
    """The webhook payload: Block Kit `blocks` and the `text` shown in notifications and old clients."""
    main = _fields(notification)
    blocks: list[dict[str, Any]] = [_section(_headline(main)), _section(_details(main))]
    if main["others"]:
        blocks.append({"type": "divider"})
        blocks += [_section(text) for text in _pack(_other_lines(main["others"]))]
    if main["source"]:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": escape(f"FlowForge · source {main['source']}")}],
            }
        )
    return {"text": fallback_text(notification), "blocks": blocks[:MAX_BLOCKS]}


def fallback_text(notification: Notification) -> str:
    main = _fields(notification)
    emoji, label = TRANSITIONS.get(main["transition"], ("⚪", main["transition"]))
    text = f"{emoji} {label}: {main['name']}"
    if main["branch"]:
        text += f" on {main['branch']}"
    if main["sha"]:
        text += f" ({main['sha'][:7]})"
    if main["others"]:
        text += f", and {_count(len(main['others']), 'more pipeline')} of this commit"
    return escape(truncate(text, MAX_SECTION_TEXT))


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def human_duration(seconds: float) -> str:
    """`4m 12s`, `1h 2m`, `45s`: what a person reads at a glance."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    if hours:
        parts = parts[:2] if minutes else parts[:1]  # seconds do not matter after an hour
    return " ".join(parts) or "0s"


def _fields(item: Notification | Mapping[str, Any]) -> dict[str, Any]:
    """A notification or one of its `others` (a dict with the same keys), with display names."""
    if isinstance(item, Mapping):
        data = item
    else:
        data = {field.name: getattr(item, field.name) for field in dataclasses.fields(item)}
    pipeline = str(data.get("pipeline") or "")
    fields = {
        key: data.get(key)
        for key in (
            "transition",
            "source",
            "branch",
            "run_id",
            "url",
            "sha",
            "commit_message",
            "author",
            "duration_seconds",
        )
    }
    fields["transition"] = str(fields["transition"] or "")
    fields["pipeline"] = pipeline
    fields["name"] = truncate(str(data.get("pipeline_name") or pipeline.rpartition("/")[2] or "pipeline"), MAX_NAME)
    fields["attempt"] = data.get("attempt") or 1
    fields["failed_jobs"] = [str(job) for job in data.get("failed_jobs") or ()]
    fields["others"] = list(data.get("others") or ())
    return fields


def _headline(item: dict[str, Any]) -> str:
    emoji, label = TRANSITIONS.get(item["transition"], ("⚪", escape(item["transition"])))
    text = f"{emoji} *{label}:* *{escape(item['name'])}*"
    if item["branch"]:
        text += f" on `{escape(truncate(str(item['branch']), MAX_NAME))}`"
    second = [f"`{escape(truncate(item['pipeline'], 2 * MAX_NAME))}`"] if item["pipeline"] else []
    if item["run_id"]:
        run = f"run {escape(truncate(str(item['run_id']), 40))}"
        if item["attempt"] > 1:
            run += f" (attempt {item['attempt']})"
        second.append(_link(item["url"], run))
    elif item["url"]:
        second.append(_link(item["url"], "run"))
    return text + ("\n" + " · ".join(second) if second else "")


def _details(item: dict[str, Any]) -> str:
    lines = []
    if item["sha"]:
        first = (item["commit_message"] or "").strip().splitlines()
        subject = escape(truncate(first[0], MAX_COMMIT_LINE)) if first else ""
        lines.append(f"*Commit:* `{escape(str(item['sha'])[:7])}` {subject}".rstrip())
    if item["author"]:
        lines.append(f"*Author:* {escape(truncate(str(item['author']), MAX_NAME))}")
    if item["duration_seconds"] is not None:
        lines.append(f"*Duration:* {human_duration(item['duration_seconds'])}")
    if item["failed_jobs"]:
        lines.append(f"*Failed jobs:* {_names(item['failed_jobs'], MAX_JOBS_LISTED, 1500)}")
    return "\n".join(lines) or "No details."


def _other_lines(others: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for other in others[:MAX_OTHERS_LISTED]:
        item = _fields(other)
        emoji, label = TRANSITIONS.get(item["transition"], ("⚪", escape(item["transition"])))
        line = f"{emoji} {label}: {_link(item['url'], '*' + escape(item['name']) + '*')}"
        if item["pipeline"]:
            line += f" `{escape(truncate(item['pipeline'], 2 * MAX_NAME))}`"
        if item["duration_seconds"] is not None:
            line += f" · {human_duration(item['duration_seconds'])}"
        if item["failed_jobs"]:
            line += f" · failed: {_names(item['failed_jobs'], 5, 400)}"
        lines.append(line)
    if len(others) > MAX_OTHERS_LISTED:
        lines.append(f"…and {_count(len(others) - MAX_OTHERS_LISTED, 'more pipeline')} of this commit")
    return lines


def _names(names: list[str], most: int, budget: int) -> str:
    """`build, test and 58 more`: as many escaped names as fit in `budget` characters."""
    shown: list[str] = []
    used = 0
    for name in names[:most]:
        text = escape(truncate(name, 100))
        if shown and used + len(text) + 2 > budget:
            break
        shown.append(text)
        used += len(text) + 2
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def _pack(lines: Iterable[str]) -> list[str]:
    """Lines joined into as few section texts as Slack allows."""
    texts: list[str] = []
    for line in lines:
        if texts and len(texts[-1]) + 1 + len(line) <= MAX_SECTION_TEXT:
            texts[-1] += "\n" + line
        else:
            texts.append(line)
    return texts


def _link(url: str | None, label: str) -> str:
    """A mrkdwn link; `label` is already escaped. `|` and `>` would end the link early."""
    if not url:
        return label
    target = str(url).replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{target}|{label}>"


def _section(text: str) -> dict[str, Any]:
    # Every part is bounded above; this is the last guard of Slack's limit.
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, MAX_SECTION_TEXT)}}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
