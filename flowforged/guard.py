"""The HTTP server's defences against what an attacker can send before anything is authenticated.

- Compressed request bodies are refused unread (415): inflating them costs CPU and memory out of
  all proportion to the bytes on the wire, and no provider FlowForge supports compresses its webhooks.
- `BodyBudget` bounds the bytes that requests not yet authenticated hold at once, all together.
- `send_timeout` closes connections whose answer the client does not read (slow readers), which
  would otherwise hold the answer in memory for ever.
- `AcceptErrors` turns asyncio's one log line per failed accept() (thousands a second once the
  file-descriptor limit is reached) into one line per interval with a count.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import StreamReader, hdrs, web

from flowforged import logs

log = logs.get("flowforged.guard")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_compressed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a body with a Content-Encoding. No provider FlowForge supports documents compressing
    its webhooks (GitHub's delivery headers, for one, name none), and the API takes small JSON bodies."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding in ("", "identity"):
        return await handler(request)
    log.warning("compressed request body refused", path=request.path, encoding=encoding[:40], remote=request.remote)
    response = web.json_response(
        {
            "error": {
                "code": "unsupported_encoding",
                "message": f"compressed request bodies are not accepted (Content-Encoding: {encoding[:40]}); "
                "send the body uncompressed",
            }
        },
        status=415,
        headers={hdrs.ACCEPT_ENCODING: "identity"},  # RFC 7694: what the server does accept
    )
    response.force_close()  # the body is never read; closing spares reading (and inflating) it after
    return response


class OverBudget(Exception):
    """Unauthenticated requests already hold all the bytes they may."""


class BodyBudget:
    """Bytes that unauthenticated requests may hold at once, across all of them.

    Each chunk of a body is counted as it arrives, so a slow sender holds only what it has sent;
    the caller gives the bytes back once the body is authenticated or refused."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held = 0

    async def read(self, stream: StreamReader, limit: int) -> bytes:
        """The whole body; HTTPRequestEntityTooLarge past `limit`, OverBudget past the budget."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in stream.iter_any():
                size += len(chunk)
                self._hold(len(chunk), size, limit)
                chunks.append(chunk)
        except BaseException:
            self.held -= sum(map(len, chunks))
            raise
        return b"".join(chunks)

    def received(self, stream: StreamReader, limit: int) -> bytes | None:
        """The whole body if it has all arrived already (no need to wait, or to time the wait), else
        None; raises as read() does."""
        if not stream.is_eof():
            return None
        body = stream.read_nowait()
        self._hold(len(body), len(body), limit)
        return body

    def _hold(self, chunk: int, size: int, limit: int) -> None:
        """Count `chunk` more bytes of a body now `size` long, or refuse it."""
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        if self.held + chunk > self.capacity:
            raise OverBudget()
        self.held += chunk

    def give(self, size: int) -> None:
        self.held -= size


def send_timeout(seconds: float) -> Middleware:
    """Close a connection whose answer the client does not read for `seconds` (TCP_USER_TIMEOUT).

    A client that asks for a large answer (/metrics, a page of runs, an event stream) and stops
    reading leaves it in the kernel's send buffer and then in asyncio's, without limit and for as long
    as it likes, even after the daemon closed the connection. With TCP_USER_TIMEOUT (tcp(7)) the
    kernel drops the connection, buffers and all, once data has waited that long to be acknowledged,
    including while the client advertises a zero window."""
    milliseconds = max(1, int(seconds * 1000))
    done: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()  # once per connection, not per request

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport not in done:
            done.add(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        return await handler(request)

    return middleware


class AcceptErrors:
    """A loop exception handler that logs accept() failures once per `interval` with a count.

    Past the file-descriptor limit, every accept() fails and asyncio logs each failure: thousands
    of identical lines a second, which bury everything else and fill the disk."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(self.MESSAGE):
            loop.default_exception_handler(context)
            return
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return
        exc = context.get("exception")
        log.error(
            "cannot accept connections: out of file descriptors or memory",
            error=str(exc) if exc is not None else None,
            suppressed=self.suppressed,  # the same error, not logged since the previous line
            open_files_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        self._last, self.suppressed = now, 0


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: each connection takes a descriptor,
    and a soft limit of 1024 (a common default) is reached by a few hundred idle clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
