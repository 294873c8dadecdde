"""A fake Slack Web API and Slack's interactivity requests, as Slack documents them, for the Slack app sink.

Web API (https://api.slack.com/web):
- methods are POSTed to https://slack.com/api/<method> with `Authorization: Bearer <token>` and a JSON
  body (`Content-Type: application/json; charset=utf-8`);
- the answer is HTTP 200 with `{"ok": true, ...}`, or `{"ok": false, "error": "<code>"}` for an error,
  HTTP 200 too: `invalid_auth`, `not_authed`, `channel_not_found`, `not_in_channel`, `message_not_found`,
  `invalid_blocks`, `no_text`;
- a rate-limited call is HTTP 429 with `Retry-After` (seconds) and `{"ok": false, "error": "ratelimited"}`
  (https://api.slack.com/apis/rate-limits); limits are per method, per workspace, per app;
- chat.postMessage answers `ok`, `channel`, `ts` (the message id) and `message`; `thread_ts` makes it a
  reply (https://api.slack.com/methods/chat.postMessage); chat.update takes `channel` and `ts`
  (https://api.slack.com/methods/chat.update); chat.postEphemeral takes `channel`, `user` and answers
  `message_ts` (https://api.slack.com/methods/chat.postEphemeral); usergroups.users.list takes
  `usergroup` and answers `users` (https://api.slack.com/methods/usergroups.users.list).

Interactivity (https://api.slack.com/reference/interaction-payloads/block-actions): a click is POSTed to
the app's Request URL as `application/x-www-form-urlencoded` with one field, `payload`, the JSON of a
`block_actions` payload; it is signed (https://api.slack.com/authentication/verifying-requests-from-slack):
`X-Slack-Request-Timestamp: <unix seconds>` and `X-Slack-Signature: v0=<hex HMAC-SHA256 of
"v0:<timestamp>:<body>" keyed with the app's signing secret>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
import urllib.parse
from collections import defaultdict, deque
from typing import Any

from aiohttp import web

from tests.fakes.slack import _valid_block

MAX_BUTTON_TEXT = 75
MAX_ACTION_ID = 255
MAX_BUTTON_VALUE = 2000


@dataclasses.dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: int = 0

    def all_text(self) -> str:
        """Everything a person reads in the message: its text and the text of its blocks."""
        return self.text + "\n" + json.dumps(self.blocks, ensure_ascii=False)

    def buttons(self) -> list[str]:
        return [
            element["text"]["text"]
            for block in self.blocks
            if block.get("type") == "actions"
            for element in block["elements"]
        ]


class FakeSlackAPI:
    def __init__(self, token: str, channels: dict[str, bool] | None = None):
        self.token = token
        self.channels = channels if channels is not None else {"C0FLOWFORGE": True}  # id: the bot is a member
        self.messages: list[Message] = []  # in the order posted
        self.ephemeral: list[dict[str, Any]] = []
        self.calls: list[tuple[str, int, dict[str, Any]]] = []  # (method, HTTP status, body)
        self.usergroups: dict[str, list[str]] = {}
        self._faults: dict[str, deque[tuple[int, str, str | None]]] = defaultdict(deque)
        self._clock = 1_800_000_000

    # --- scripting --------------------------------------------------------------------------------
    def rate_limit_next(self, method: str, n: int = 1, retry_after: int = 1) -> None:
        for _ in range(n):
            self._faults[method].append((429, "ratelimited", str(retry_after)))

    def fail_next(self, method: str, error: str, n: int = 1, status: int = 200) -> None:
        for _ in range(n):
            self._faults[method].append((status, error, None))

    # --- what the channel shows -------------------------------------------------------------------
    def parents(self, channel: str | None = None) -> list[Message]:
        return [m for m in self.messages if m.thread_ts is None and channel in (None, m.channel)]

    def replies(self, parent: Message) -> list[Message]:
        return [m for m in self.messages if m.thread_ts == parent.ts and m.channel == parent.channel]

    def method_calls(self, method: str) -> list[dict[str, Any]]:
        return [body for name, status, body in self.calls if name == method and status == 200]

    # --- server -----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self._method)
        return app

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            body = await request.json() if request.content_type == "application/json" else dict(await request.post())
        except ValueError:
            return self._answer(method, {}, {"ok": False, "error": "invalid_json"})
        if self._faults[method]:
            status, error, retry_after = self._faults[method].popleft()
            headers = {"Retry-After": retry_after} if retry_after else {}
            return self._answer(method, body, {"ok": False, "error": error}, status, headers)
        auth = request.headers.get("Authorization", "")
        if not auth:
            return self._answer(method, body, {"ok": False, "error": "not_authed"})
        if not hmac.compare_digest(auth, f"Bearer {self.token}"):
            return self._answer(method, body, {"ok": False, "error": "invalid_auth"})
        handler = {
            "chat.postMessage": self._post,
            "chat.update": self._update,
            "chat.postEphemeral": self._ephemeral,
            "usergroups.users.list": self._usergroup,
        }.get(method)
        if handler is None:
            return self._answer(method, body, {"ok": False, "error": "unknown_method"}, 404)
        return self._answer(method, body, handler(body))

    def _answer(
        self, method: str, body: dict[str, Any], data: dict[str, Any], status: int = 200, headers: Any = None
    ) -> web.Response:
        self.calls.append((method, status, body))
        return web.json_response(data, status=status, headers=headers)

    def _channel_error(self, channel: Any) -> str | None:
        if channel not in self.channels:
            return "channel_not_found"
        return None if self.channels[channel] else "not_in_channel"

    def _content_error(self, body: dict[str, Any]) -> str | None:
        text, blocks = body.get("text"), body.get("blocks")
        if not text and not blocks:
            return "no_text"
        if blocks is not None and not (isinstance(blocks, list) and all(_valid(block) for block in blocks)):
            return "invalid_blocks"
        return None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        error = self._channel_error(body.get("channel")) or self._content_error(body)
        if error:
            return {"ok": False, "error": error}
        thread_ts = body.get("thread_ts")
        if thread_ts is not None and not self._find(body["channel"], thread_ts):
            return {"ok": False, "error": "thread_not_found"}
        self._clock += 1
        message = Message(body["channel"], f"{self._clock}.000100", body.get("text") or "", body.get("blocks") or [])
        message.thread_ts = thread_ts
        self.messages.append(message)
        return {"ok": True, "channel": message.channel, "ts": message.ts, "message": _shown(message)}

    def _update(self, body: dict[str, Any]) -> dict[str, Any]:
        error = self._channel_error(body.get("channel")) or self._content_error(body)
        if error:
            return {"ok": False, "error": error}
        message = self._find(body["channel"], body.get("ts"))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.text, message.blocks = body.get("text") or "", body.get("blocks") or []
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _ephemeral(self, body: dict[str, Any]) -> dict[str, Any]:
        error = self._channel_error(body.get("channel")) or self._content_error(body)
        if error:
            return {"ok": False, "error": error}
        if not body.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        self.ephemeral.append(body)
        self._clock += 1
        return {"ok": True, "message_ts": f"{self._clock}.000200"}

    def _usergroup(self, body: dict[str, Any]) -> dict[str, Any]:
        group = body.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _find(self, channel: str, ts: Any) -> Message | None:
        return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    # --- what Slack sends the app when someone clicks ---------------------------------------------
    def click(
        self,
        message: Message,
        action_id: str,
        user: tuple[str, str],
        signing_secret: str,
        *,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The signed request Slack sends for a click on a button of `message` by `user` (id, username)."""
        button = next(
            element
            for block in message.blocks
            if block.get("type") == "actions"
            for element in block["elements"]
            if element["action_id"] == action_id
        )
        payload = {
            "type": "block_actions",
            "user": {"id": user[0], "username": user[1], "name": user[1], "team_id": "T0FAKETEAM"},
            "api_app_id": "A0FLOWFORGE",
            "token": "deprecated-verification-token",
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
            },
            "trigger_id": "1234.5678.abcd",
            "team": {"id": "T0FAKETEAM", "domain": "fake"},
            "channel": {"id": message.channel, "name": "ci"},
            "message": _shown(message),
            "response_url": "https://hooks.slack.com/actions/T0FAKETEAM/1/fake",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "flowforge-actions",
                    "text": button["text"],
                    "value": button.get("value", ""),
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return body, sign(body, signing_secret, int(time.time()) if timestamp is None else timestamp)


