"""Plugin interfaces and their discovery through entry points.

The core never imports a plugin by name: built-in providers and sinks register under the entry point
groups `flowforged.providers` and `flowforged.sinks` exactly as a third-party package would.

A provider has a pure half (verify, delivery id, decode, normalize) that does no I/O and is tested
with real payloads, and, from issue 4 on, a thin async half that uses the client the core gives it.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar

import msgspec

from flowforged.config import SinkConfig, SourceConfig
from flowforged.errors import NotJSON
from flowforged.model import Event

Headers = Mapping[str, str]  # case-insensitive in practice (aiohttp's CIMultiDictProxy)


class Provider(abc.ABC):
    """One configured source of a provider type (`github`, `gitlab`, ...)."""

    type: ClassVar[str]
    config_model: ClassVar[type[SourceConfig]] = SourceConfig
    # The request headers kept with a raw delivery: what normalize() and people need later. Never a
    # header that carries a secret (GitLab sends its token in X-Gitlab-Token).
    stored_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: SourceConfig):
        self.name = name
        self.config = config

    # --- pure half -----------------------------------------------------------------------------
    @abc.abstractmethod
    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """Raise WebhookRejected unless the request is authentic. Compare secrets in constant time."""

    @abc.abstractmethod
    def delivery_id(self, headers: Headers) -> str | None:
        """The provider's id of this delivery, used to drop redeliveries."""

    @abc.abstractmethod
    def event_name(self, headers: Headers, payload: Any) -> str:
        """What kind of event this is, in the provider's words (`workflow_run`, `Pipeline Hook`)."""

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The payload of an authentic body; NotJSON if it is not JSON at all."""
        return decode_json(body)

    @abc.abstractmethod
    def normalize(self, event: str, payload: Any) -> list[Event]:
        """Run and job events in a payload; [] for events nobody cares about. May raise anything on
        a payload of an unexpected shape: the delivery is then stored raw with the error."""


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    """What a sink renders: one transition of one pipeline+branch (or several, grouped by commit)."""

    id: int
    sink: str
    transition: str  # broken | still_failing | fixed
    source: str
    pipeline: str
    branch: str | None
    run_id: str
    attempt: int
    url: str | None
    sha: str | None
    commit_message: str | None
    author: str | None
    duration_seconds: float | None
    failed_jobs: tuple[str, ...] = ()
    pipeline_name: str = ""
    finished_at: str | None = None
    others: tuple[dict[str, Any], ...] = ()  # further pipelines of the same commit (group_wait)


class Sink(abc.ABC):
    type: ClassVar[str]
    config_model: ClassVar[type[SinkConfig]] = SinkConfig

    def __init__(self, name: str, config: SinkConfig):
        self.name = name
        self.config = config

    @abc.abstractmethod
    async def send(self, notification: Notification, context: SinkContext) -> str:
        """Deliver; return the sink's answer for people. Raise SinkError (transient, maybe with
        retry_after) or PermanentSinkError (the notification goes to `dead`)."""


@dataclasses.dataclass
class SinkContext:
    """What the core lends a sink: its HTTP session (one per app) and a logger."""

    http: Any  # aiohttp.ClientSession
    log: Any


def decode_json(body: bytes) -> Any:
    # msgspec decodes a 20 KB workflow_run about twice as fast as the json module: this is the hot path.
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    try:
        return json.loads(body)  # what msgspec refuses but JSON allows (integers beyond 64 bits)
    except (UnicodeDecodeError, ValueError):
        raise NotJSON("the body is not JSON") from None


@functools.cache
def providers() -> dict[str, type[Provider]]:
    return {ep.name: ep.load() for ep in entry_points(group="flowforged.providers")}


@functools.cache
def sinks() -> dict[str, type[Sink]]:
    return {ep.name: ep.load() for ep in entry_points(group="flowforged.sinks")}
