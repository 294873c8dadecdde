"""Webhook authentication that more than one provider uses: a shared token compared in constant time,
and the timestamped HMAC that Buildkite sends (`timestamp=...,signature=...`), which the Jenkins
plugin accepts too, so that a sender can sign a body the same way for either.
"""

from __future__ import annotations

import hmac

from flowforged.errors import WebhookRejected

SIGNATURE_WINDOW = 300.0  # seconds a signed delivery stays valid, against replay


def same_secret(sent: str, expected: str) -> bool:
    """Whether a token sent in a header is the configured one, in constant time."""
    return hmac.compare_digest(sent.encode(), expected.encode())


def timestamped_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of "{timestamp}.{body}" (https://buildkite.com/docs/apis/webhooks/pipelines#webhook-signature)."""
    return hmac.digest(secret.encode(), timestamp.encode() + b"." + body, "sha256").hex()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The whole header value a sender puts on a delivery: `timestamp=<unix seconds>,signature=<hex>`."""
    return f"timestamp={timestamp},signature={timestamped_signature(secret, str(timestamp), body)}"


def check_timestamped(
    header: str, value: str, secret: str, body: bytes, now: float, window: float = SIGNATURE_WINDOW
) -> None:
    """Raise WebhookRejected unless `value` signs `body` with `secret` and its timestamp is within
    `window` seconds of `now`. The timestamp is part of what is signed, so that a captured delivery
    cannot be replayed later with a new one."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        name, sep, field = part.strip().partition("=")
        if sep:
            fields[name.strip()] = field.strip()
    timestamp, signature = fields.get("timestamp"), fields.get("signature")
    if not timestamp or not signature:
        raise WebhookRejected(f"{header} has no timestamp or no signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookRejected(f"{header}: the timestamp is not a number") from None
    expected = timestamped_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
        raise WebhookRejected(f"{header} does not match the body")
    if abs(now - sent) > window:
        minutes = f"{window / 60:.0f}-minute"
        raise WebhookRejected(f"{header}: the timestamp is outside the {minutes} window (replayed or clock skew)")
