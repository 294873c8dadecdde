"""The ingest path shared by webhooks, polling and reindex (docs/architecture.md: "The parts, in the
order a delivery travels").

A webhook is accepted, then applied: its raw delivery is committed and acknowledged first, and the
store's writer decodes, normalizes and applies it after (decode(), store/__init__.py). A polled item
is normalized first and applied in its own commit. Decoding and normalizing are the provider plugin's
pure half; a payload that authenticates but cannot be read or normalized (not JSON, an unexpected
shape, a field the store cannot hold, JSON nested too deeply to decode) is still stored raw, with its
error, so that `flowforged reindex` can pick it up after a parser fix. Once applied, new events go to
the bus and the listeners registered here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from flowforged import logs
from flowforged.bus import Bus
from flowforged.model import Event, RunEvent, utcnow
from flowforged.plugin import Headers, Provider, Unreadable
from flowforged.store import Delivery, IngestResult, Store
from flowforged.store.ingest import event_key

log = logs.get("flowforged.ingest")
Listener = Callable[[IngestResult, str, str], None]  # (result, source, origin)
UNNAMED = "unknown"  # what a provider names an event it cannot name from the headers alone


def normalize(provider: Provider, event: str, payload: Any, received: str) -> tuple[list[Event], str | None]:
    """The plugin's normalization, with any failure turned into a parse error to store, and a state
    that names no time of its own dated when it was received."""
    if isinstance(payload, Unreadable):
        return [], payload.error
    try:
        events = provider.normalize(event, payload)
    except Exception as exc:
        return [], text(f"{type(exc).__name__}: {exc}")[:1000]
    return [_dated(each, received) for each in events], None


_JOB_TIMES = ("started_at", "finished_at")


def _dated(event: Event, received: str) -> Event:
    """An event with no empty string for a time: a missing updated_at is the time it was received."""
    changes: dict[str, Any] = {"updated_at": received} if not event.updated_at else {}
    times = ("created_at", "started_at", "finished_at") if isinstance(event, RunEvent) else _JOB_TIMES
    changes |= {name: None for name in times if getattr(event, name) == ""}
    return dataclasses.replace(event, **changes) if changes else event


def text(value: str) -> str:
    """Text SQLite can store: a lone surrogate (from JSON's "\\ud800", or a header that is not UTF-8)
    is written as its escape."""
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


def stored_headers(provider: Provider, headers: Headers) -> dict[str, str]:
    return {name: headers[name] for name in provider.stored_headers if name in headers}


def delivery_id(provider: Provider, headers: Headers, body: bytes) -> str:
    """The provider's delivery id; without one, the body's hash, so that a resend is still a duplicate."""
    return text(provider.delivery_id(headers) or "sha256:" + hashlib.sha256(body).hexdigest())


def encoded(payload: Any) -> bytes:
    """A polled item as stored JSON. msgspec refuses text with a lone surrogate, which json escapes."""
    try:
        return msgspec.json.encode(payload)
    except (UnicodeEncodeError, TypeError, OverflowError):
        return json.dumps(payload).encode()


class Ingest:
    def __init__(self, store: Store, providers: Mapping[str, Provider], bus: Bus):
        self.store = store
        self.providers = providers
        self.bus = bus
        self.listeners: list[Listener] = []

    async def webhook(self, provider: Provider, headers: Headers, body: bytes) -> tuple[Delivery, bool]:
        """Store an authenticated webhook delivery raw; return it, and whether it is a duplicate, once
        it is committed. It is decoded, normalized and applied after (decode())."""
        delivery = Delivery(
            source=provider.name,
            delivery_id=delivery_id(provider, headers, body),
            origin="webhook",
            event=text(provider.event_name(headers, None)),  # from the headers; else named when applied
            received_at=utcnow(),
            headers=stored_headers(provider, headers),
            body=body,
        )
        return delivery, await self.store.append(delivery) is None

    def start(self) -> None:
        """Apply acknowledged deliveries from now on (on the store's writer thread), and hand what they
        recorded to the listeners and the bus on this loop."""
        self.store.start_applying(asyncio.get_running_loop(), self.decode, self.applied)

    def decode(
        self, source: str, headers: dict[str, str], body: bytes, event: str, received: str
    ) -> tuple[str, list[Event], str | None]:
        """A stored delivery's event name, events and parse error, under the source's provider today.
        Runs on the writer thread, when the delivery is applied."""
        event, events, error = decoded(self.providers, source, headers, body, event, received)
        if error:
            log.warning("payload stored raw: it could not be normalized", source=source, hook_event=event, error=error)
        return event, events, error

    def applied(self, done: list[tuple[IngestResult, str, str]]) -> None:
        for result, source, origin in done:
            self.published(result, source, origin)

    async def polled(self, provider: Provider, event: str, payload: dict[str, Any]) -> IngestResult:
        """A run or job the poller read from the provider's API, in the same path as a webhook.

        The body is stored like a delivery's (so that reindex re-reads it) under a key derived from
        the state it reports: re-polling the same state is a duplicate, and a state a webhook already
        told adds no event and no transition.
        """
        received = utcnow()
        events, error = normalize(provider, event, payload, received)
        if error:
            log.warning(
                "polled item stored raw: it could not be normalized",
                source=provider.name,
                hook_event=event,
                error=error,
            )
        body = encoded(payload)
        key = "poll:" + (event_key(events[0]) if events else hashlib.sha256(body).hexdigest())
        delivery = Delivery(
            source=provider.name,
            delivery_id=key,
            origin="poll",
            event=event,
            received_at=received,
            headers={},
            body=body,
            parse_error=error,
        )
        return await self.commit(delivery, events)

    async def commit(self, delivery: Delivery, events: list[Event]) -> IngestResult:
        result = await self.store.ingest(delivery, events, utcnow())
        if not result.duplicate:
            self.published(result, delivery.source, delivery.origin)
        return result

    def published(self, result: IngestResult, source: str, origin: str) -> None:
        for listener in self.listeners:
            listener(result, source, origin)
        for data in result.events:
            self.bus.publish({"type": "event", "origin": origin, **data})


def decoded(
    providers: Mapping[str, Provider], source: str, headers: dict[str, str], body: bytes, event: str, received: str
) -> tuple[str, list[Event], str | None]:
    """A stored delivery's event name (named from the payload if the headers could not), events and
    parse error under today's parser, dated `received` (its received_at) where the payload names no time."""
    provider = providers.get(source)
    if provider is None:
        return event, [], f"source {source!r} is no longer configured"
    try:
        payload = provider.decode(headers, body)
    except Exception as exc:
        return event, [], text(f"{type(exc).__name__}: {exc}")[:1000]
    if event == UNNAMED and not isinstance(payload, Unreadable):
        event = text(provider.event_name(headers, payload))
    return (event, *normalize(provider, event, payload, received))


def redecode(
    providers: Mapping[str, Provider],
    source: str,
    headers: dict[str, str],
    body: bytes,
    event: str,
    received: str | None = None,
) -> tuple[list[Event], str | None]:
    """For reindex: the events of a stored delivery under today's parser (decoded())."""
    return decoded(providers, source, headers, body, event, received or utcnow())[1:]
