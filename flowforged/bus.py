"""The in-process event bus: after a commit, new events go to SSE clients and other listeners."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Message:
    """One published message, the same object in every subscriber's queue. Its encoding is made by
    the first subscriber that asks and kept: five hundred streams serialize an event once, not five
    hundred times."""

    __slots__ = ("data", "_encoded")

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self._encoded: bytes | None = None

    def encoded(self, encode: Callable[[dict[str, Any]], bytes]) -> bytes:
        """`encode(data)`, computed once. Every subscriber of a message must use the same encoder."""
        if self._encoded is None:
            self._encoded = encode(self.data)
        return self._encoded


class Bus:
    def __init__(self, queue_size: int = 1000):
        self._subscribers: set[asyncio.Queue[Message]] = set()
        self._queue_size = queue_size

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Message]]:
        queue: asyncio.Queue[Message] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def publish(self, data: dict[str, Any]) -> Message:
        """Never blocks the ingest path: a subscriber that does not keep up loses its oldest message."""
        message = Message(data)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)
        return message
