"""A fake ntfy server (https://docs.ntfy.sh/publish/), for the Apprise sink's tests.

- publish: `POST`/`PUT /<topic>` with the message as the body (title in `X-Title`, `Title` or `t`), or
  `POST /` with JSON `{"topic", "message", "title", "tags", "priority"}` ("Publish as JSON");
- a published message is answered 200 with its JSON: `id`, `time`, `event: "message"`, `topic`,
  `message`, `title`;
- errors are JSON `{"code", "http", "error", "link"}` where `code` is the HTTP status followed by two
  digits: 40001 a bad request, 40101 / 40301 without or with the wrong access token (`Authorization:
  Bearer tk_...`), 42901 too many requests, 50001 an internal error;
- topic names are letters, digits, `_` and `-`, at most 64 characters.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from typing import Any

from aiohttp import web

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
ERRORS = {
    40001: "invalid request",
    40101: "unauthorized",
    40301: "forbidden",
    42901: "limit reached: too many requests",
    50001: "internal server error",
}


class FakeNtfy:
    def __init__(self, token: str | None = None):
        self.token = token
        self.messages: list[dict[str, Any]] = []  # published, as ntfy answered them
        self.refused: list[int] = []  # ntfy codes answered
        self._faults: deque[int] = deque()

    def fail_next(self, code: int, n: int = 1) -> None:
        self._faults.extend([code] * n)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._json)
        app.router.add_route("*", "/{topic}", self._plain)
        return app

    async def _json(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
        except ValueError:
            return self._error(40001)
        if not isinstance(data, dict):
            return self._error(40001)
        return self._publish(request, data.get("topic"), data.get("message") or "", data.get("title"))

    async def _plain(self, request: web.Request) -> web.Response:
        if request.method not in ("POST", "PUT"):
            return self._error(40001)
        title = request.headers.get("X-Title") or request.headers.get("Title") or request.headers.get("t")
        body = (await request.read()).decode(errors="replace")
        return self._publish(request, request.match_info["topic"], body, title)

    def _publish(self, request: web.Request, topic: Any, message: str, title: str | None) -> web.Response:
        if self._faults:
            return self._error(self._faults.popleft())
        if self.token is not None:
            auth = request.headers.get("Authorization")
            if auth is None:
                return self._error(40101)
            if auth != f"Bearer {self.token}":
                return self._error(40301)
        if not isinstance(topic, str) or not TOPIC.match(topic):
            return self._error(40001)
        published = {
            "id": secrets.token_hex(6),
            "time": int(time.time()),
            "event": "message",
            "topic": topic,
            "message": message or "triggered",
        }
        if title:
            published["title"] = title
        self.messages.append(published)
        return web.json_response(published)

    def _error(self, code: int) -> web.Response:
        self.refused.append(code)
        body = {"code": code, "http": code // 100, "error": ERRORS[code], "link": "https://ntfy.sh/docs/publish/"}
        return web.json_response(body, status=code // 100)
