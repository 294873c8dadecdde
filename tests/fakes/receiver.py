"""A webhook receiver for sink tests: records every request and answers as the test scripted.

`Receiver(secret=...)` also verifies Standard Webhooks signatures the way the spec tells receivers to
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md): written
from the spec, not from the sink's code, so that it catches a sink that signs the wrong thing.

Script answers are `"STATUS"` or `"STATUS:DETAIL"`; for 429 and 503 DETAIL is the Retry-After value,
otherwise it is the body. `"hang"` never answers (until the server stops), for timeout tests.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

TOLERANCE = 300  # seconds; the spec's reference libraries reject older or newer timestamps


@dataclasses.dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int  # what the fake answered
    answer: str
    verified: bool | None = None  # the signature, when the receiver has a secret

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int | None  # None: hang
    detail: str | None = None


def parse_answer(spec: str) -> Answer:
    if spec == "hang":
        return Answer(None)
    status, _, detail = spec.partition(":")
    return Answer(int(status), detail or None)


class Script:
    """Scripted answers, one per request, then `default` for ever."""

    def __init__(self, default: str = "200"):
        self.default = parse_answer(default)
        self._queue: deque[Answer] = deque()

    def extend(self, answers: Iterable[str]) -> None:
        self._queue.extend(parse_answer(spec) for spec in answers)

    def next(self) -> Answer:
        return self._queue.popleft() if self._queue else self.default


class Hang:
    """Holds `hang` requests until the app shuts down, so that the server can stop promptly."""

    def __init__(self) -> None:
        self._release: asyncio.Event | None = None

    async def wait(self) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        await self._release.wait()

    async def on_shutdown(self, app: web.Application) -> None:
        if self._release is not None:
            self._release.set()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> bool:
    """A Standard Webhooks receiver's check: `v1,` signatures over `{id}.{timestamp}.{body}`."""
    try:
        message_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"].split(" ")
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > TOLERANCE:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (signature.partition(",") for signature in signatures)
    )


class Receiver:
    """A webhook receiver: answers 200 "ok" unless scripted, 401 when a signature does not verify."""

    def __init__(self, secret: str | None = None, path: str = "/hooks/flowforge"):
        self.secret = secret
        self.path = path
        self.received: list[Received] = []
        self._script = Script()
        self._hang = Hang()

    def script(self, answers: Iterable[str]) -> Receiver:
        self._script.extend(answers)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        app.on_shutdown.append(self._hang.on_shutdown)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        verified = None
        if self.secret is not None:
            verified = verify_signature(self.secret, request.headers, body, time.time())
        answer = self._script.next()
        if answer.status is None:
            await self._hang.wait()
            answer = Answer(503)
        headers = {}
        if verified is False:
            answer = Answer(401, "invalid signature")
        if answer.status in (429, 503) and answer.detail:
            headers["Retry-After"] = answer.detail
            text = "try again later"
        else:
            text = answer.detail or ("ok" if answer.status < 300 else "error")
        self.received.append(
            Received(arrived, request.path_qs, CIMultiDict(request.headers), body, answer.status, text, verified)
        )
        return web.Response(status=answer.status, text=text, headers=headers)
