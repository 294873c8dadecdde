"""Plugin interfaces and their discovery through entry points.

The core never imports a plugin by name: built-in providers and sinks register under the entry point
groups `flowforged.providers` and `flowforged.sinks` exactly as a third-party package would.

A provider has a pure half (verify, delivery id, decode, normalize) that does no I/O and is tested
with real payloads, and a thin async half (make_client, poll, trigger, rerun, cancel) that does its HTTP
through the ProviderClient the core gives it, and reads and records what it polled through a
PollContext: it never touches the store itself.
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

from flowforged.config import SinkConfig, SourceConfig
from flowforged.errors import NotJSON, ProviderError
from flowforged.model import Event

if TYPE_CHECKING:
    import aiohttp

    from flowforged.http import EtagStore, ProviderClient

Headers = Mapping[str, str]  # case-insensitive in practice (aiohttp's CIMultiDictProxy)


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider's API can do for the control API. An option it cannot honour is refused with
    422 naming it (flowforged.api.actions), never silently dropped."""

    trigger: bool = False
    inputs: bool = False  # what the pipeline declares it takes (workflow_dispatch inputs, spec:inputs, ...)
    variables: bool = False  # CI/CD variables set for one run (GitLab variables, Buildkite env)
    rerun: bool = False  # every job of a run again
    rerun_failed: bool = False  # only its failed jobs
    cancel: bool = False
    force_cancel: bool = False

    def refusal(self, provider: str, action: str, options: Mapping[str, Any]) -> tuple[str, str] | None:
        """(option, reason) for the first option of `action` this provider cannot honour (the action
        itself when it has none of it), else None.

        `options` are the request's: trigger (`inputs`, `variables`), rerun (`failed_only`, None when
        not given), cancel (`force`)."""
        if action == "trigger":
            if not self.trigger:
                return "trigger", f"{provider} sources cannot trigger runs"
            for name in ("inputs", "variables"):
                if options.get(name) and not getattr(self, name):
                    return name, f"{provider} pipelines take no {name}" + (
                        " (pass them as inputs)" if name == "variables" and self.inputs else ""
                    )
        elif action == "rerun":
            failed_only = options.get("failed_only")
            if failed_only is None and not (self.rerun or self.rerun_failed):
                return "rerun", f"{provider} sources cannot re-run runs"
            if failed_only is True and not self.rerun_failed:
                return "failed_only", f"{provider} cannot re-run only the failed jobs of a run"
            if failed_only is False and not self.rerun:
                return "failed_only", f"{provider} can re-run only the failed jobs of a run, not all of them"
        elif action == "cancel":
            if not self.cancel:
                return "cancel", f"{provider} sources cannot cancel runs"
            if options.get("force") and not self.force_cancel:
                return "force", f"{provider} has no forced cancel"
        return None


class Provider(abc.ABC):
    """One configured source of a provider type (`github`, `gitlab`, ...)."""

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()  # webhooks only, until a provider says more
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

    # --- async half: the provider's API -------------------------------------------------------
    # A provider without an API (webhooks only) leaves these as they are: the poller skips it and the
    # control API answers that the operation is not supported.

    # The plugin's async half, a module with make_client(source, api_url, token, session, etags,
    # **options) and targets(client, ctx, repos): what most providers need from the two methods below.
    api: ClassVar[Any] = None

    def make_client(self, session: aiohttp.ClientSession, etags: EtagStore, **options: Any) -> ProviderClient:
        """A client for this source's API: base URL (`api_url` or the provider's default), auth header
        from `token`, the provider's extra headers. `options` go to ProviderClient (clock, headroom)."""
        if self.api is None:
            raise NotImplementedError(f"{self.type} sources have no API client")
        if self.config.token is None:
            raise NotImplementedError(f"source {self.name} has no API token")
        return self.api.make_client(self.name, self.config.api_url, self.config.token.get(), session, etags, **options)

    async def poll(self, client: ProviderClient, ctx: PollContext) -> None:
        """One poll cycle: find what changed since the cursors in `ctx` and hand each run or job to
        `ctx.emit()`. The default runs poll_target() over poll_targets() through `ctx.each()`."""
        targets = await self.poll_targets(client, ctx)
        await ctx.each(targets, lambda target: self.poll_target(client, ctx, target))

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        """What one cycle looks at (repositories, projects), with organizations and groups expanded."""
        if self.api is None:
            raise NotImplementedError(f"{self.type} sources cannot be polled")
        return await self.api.targets(client, ctx, self.config.repos)

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
