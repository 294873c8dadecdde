"""What the remote half of every provider plugin builds on (docs/plugins.md): provider times,
cursors, the window a cycle looks at, the state a polled item would be stored in, and operations
whose errors say what was attempted. Pure, except `operate`, which is one request."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from flowforged.errors import ProviderError
from flowforged.model import Event

if TYPE_CHECKING:
    from flowforged.http import ProviderClient, Response
    from flowforged.plugin import PollContext, Provider

# Items become visible in a provider's lists a little after they are created or change, and runners'
# clocks are not the provider's: a cycle looks this far behind its cursor. What it sees twice, the
# store drops.
SLACK = 120.0


def epoch(value: str) -> float:
    """An ISO 8601 time (`Z` or an offset) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def iso(seconds: float, *, millis: bool = False) -> str:
    """Epoch seconds as ISO 8601 in UTC with a `Z`, to the second (GitHub, Buildkite) or to the
    millisecond (GitLab writes its own times so)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    if millis:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def newest(*times: str | None) -> str | None:
    """The latest of some ISO 8601 times, ignoring the missing ones."""
    present = [t for t in times if t]
    return max(present, key=epoch) if present else None


def window_start(ctx: PollContext, cursor: str | None, slack: float = SLACK) -> float:
    """Where a cycle starts looking: `slack` before the cursor's time, never before the backfill."""
    return ctx.since if cursor is None else max(ctx.since, epoch(cursor) - slack)


@dataclasses.dataclass(frozen=True, slots=True)
class JsonCursor:
    """A cursor of several fields kept as JSON in poll_state. A plugin subclasses it with its fields
    (each defaulting to None) under @dataclasses.dataclass(frozen=True, slots=True)."""

    @classmethod
    def load(cls, text: str | None) -> Self:
        data = json.loads(text) if text else {}
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    def dump(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def same_etag(a: str | None, b: str | None) -> bool:
    """RFC 9110 weak comparison: W/"x" and "x" are the same representation."""
    return bool(a and b) and a.removeprefix("W/") == b.removeprefix("W/")  # type: ignore[union-attr]


def state_of(provider: Provider, event: str, payload: Any) -> Event | None:
    """The one event a polled item normalizes to, to compare with what the store holds; None when it
    cannot be normalized (ingest then stores it raw with its error, so it is emitted all the same)."""
    try:
        [found] = provider.normalize(event, payload)
    except Exception:
        return None
    return found


async def untold(
    ctx: PollContext, provider: Provider, event: str, payloads: list[Any]
) -> list[tuple[Any, Event | None]]:
    """The polled payloads whose state the store does not hold yet (no webhook or earlier cycle told
    it), in their order, each with the event it normalizes to; one that cannot be normalized is kept
    with None (ingest stores it raw with its error)."""
    states = [state_of(provider, event, payload) for payload in payloads]
    known = await ctx.known([(s.run_id, s.attempt) for s in states if s is not None])
    return [
        (payload, state)
        for payload, state in zip(payloads, states, strict=True)
        if state is None or known.get((state.run_id, state.attempt)) != (state.status.value, state.updated_at)
    ]


def text(value: Any) -> str:
    """A value as a provider's string parameters take it: booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def operate(
    client: ProviderClient,
    method: str,
    path: str,
    explain: Callable[[ProviderError], ProviderError],
    *,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
) -> Response:
    """One request of an operation; a ProviderError reworded by `explain` to say what was attempted on
    what and what the token needs (flowforged.plugin.operation_error)."""
    try:
        return await client.request(method, path, json=json, params=params)
    except ProviderError as exc:
        raise explain(exc) from None


def answer(response: Response) -> dict[str, Any] | None:
    """The provider's answer to an operation when it is an object, else None."""
    return response.data if isinstance(response.data, dict) else None