def sign(body: bytes, signing_secret: str, timestamp: int) -> dict[str, str]:
    """Slack's request headers, written from its documentation rather than from the daemon's code."""
    base = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature,
    }


def _shown(message: Message) -> dict[str, Any]:
    return {"type": "message", "user": "U0BOT", "ts": message.ts, "text": message.text, "blocks": message.blocks}


def _valid(block: Any) -> bool:
    """Block Kit limits (https://api.slack.com/reference/block-kit/blocks#actions): an actions block has
    1 to 25 elements; a button has plain_text of at most 75, an action_id of at most 255 and a value of
    at most 2000 characters."""
    if not isinstance(block, dict):
        return False
    if block.get("type") != "actions":
        return _valid_block(block)
    elements = block.get("elements")
    return (
        isinstance(elements, list)
        and 1 <= len(elements) <= 25
        and all(
            isinstance(e, dict)
            and e.get("type") == "button"
            and isinstance(e.get("text"), dict)
            and e["text"].get("type") == "plain_text"
            and 1 <= len(e["text"].get("text", "")) <= MAX_BUTTON_TEXT
            and 1 <= len(e.get("action_id", "")) <= MAX_ACTION_ID
            and len(e.get("value", "")) <= MAX_BUTTON_VALUE
            for e in elements
        )
    )
