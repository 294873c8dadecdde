"""The `webhook` sink: the notification as a JSON POST, optionally signed the Standard Webhooks way.

Signing follows https://www.standardwebhooks.com (spec/standard-webhooks.md): headers `webhook-id`,
`webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`{id}.{timestamp}.{body}`. The id is the same on every retry of a notification so that a receiver
can drop duplicates.

How an HTTP sink reads a failure (`transport_error`, `body_excerpt`) is shared with the Slack sink.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import aiohttp
import pydantic
import yarl

from flowforged.config import Duration, SecretValue, SinkConfig
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.http import retry_after
from flowforged.plugin import Notification, Sink, SinkContext
from flowforged.secrets import Secret

PAYLOAD_TYPE = "flowforge.notification"
PAYLOAD_VERSION = 1
KEY_PREFIX = "whsec_"


class WebhookConfig(SinkConfig):
    # A plain URL, or {secret: NAME} for one that embeds a token (its path or query is then never shown).
    url: str | SecretValue
    secret: SecretValue | None = None
    # Values may be secrets too, for receivers that want e.g. `Authorization: Bearer ...`.
    headers: dict[str, str | SecretValue] = {}
    timeout: Duration = 10.0

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, value: str | Secret) -> str | Secret:
        if isinstance(value, Secret):
            if value.origin != "missing":  # commands that need no secret's value resolve it leniently
                check_http_url(value.get())
        else:
            check_http_url(value)
        return value

    @pydantic.field_validator("secret")
    @classmethod
    def _secret(cls, value: Secret | None) -> Secret | None:
        if value is not None:
            signing_key(value.get())  # fails early, at check-config, on a malformed whsec_ value
        return value


def check_http_url(url: str) -> yarl.URL:
    """Raise ValueError, without repeating the URL, unless it is an absolute http(s) URL."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        raise ValueError("not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an http:// or https:// URL")
    return parsed


def signing_key(secret: str) -> bytes:
    """Standard Webhooks secrets are `whsec_` + base64 of the key; a secret without the prefix is used
    as it is, for receivers that were given a plain string."""
    if not secret.startswith(KEY_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a secret starting with 'whsec_' must continue with base64") from None


def payload(notification: Notification) -> bytes:
    data: dict[str, Any] = {"type": PAYLOAD_TYPE, "version": PAYLOAD_VERSION}
    data.update(dataclasses.asdict(notification))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(signing_key(secret), message_id, timestamp, body),
    }


def transport_error(exc: BaseException, what: str) -> SinkError:
    """A SinkError for a network failure or a timeout. Only the kind of failure and the host are
    named: aiohttp's messages can carry the request URL, and a webhook URL may be a secret."""
    if isinstance(exc, TimeoutError):
        return SinkError(f"{what} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return SinkError(f"cannot connect to {what} ({exc.host}:{exc.port}): {reason}")
    return SinkError(f"{what} failed: {type(exc).__name__}")


def body_excerpt(text: str, limit: int = 200, secrets: Sequence[str] = ()) -> str:
    """The start of a receiver's answer, for an error message. Secrets go first: cut first, and the
    part of a secret before the cut would no longer match, and would be stored with the error."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) > 1:  # not a bare "/" path
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def url_secret_parts(url: str) -> list[str]:
    """What an error must not repeat of a secret URL: all of it, its path and query, and each part."""
    parsed = yarl.URL(url)
    parts = [url, parsed.raw_path_qs, parsed.path_qs, *parsed.query.values()]
    return parts + [part for part in parsed.parts if len(part) >= 4]


class WebhookSink(Sink):
    type = "webhook"
    config_model = WebhookConfig
    min_interval: ClassVar[float] = 0.0
    config: WebhookConfig

    async def send(self, notification: Notification, context: SinkContext) -> str:
        url = self.config.url.get() if isinstance(self.config.url, Secret) else self.config.url
        host = yarl.URL(url).host
        body = payload(notification)
        headers = {
            key: value.get() if isinstance(value, Secret) else value for key, value in self.config.headers.items()
        }
        headers["Content-Type"] = "application/json"
        if self.config.secret is not None:
            headers.update(signature_headers(self.config.secret.get(), f"ff_{notification.id}", int(time.time()), body))
        try:
            # No redirects: a signed request replayed to wherever a Location points is not wanted.
            async with context.http.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                status = response.status
                text = await response.text(errors="replace")
                wait = retry_after(response.headers, time.time())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, host or "the receiver") from None
        return answer(status, text, wait, host or "the receiver", self._secret_parts())

    def _secret_parts(self) -> list[str]:
        """What an error message must not repeat: the secret URL's path and query, header secrets."""
        parts = [value.get() for value in self.config.headers.values() if isinstance(value, Secret)]
        if isinstance(self.config.url, Secret):
            parts += url_secret_parts(self.config.url.get())
        return parts


def answer(status: int, text: str, wait: float | None, host: str, secrets: Sequence[str] = ()) -> str:
    """The receiver's answer as a string for people, or the error that says what to do next."""
    excerpt = body_excerpt(text, secrets=secrets)
    said = f": {excerpt}" if excerpt else ""
    if 200 <= status < 300:
        return f"HTTP {status}"
    # 408 and 429 say "try again later"; every other 4xx will be the same on a retry.
    if status in (408, 429) or status >= 500:
        raise SinkError(f"{host} answered HTTP {status}{said}", retry_after=wait)
    if 300 <= status < 400:
        raise PermanentSinkError(f"{host} answered HTTP {status} (a redirect): set the sink's url to the new location")
    raise PermanentSinkError(f"{host} answered HTTP {status}{said}")
