"""How a source's client authenticates to its provider: the auth hook, and TLS options.

`ProviderClient` asks its `Auth` for the header to send with each request, so that a credential that
changes while the daemon runs fits without a change to the client: a static token (`bearer`,
`header_token`, `basic`), a token fetched and renewed before it expires (`RenewableToken`: a GitHub
App installation token lives an hour), or a token file re-read when it changes (`FileToken`: a
Kubernetes service-account token, rotated by the kubelet). A provider plugin returns one from
`Provider.auth()`.

Every value an Auth has sent is listed by `secrets()`, so that the client scrubs it from errors.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

Header = tuple[str, str]


class Auth(Protocol):
    async def header(self) -> Header | None:
        """The (name, value) to send with the next request; None for none."""
        ...

    def rejected(self) -> bool:
        """The provider answered 401 to what header() gave: forget it. True when a new one may be
        worth one more try (a renewable token), False when it would be refused again."""
        ...

    def secrets(self) -> Sequence[str]:
        """The values to scrub from anything the client logs or raises."""
        ...


class StaticAuth:
    """One header that never changes (a personal access token)."""

    def __init__(self, name: str, value: str, secret: str) -> None:
        self._header = (name, value)
        self._secrets = tuple(s for s in (secret, value) if s)

    async def header(self) -> Header | None:
        return self._header

    def rejected(self) -> bool:
        return False

    def secrets(self) -> Sequence[str]:
        return self._secrets


def bearer(token: str) -> StaticAuth:
    """`Authorization: Bearer <token>` (RFC 6750)."""
    return StaticAuth("Authorization", f"Bearer {token}", token)


def header_token(name: str, token: str) -> StaticAuth:
    """A token in a header of the provider's own (GitLab: PRIVATE-TOKEN)."""
    return StaticAuth(name, token, token)


def basic(username: str, password: str) -> StaticAuth:
    """HTTP Basic authentication (RFC 7617: UTF-8, base64), as Jenkins takes a user name and API token."""
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    auth = StaticAuth("Authorization", f"Basic {encoded}", password)
    auth._secrets = (password, encoded)
    return auth


class RenewableToken:
    """A token that expires, fetched by `fetch()` (which answers the token and its expiry, epoch
    seconds) and fetched again `margin` seconds before it expires or after a 401. Concurrent requests
    wait for one fetch."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        *,
        scheme: str = "Bearer",
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._scheme = scheme
        self._margin = margin
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._seen: list[str] = []

    async def header(self) -> Header | None:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires - self._margin:
                self._token, self._expires = await self._fetch()
                self._seen = [*self._seen[-3:], self._token]  # a request in flight may still carry the last
        return "Authorization", f"{self._scheme} {self._token}"

    def rejected(self) -> bool:
        self._token = None
        return True

    def secrets(self) -> Sequence[str]:
        return tuple(self._seen)


class FileToken:
    """A token read from a file, read again when the file changes (a Kubernetes projected
    service-account token is rotated in place: /var/run/secrets/kubernetes.io/serviceaccount/token,
    https://kubernetes.io/docs/concepts/storage/projected-volumes/#serviceaccounttoken)."""

    def __init__(self, path: str, *, scheme: str = "Bearer") -> None:
        self.path = path
        self._scheme = scheme
        self._stamp: tuple[int, int] | None = None
        self._token = ""
        self._seen: list[str] = []

    async def header(self) -> Header | None:
        info = os.stat(self.path)  # a stat of a small local file: not worth a thread
        if (info.st_mtime_ns, info.st_size) != self._stamp:
            self._token = (await asyncio.to_thread(Path(self.path).read_text, encoding="utf-8")).strip()
            self._stamp = (info.st_mtime_ns, info.st_size)
            self._seen = [*self._seen[-3:], self._token]
        return "Authorization", f"{self._scheme} {self._token}"

    def rejected(self) -> bool:
        self._stamp = None  # read again: the kubelet may just have rotated it
        return False

    def secrets(self) -> Sequence[str]:
        return tuple(self._seen)


def tls_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """Certificates verified against `ca_bundle` (a PEM file: a Kubernetes API server's CA, a
    company's own) as well as the system's; None: the system's alone."""
    if not ca_bundle:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_bundle)
    return context
