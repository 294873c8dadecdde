"""A fake Slack incoming webhook that answers as Slack documents, for the Slack sink's tests.

- https://api.slack.com/messaging/webhooks: POST JSON to the webhook URL; 200 with body `ok`, or an
  error string in the body: 400 invalid_payload / invalid_blocks / no_text, 403 invalid_token /
  action_prohibited, 404 no_service / channel_not_found, 410 channel_is_archived, 500 rollup_error
  (https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks);
- 429 with a Retry-After header in seconds when posting too fast (https://api.slack.com/apis/rate-limits);
- Block Kit limits (https://api.slack.com/reference/block-kit/blocks): at most 50 blocks; a section
  has text or fields, text at most 3000 characters, at most 10 fields of 2000; a header is plain_text
  of at most 150; a context has 1 to 10 elements.

    slack = FakeSlack().script(["429:2", "200"])   # then 200 for ever
    server = await aiohttp_server(slack.app())
    url = str(server.make_url(slack.path))
    ...
    slack.messages      # the payloads Slack accepted
    slack.received      # every request, with its monotonic arrival time and the answer given

Script entries are `"STATUS"` or `"STATUS:DETAIL"`: for 429 DETAIL is Retry-After (default 1),
otherwise the error string (defaults below); `"hang"` never answers, for timeout tests. A scripted
200 still validates the payload, as Slack does, and answers 400 if it would not be posted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.receiver import Hang, Received, Script

ERRORS = {
    400: "invalid_payload",
    403: "invalid_token",
    404: "no_service",
    410: "channel_is_archived",
    429: "rate_limited",
    500: "rollup_error",
}
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10


def validate(payload: Any) -> str | None:
    """The error Slack would answer for this payload, or None if it would post it."""
    if not isinstance(payload, dict):
        return "invalid_payload"
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        return "invalid_payload"
    if not text and not blocks:
        return "no_text"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return "invalid_blocks"
    if not all(isinstance(block, dict) and _valid_block(block) for block in blocks):
        return "invalid_blocks"
    return None


def _text(obj: Any, limit: int, types: tuple[str, ...] = ("plain_text", "mrkdwn")) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("type") in types
        and isinstance(obj.get("text"), str)
        and 1 <= len(obj["text"]) <= limit
    )


def _valid_block(block: dict[str, Any]) -> bool:
    kind = block.get("type")
    if kind == "section":
        fields = block.get("fields")
        if "text" not in block and not fields:
            return False
        if "text" in block and not _text(block["text"], MAX_SECTION_TEXT):
            return False
        return fields is None or (
            isinstance(fields, list)
            and len(fields) <= MAX_FIELDS
            and all(_text(field, MAX_FIELD_TEXT) for field in fields)
        )
    if kind == "header":
        return _text(block.get("text"), MAX_HEADER_TEXT, ("plain_text",))
    if kind == "context":
        elements = block.get("elements")
        return (
            isinstance(elements, list)
            and 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS
            and all(
                isinstance(element, dict) and (_text(element, MAX_SECTION_TEXT) or element.get("type") == "image")
                for element in elements
            )
        )
    return kind == "divider"


class FakeSlack:
    """One incoming webhook. Requests to any other path get 404 no_service, as a revoked URL does."""

    PATH = "/services/T0FAKETEAM/B0FAKEHOOK/s3cr3tXXfakeXXtokenXX42"

    def __init__(self, path: str = PATH):
        self.path = path
        self.received: list[Received] = []
        self._script = Script()
        self._hang = Hang()

    def script(self, answers: Iterable[str]) -> FakeSlack:
        self._script.extend(answers)
        return self

    @property
    def messages(self) -> list[Any]:
        """The payloads Slack posted to the channel."""
        return [item.json() for item in self.received if item.status == 200]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        app.on_shutdown.append(self._hang.on_shutdown)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        headers: dict[str, str] = {}
        if request.path != self.path:
            status, text = 404, "no_service"
        else:
            answer = self._script.next()
            if answer.status is None:
                await self._hang.wait()
                answer = self._script.default
            status = answer.status or 200
            if status == 200:
                text = _check(body) or "ok"
                status = 200 if text == "ok" else 400
            elif status == 429:
                headers["Retry-After"] = answer.detail or "1"
                text = ERRORS[429]
            else:
                text = answer.detail or ERRORS.get(status, "error")
        self.received.append(Received(arrived, request.path_qs, CIMultiDict(request.headers), body, status, text))
        return web.Response(status=status, text=text, headers=headers)


def _check(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return "invalid_payload"
    return validate(payload)
