"""The plugin contract (docs/plugins.md), and discovery through entry points.

The core never imports a plugin by name: built-in providers and sinks register under the entry point
groups `flowforged.providers` and `flowforged.sinks` exactly as a third-party package would.

A provider has a pure half (`WebhookHalf`: verify, delivery id, event name, decode, normalize) that
does no I/O and is tested with real payloads, and a thin remote half (`RemoteHalf`: a client built
from its `RemoteAPI` declaration and `auth()`, poll targets, one poll of a target, trigger, re-run,
cancel) that does its HTTP through the ProviderClient the core gives it, and reads and records what it
polled through a PollContext: it never touches the store itself. What it can do is declared in its
`Capabilities`; the contract test (flowforged/testkit.py) holds the declaration to the methods it
overrides.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

from flowforged.capabilities import Capabilities
from flowforged.config import SinkConfig, SourceConfig
from flowforged.credentials import Auth, bearer, tls_context
from flowforged.errors import NotJSON, ProviderError
from flowforged.http import EtagStore, ProviderClient
from flowforged.model import Event
from flowforged.pagination import LinkHeader, Pagination
from flowforged.ratelimits import RateLimits

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Capabilities", "Example", "PollContext", "Provider", "RemoteAPI", "Sink", "SinkContext"]

Headers = Mapping[str, str]  # case-insensitive in practice (aiohttp's CIMultiDictProxy)


@dataclasses.dataclass(frozen=True)
class RemoteAPI:
    """How a provider's API is reached: what `Provider.make_client()` builds the source's
    ProviderClient from, so that a provider writes no client code. The credential comes from
    `Provider.auth()`, the TLS options and pacing keys from the source's config."""

    default_url: str | None = None  # None: the source must give `api_url` (a self-hosted server)
    pagination: Pagination = dataclasses.field(default_factory=LinkHeader)
    rate_limits: RateLimits = dataclasses.field(default_factory=RateLimits)  # which headers tell the budget
    points_per_minute: float | None = None  # the per-minute limit paced to (90% of the documented one)
    points: Callable[[str], int] | None = None  # what a request of a method costs of it (1 by default)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # sent with every request


@dataclasses.dataclass(frozen=True)
class Example:
    """What the contract test checks a provider with (flowforged/testkit.py): a source's config (secrets
    as plain strings), one delivery it accepts, and the provider's own signing helper."""

    config: Mapping[str, Any]
    event: str  # what event_name() says of the delivery
    payload: Any  # a body normalize() turns into at least one run event
    sign: Callable[[Mapping[str, Any], bytes, float], dict[str, str]]  # (config, body, now) -> request headers


class WebhookHalf(Protocol):
    """The pure half of a provider: no I/O, tested with real payloads."""

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    config_model: ClassVar[type[SourceConfig]]
    stored_headers: ClassVar[tuple[str, ...]]

    def verify(self, headers: Headers, body: bytes, now: float) -> None: ...

    def delivery_id(self, headers: Headers) -> str | None: ...

    def event_name(self, headers: Headers, payload: Any) -> str: ...

    def decode(self, headers: Headers, body: bytes) -> Any: ...

    def normalize(self, event: str, payload: Any) -> list[Event]: ...


class RemoteHalf(Protocol):
    """The remote half of a provider: polling and operations, through the core's client."""

    remote: ClassVar[RemoteAPI | None]

    def auth(self, session: aiohttp.ClientSession) -> Auth: ...

    def make_client(self, session: aiohttp.ClientSession, etags: EtagStore, **options: Any) -> ProviderClient: ...

    async def poll(self, client: ProviderClient, ctx: PollContext) -> None: ...

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]: ...

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None: ...

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None: ...

    async def rerun(
        self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool | None
    ) -> dict[str, Any] | None: ...

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None: ...


class Provider(abc.ABC):
    """One configured source of a provider type (`github`, `gitlab`, ...): a WebhookHalf and a
    RemoteHalf. A webhook-only provider implements the five methods of the pure half and nothing else."""

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()  # webhooks only, until a provider says more
    config_model: ClassVar[type[SourceConfig]] = SourceConfig
    # The request headers kept with a raw delivery: what normalize() and people need later. Never a
    # header that carries a secret (GitLab sends its token in X-Gitlab-Token).
    stored_headers: ClassVar[tuple[str, ...]] = ()
    # How its API is reached; None: it has none (webhooks only), the poller skips it and the control
    # API answers that operations are not supported.
    remote: ClassVar[RemoteAPI | None] = None

    def __init__(self, name: str, config: SourceConfig):
        self.name = name
        self.config = config

    @classmethod
    def example(cls) -> Example:
        """A config, a delivery and the signing helper, for the contract test every provider passes."""
        raise NotImplementedError(f"{cls.__name__} gives no Example for the contract test")

    # --- pure half -----------------------------------------------------------------------------
    @abc.abstractmethod
    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """Raise WebhookRejected unless the request is authentic. Compare secrets in constant time."""

    @abc.abstractmethod
    def delivery_id(self, headers: Headers) -> str | None:
        """The provider's id of this delivery, used to drop redeliveries."""

    @abc.abstractmethod
    def event_name(self, headers: Headers, payload: Any) -> str:
        """What kind of event this is, in the provider's words (`workflow_run`, `Pipeline Hook`).
        Called with payload None when the delivery is acknowledged (from the headers, else "unknown"),
        then with the payload when it is applied if that said "unknown" (docs/plugins.md)."""

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The payload of an authentic body; NotJSON if it is not JSON at all."""
        return decode_json(body)

    @abc.abstractmethod
    def normalize(self, event: str, payload: Any) -> list[Event]:
        """Run and job events in a payload; [] for events nobody cares about. May raise anything on
        a payload of an unexpected shape: the delivery is then stored raw with the error."""

    # --- remote half: the provider's API ------------------------------------------------------

    def api_url(self) -> str:
        """The root of the API: the source's `api_url`, else the provider's default."""
        url = self.config.api_url or (self.remote.default_url if self.remote else None)
        if not url:
            raise NotImplementedError(f"source {self.name} has no api_url")
        return url

    def auth(self, session: aiohttp.ClientSession) -> Auth:
        """The credential of each request: `token` as a Bearer token by default. A provider whose
        credential is renewed (an app's installation token) or read from a file returns its own
        (flowforged/credentials.py); `session` is there to fetch one."""
        if self.config.token is None:
            raise NotImplementedError(f"source {self.name} has no API token")
        return bearer(self.config.token.get())

    def make_client(self, session: aiohttp.ClientSession, etags: EtagStore, **options: Any) -> ProviderClient:
        """The source's client, built from `remote`, `api_url()`, `auth()` and the source's TLS options.
        `options` go to ProviderClient (clock, headroom, pacing) and win over the declaration."""
        if self.remote is None:
            raise NotImplementedError(f"{self.type} sources have no API client")
        remote = self.remote
        options.setdefault("points_per_minute", remote.points_per_minute)
        options.setdefault("points", remote.points)
        options["headers"] = {**remote.headers, **options.get("headers", {})}
        return ProviderClient(
            self.name,
            self.api_url(),
            self.auth(session),
            session,
            etags,
            pagination=remote.pagination,
            rate_limits=remote.rate_limits,
            tls=tls_context(self.config.ca_bundle),
            **options,
        )

    async def poll(self, client: ProviderClient, ctx: PollContext) -> None:
        """One poll cycle: find what changed since the cursors in `ctx` and hand each run or job to
        `ctx.emit()`. The default runs poll_target() over poll_targets() through `ctx.each()`."""
        targets = await self.poll_targets(client, ctx)
        await ctx.each(targets, lambda target: self.poll_target(client, ctx, target))

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        """What one cycle looks at: the source's `repos`, by default; a provider expands organizations
        and groups here."""
        return list(dict.fromkeys(self.config.repos))

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        raise NotImplementedError(f"{self.type} sources cannot be polled")

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Start a run of `pipeline` on `ref` with `inputs` (and, where the provider has them, CI/CD
        `variables`); the provider's answer about the new run, or None when it gives none."""
        raise NotImplementedError(f"{self.type} sources cannot trigger runs")

    async def rerun(
        self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool | None
    ) -> dict[str, Any] | None:
        """Run again a run (a row of `runs`): all of it, or only its failed jobs; None: the provider's
        own re-run (all of it where it can). Only called with what `capabilities` says it can do."""
        raise NotImplementedError(f"{self.type} sources cannot re-run runs")

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        """Stop a run; with `force`, without the cleanup a plain cancel allows (only if capabilities say so)."""
        raise NotImplementedError(f"{self.type} sources cannot cancel runs")


class PollContext(Protocol):
    """What the poller lends a provider for one cycle (flowforged.poller implements it)."""

    source: str
    now: float  # this cycle's wall time, epoch seconds
    since: float  # how far back a cycle looks at most: now minus the source's `backfill`
    memory: dict[str, Any]  # kept from cycle to cycle in this process (listings of organizations, ...)

    async def cursor(self, key: str) -> str | None: ...

    async def set_cursor(self, key: str, value: str) -> None: ...

    async def known(self, runs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        """The stored (status, updated_at) of these (run_id, attempt): what need not be ingested again."""
        ...

    async def open_runs(self) -> list[dict[str, Any]]:
        """Runs of this source the store last saw unfinished (pipeline, run_id, attempt, created_at)."""
        ...

    async def emit(self, event: str, payload: dict[str, Any]) -> Any:
        """Ingest one polled item (Ingest.polled): deduplicated against webhooks; the IngestResult."""
        ...

    async def each(self, targets: Sequence[str], poll: Callable[[str], Awaitable[None]]) -> None:
        """poll(target) for each target, a few at a time; an error in one target is recorded and the
        others go on, but RateLimited ends the cycle."""
        ...

    def error(self, target: str, error: BaseException) -> None:
        """Record a target's failure (shown in the poller's status) without ending the cycle."""
        ...


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
    """One configured sink: renders and delivers a notification."""

    type: ClassVar[str]
    config_model: ClassVar[type[SinkConfig]] = SinkConfig
    # The least time between two sends to it, in seconds (Slack: one message a second per incoming
    # webhook); the dispatcher paces each sink to it.
    min_interval: ClassVar[float] = 0.0

    def __init__(self, name: str, config: SinkConfig):
        self.name = name
        self.config = config

    @abc.abstractmethod
    async def send(self, notification: Notification, context: SinkContext) -> str:
        """Deliver; return the sink's answer for people. Raise SinkError (transient, maybe with
        retry_after) or PermanentSinkError (the notification goes to `dead`)."""


@dataclasses.dataclass
class SinkContext:
    """What the core lends a sink: its HTTP session (one per app), a logger, and where a chat sink keeps
    the message ids of each breakage's thread (flowforged.store.threads.Threads)."""

    http: Any  # aiohttp.ClientSession
    log: Any
    threads: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """An authentic body that is JSON but cannot be made into objects (nested deeper than Python
    recurses): ingest stores it raw with `error` and acknowledges it, as any payload it cannot read."""

    error: str


def decode_json(body: bytes) -> Any:
    # msgspec decodes a 20 KB workflow_run about twice as fast as the json module: this is the hot path.
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    except UnicodeDecodeError:
        raise NotJSON("the body is not UTF-8") from None
    except RecursionError:
        return Unreadable("RecursionError: the JSON is nested too deeply to decode")
    try:
        return json.loads(body)  # what msgspec refuses but JSON allows (integers beyond 64 bits)
    except RecursionError:
        return Unreadable("RecursionError: the JSON is nested too deeply to decode")
    except (UnicodeDecodeError, ValueError):
        raise NotJSON("the body is not JSON") from None


_DONE = {"cancel": "cancelled", "force-cancel": "force-cancelled", "re-run": "re-run", "retry": "retried"}


def operation_error(error: ProviderError, source: str, action: str, subject: str, permission: str) -> ProviderError:
    """An operation's ProviderError (made by flowforged.http.error_for) in words that say what was
    attempted on what and what to do about it: `github: run 42 of o/r/.github/workflows/ci.yml cannot
    be cancelled (the provider said: Cannot cancel a workflow run that is completed.)`."""
    text = str(error)
    markers = (": conflict: ", ": forbidden: ", ": not found: ")
    detail = next((text.split(marker, 1)[1] for marker in markers if marker in text), "")
    said = f" (the provider said: {detail})" if detail else ""
    if error.status == 404:
        message = f"{source}: {subject} was not found: it does not exist or the API token cannot see it{said}"
    elif error.status == 403:
        message = f"{source}: the API token may not {action} {subject}; it needs {permission}{said}"
    elif error.status == 409:
        done = _DONE.get(action, f"{action}ed")
        message = f"{source}: {subject} cannot be {done}{said}"
    else:
        return error
    return ProviderError(message, status=error.status, code=error.code)


@functools.cache
def providers() -> dict[str, type[Provider]]:
    return {ep.name: ep.load() for ep in entry_points(group="flowforged.providers")}


@functools.cache
def sinks() -> dict[str, type[Sink]]:
    return {ep.name: ep.load() for ep in entry_points(group="flowforged.sinks")}
