"""The poller: what webhooks missed, from the providers' APIs (docs/architecture.md, the event path).

One APScheduler job per source with a `poll_interval`, each cycle asking the provider plugin's poll()
what changed since the cursors in poll_state; every run and job it finds goes through
`Ingest.polled`, the webhook path, so a state a webhook already told is stored once and notifies
nobody twice. The first cycle runs as soon as the daemon starts and looks back over the source's
`backfill` window, so runs that finished while the daemon was down are found.

A cycle never sleeps waiting for a rate limit: when the budget is spent (or the provider answers
429), the cycle ends there and the next one, after the reset, resumes from the cursors. What it does
wait for is its pace: the client holds each minute to the provider's per-minute limit, and a
scheduled cycle spreads its targets over most of the interval, so that each target is asked about
once an interval and the requests of a thousand repositories are not sent in one burst. Every source
with an API token gets a client here, polled or not: the control API runs operations through
`Poller.clients`, so that they share the source's rate-limit budget with its polling.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from flowforged import logs
from flowforged.errors import FlowForgeError, RateLimited, StoreUnavailable
from flowforged.http import OUTCOMES, ProviderClient
from flowforged.ingest import Ingest
from flowforged.model import Status, iso
from flowforged.plugin import Provider
from flowforged.store import IngestResult, Store
from flowforged.store.pollstate import Cursors, SqliteEtags

log = logs.get("flowforged.poller")

CONCURRENCY = 4  # targets (repositories, projects) of one source polled at a time
# How long an unfinished run is looked after once it leaves the first page: GitHub ends a workflow
# run after 35 days at most, but one still unfinished after a week has been forgotten by its provider.
OPEN_RUN_MAX_AGE = 7 * 86400.0
ETAG_MAX_AGE = 30 * 86400.0  # an ETag not refreshed for this long is pruned at start
MAX_ERRORS_SHOWN = 3
FOLLOW_FOR = 86400.0  # a re-run is looked after for a day at most
# A scheduled cycle starts its targets evenly over this share of the interval; the rest is room for
# what changed targets cost, so that the cycle ends before the next one is due.
SPREAD = 0.8
PACING_KEYS = ("points_per_minute", "max_rps")
TERMINAL = frozenset(status.value for status in Status if status.terminal)

RequestListener = Callable[[str, str], None]  # (source, outcome): metrics' poll_request
# (source, remaining, limit, reset_at): metrics' rate_limit_remaining
BudgetListener = Callable[[str, int | None, int | None, float | None], None]


@dataclasses.dataclass
class CycleResult:
    """What one cycle of one source did, for tests, logs and the benchmark."""

    source: str
    started_at: float
    seconds: float = 0.0
    requests: dict[str, int] = dataclasses.field(default_factory=dict)  # by outcome, this cycle
    targets: int = 0
    events: int = 0  # run and job states newly recorded
    transitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # per target, the cycle went on
    rate_limited: str | None = None  # why the cycle ended early

    @property
    def ok(self) -> bool:
        return not self.errors and self.rate_limited is None


@dataclasses.dataclass
class SourceState:
    interval: float
    last_poll_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    last: CycleResult | None = None


class Context:
    """The PollContext of flowforged.plugin for one cycle of one source."""

    def __init__(self, poller: Poller, provider: Provider, now: float, result: CycleResult, spread: float = 0.0):
        self.source = provider.name
        self.spread = spread
        self.now = now
        self.since = now - provider.config.backfill
        self.memory = poller.memory.setdefault(provider.name, {})
        self._poller = poller
        self._provider = provider
        self._result = result
        self._open: list[dict[str, Any]] | None = None

    async def cursor(self, key: str) -> str | None:
        return await self._poller.cursors.get(self.source, key)

    async def set_cursor(self, key: str, value: str) -> None:
        await self._poller.cursors.set(self.source, key, value)

    async def known(self, runs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        return await self._poller.cursors.known(self.source, runs)

    async def open_runs(self) -> list[dict[str, Any]]:
        if self._open is None:  # once a cycle, however many repositories ask
            after = iso(datetime.fromtimestamp(self.now - OPEN_RUN_MAX_AGE, UTC))
            stored = await self._poller.cursors.open_runs(self.source, after)
            listed = {run["run_id"] for run in stored}
            followed = self._poller.following.get(self.source, {})
            self._open = stored + [run for run_id, run in followed.items() if run_id not in listed]
        return self._open

    async def emit(self, event: str, payload: dict[str, Any]) -> IngestResult:
        result = await self._poller.ingest.polled(self._provider, event, payload)
        self._result.events += len(result.events)
        self._result.transitions += result.transitions
        return result

    async def each(self, targets: Sequence[str], poll: Callable[[str], Awaitable[None]]) -> None:
        """Poll each target, `concurrency` at a time; with a spread, target i starts no sooner than
        i/n of the way through it."""
        self._result.targets += len(targets)
        self._poller.check_pace(self.source, len(targets))
        queue = iter(enumerate(targets))
        step = self.spread / len(targets) if targets else 0.0
        clock, sleep = self._poller.clock, self._poller.sleep

        async def worker() -> None:
            for n, target in queue:  # shared by the workers: each target is taken once
                if step and (wait := self.now + n * step - clock()) > 0:
                    await sleep(wait)
                try:
                    await poll(target)
                except (RateLimited, StoreUnavailable):
                    raise  # the budget is the source's, the store everyone's: the others would fail too
                except Exception as exc:
                    self.error(target, exc)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._poller.concurrency, len(targets))):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    def error(self, target: str, error: BaseException) -> None:
        message = str(error) or type(error).__name__
        self._result.errors.append(f"{target}: {message}")
        if not isinstance(error, FlowForgeError):
            # Not an answer of the provider: a bug, or a payload of a shape nobody expected.
            log.error("poll target failed", source=self.source, target=target, exc_info=error)
        else:
            log.warning("poll target failed", source=self.source, target=target, error=message)


class Poller:
    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        providers: Mapping[str, Provider],
        session: aiohttp.ClientSession | None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        concurrency: int = CONCURRENCY,
        client_options: Mapping[str, Any] | None = None,
    ):
        """`clock` is wall time for cycles and the clients' rate-limit arithmetic, `sleep` spreads a
        cycle's targets; `client_options` go to each ProviderClient (headroom, monotonic, ...) and win
        over the source's pacing keys (points_per_minute, max_rps)."""
        self.store = store
        self.ingest = ingest
        self.providers = providers
        self.session = session
        self.clock = clock
        self.sleep = sleep
        self.concurrency = concurrency
        self.client_options = dict(client_options or {})
        self.cursors = Cursors(store)
        self.etags = SqliteEtags(store)
        self.clients: dict[str, ProviderClient] = {}
        self.memory: dict[str, dict[str, Any]] = {}  # per source, kept between cycles
        self.on_request: list[RequestListener] = []
        self.on_budget: list[BudgetListener] = []
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._states: dict[str, SourceState] = {}
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._cycles: set[asyncio.Task[Any]] = set()
        self._reported: dict[str, dict[str, int]] = {}
        self._warned: dict[str, int] = {}  # source -> the number of targets its interval was too short for
        # Runs re-run through the control API, looked after until their new attempt has finished: a
        # re-run attempt keeps its run's place in the list, which may be far from the first page.
        self.following: dict[str, dict[str, dict[str, Any]]] = {}

    # --- life ------------------------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Make the clients, start the scheduler, and schedule each polled source's first cycle (its
        backfill) for now. Returns at once: the cycles run in the background. `session` is for a
        Poller made before the app's ClientSession exists (so that the API can hold it from build())."""
        self.session = session or self.session
        if self.session is None:
            raise RuntimeError("the poller needs an aiohttp.ClientSession")
        before = iso(datetime.fromtimestamp(self.clock() - ETAG_MAX_AGE, UTC))
        try:
            pruned = await self.cursors.prune(before)
        except StoreUnavailable as exc:  # readiness reports the store; polling can still start
            log.warning("old ETags not pruned", error=str(exc))
            pruned = 0
        self.scheduler.start()
        for name in self.providers:
            self._add(name)
        log.info("poller started", sources=sorted(self._states), clients=sorted(self.clients), etags_pruned=pruned)

    def _add(self, name: str) -> None:
        """Make the source's client and, when it polls, schedule its cycles, the first one now."""
        provider = self.providers[name]
        interval = provider.config.poll_interval
        pacing = {key: getattr(provider.config, key, None) for key in PACING_KEYS}
        options = {"clock": self.clock, **{k: v for k, v in pacing.items() if v is not None}, **self.client_options}
        try:
            self.clients[name] = provider.make_client(self.session, self.etags, **options)
        except NotImplementedError as exc:
            if interval > 0:
                log.warning("source not polled", source=name, reason=str(exc))
            return
        if interval <= 0:
            return
        self._states[name] = SourceState(interval=interval)
        self.scheduler.add_job(
            self._job,
            "interval",
            seconds=interval,
            # Sources (and daemons) polling the same API should not all ask at the same second.
            jitter=min(interval * 0.1, 30.0),
            args=[name],
            id=name,
            name=f"poll {name}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a late cycle still runs (once: coalesce)
            next_run_time=datetime.now(UTC),
            replace_existing=True,
        )

    def _remove(self, name: str, *, forget: bool) -> None:
        """Stop polling the source; `forget` also drops the re-runs it was looking after."""
        if self.scheduler.get_job(name) is not None:
            self.scheduler.remove_job(name)
        tables: list[dict[str, Any]] = [self.clients, self._states, self.memory, self._reported, self._warned]
        for table in tables + ([self.following] if forget else []):
            table.pop(name, None)

    def reload(self, changed: Sequence[str], removed: Sequence[str]) -> None:
        """After `providers` took a new configuration: the sources added or changed get a new client
        and schedule (the first cycle now, from their cursors), the removed ones stop being polled. A
        cycle in flight ends with the provider and client it started with; its committed work stands."""
        for name in removed:
            self._remove(name, forget=True)
        for name in changed:
            self._remove(name, forget=False)
        for name in changed:
            self._add(name)

    async def stop(self) -> None:
        """Stop scheduling and end the cycles in flight. Their committed work stands: every cursor is
        written after what it covers is ingested, so the next start resumes where this one stopped."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a callback of the loop
        cycles = [task for task in self._cycles if not task.done()]
        for task in cycles:
            task.cancel()
        if cycles:
            await asyncio.wait(cycles, timeout=10)
        log.info("poller stopped", interrupted=len(cycles))

    def problem(self) -> str | None:
        """For /readyz."""
        return None if self.scheduler.running else "the poll scheduler is not running"

    # --- cycles ----------------------------------------------------------------------------------

    async def _job(self, source: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._cycles.add(task)
        state = self._states.get(source)
        # The first cycle (the backfill at start) is paced but not spread: missed runs are news.
        spread = SPREAD * state.interval if state is not None and state.last is not None else 0.0
        try:
            await self.poll_once(source, spread=spread)
        except asyncio.CancelledError:
            # The scheduler is shutting down: the job ends quietly, its committed work stands.
            log.info("poll cycle interrupted by shutdown", source=source)
        finally:
            if task is not None:
                self._cycles.discard(task)

    async def poll_once(self, source: str, *, spread: float = 0.0) -> CycleResult:
        """One cycle of one source, now (after the one in flight, if any), its targets started evenly
        over `spread` seconds. Never raises for what the provider answers: errors end up in the result
        and in status()."""
        provider = self.providers[source]
        client = self.clients.get(source)
        if client is None:
            raise KeyError(f"source {source!r} has no API client (no token, or a provider without an API)")
        async with self._locks[source]:
            state = self._states.setdefault(source, SourceState(interval=provider.config.poll_interval))
            now = self.clock()
            result = CycleResult(source=source, started_at=now)
            before = dict(client.stats.requests)
            state.last_poll_at = now
            started = time.perf_counter()
            try:
                await provider.poll(client, Context(self, provider, now, result, spread))
                await self._unfollow(source, now)
            except RateLimited as exc:
                result.rate_limited = str(exc)
            except Exception as exc:  # the targets could not be listed, or the store cannot commit
                result.errors.append(str(exc) or type(exc).__name__)
                if not isinstance(exc, FlowForgeError):
                    log.error("poll cycle failed", source=source, exc_info=exc)
            finally:
                result.seconds = time.perf_counter() - started
                after = client.stats.requests
                result.requests = {k: after.get(k, 0) - before.get(k, 0) for k in OUTCOMES}
                self.report(source)
            self._record(state, result)
            return result

    def check_pace(self, source: str, targets: int) -> None:
        """Warn, naming the key, when the source's interval is too short for a quiet cycle over its
        targets at its pace (one request each, the least a cycle costs): cycles then run back to back,
        each target asked about less often than poll_interval says."""
        state, client = self._states.get(source), self.clients.get(source)
        if state is None or client is None or state.interval <= 0 or self._warned.get(source) == targets:
            return
        needed = client.pacer.seconds_for(targets)
        if needed <= state.interval * SPREAD:
            self._warned.pop(source, None)
            return
        self._warned[source] = targets
        rate = client.pacer.points_per_second() or 0.0
        log.warning(
            "poll_interval too short for the targets at the source's pace: cycles will run back to back",
            source=source,
            key=f"sources.{source}.poll_interval",
            poll_interval=state.interval,
            targets=targets,
            requests_per_minute=round(rate * 60),
            cycle_seconds=round(needed),
            suggested=f"{needed / SPREAD:.0f}s or more, or a higher sources.{source}.points_per_minute if allowed",
        )

    def follow(self, source: str, run: Mapping[str, Any]) -> None:
        """Look after `run` (a row of `runs`) until an attempt after its own has finished."""
        self.following.setdefault(source, {})[str(run["run_id"])] = {
            "pipeline": run["pipeline"],
            "run_id": str(run["run_id"]),
            "attempt": int(run.get("attempt") or 1),
            "created_at": None,  # not on any page the poller has seen: always asked for
            "until": self.clock() + FOLLOW_FOR,
        }

    async def _unfollow(self, source: str, now: float) -> None:
        followed = self.following.get(source)
        if not followed:
            return
        nexts = [(run_id, run["attempt"] + 1) for run_id, run in followed.items()]
        known = await self.cursors.known(source, nexts)
        for run_id, attempt in nexts:
            state = known.get((run_id, attempt))
            if (state is not None and state[0] in TERMINAL) or followed[run_id]["until"] < now:
                del followed[run_id]

    def _record(self, state: SourceState, result: CycleResult) -> None:
        state.last = result
        if result.ok:
            state.last_ok_at = result.started_at
            state.last_error = None
        elif result.rate_limited:
            state.last_error = result.rate_limited
        else:
            shown = "; ".join(result.errors[:MAX_ERRORS_SHOWN])
            more = len(result.errors) - MAX_ERRORS_SHOWN
            state.last_error = shown + (f"; and {more} more" if more > 0 else "")
        # A cycle that found nothing is the common case: logged at debug, not once a minute at info.
        quiet = result.ok and not result.events
        (log.debug if quiet else log.info)(
            "poll cycle",
            source=result.source,
            seconds=round(result.seconds, 3),
            targets=result.targets,
            events=result.events,
            transitions=len(result.transitions),
            requests=result.requests,
            errors=len(result.errors),
            rate_limited=result.rate_limited is not None,
        )

    def report(self, source: str) -> None:
        """Tell the listeners (metrics) each request of the source's client since the last report
        (the control API's operations included: they share the client), and the budget left."""
        client = self.clients.get(source)
        if client is None:  # a cycle that ends after its source was removed by a reload
            return
        stats = client.stats
        seen = self._reported.setdefault(source, dict.fromkeys(OUTCOMES, 0))
        for outcome in OUTCOMES:
            new = stats.requests.get(outcome, 0) - seen[outcome]
            seen[outcome] += new
            for listener in self.on_request:
                for _ in range(new):
                    listener(source, outcome)
        budget = client.budget
        if budget is not None:
            for budget_listener in self.on_budget:
                budget_listener(source, budget.remaining, budget.limit, budget.reset_at)

    # --- for the API and metrics -----------------------------------------------------------------

    def last_cycle(self, source: str) -> CycleResult | None:
        state = self._states.get(source)
        return state.last if state else None

    def status(self) -> dict[str, dict[str, Any]]:
        """Each source with a client: its polling (None where it is not polled) and its requests."""
        out: dict[str, dict[str, Any]] = {}
        for source, client in self.clients.items():
            state = self._states.get(source)
            stats = client.stats
            job = self.scheduler.get_job(source) if self.scheduler.running else None
            next_run = getattr(job, "next_run_time", None)
            out[source] = {
                "polled": state is not None and state.interval > 0,
                "poll_interval": state.interval if state else 0.0,
                "last_poll_at": _iso(state.last_poll_at if state else None),
                "last_ok_at": _iso(state.last_ok_at if state else None),
                "last_error": state.last_error if state else None,
                "rate_limit_remaining": stats.budget_remaining,
                "rate_limited_until": _iso(stats.blocked_until),
                "requests": dict(stats.requests),
                "next_poll_at": iso(next_run) if next_run is not None else None,
            }
        return out


def _iso(epoch: float | None) -> str | None:
    return iso(datetime.fromtimestamp(epoch, UTC)) if epoch is not None else None


POLLER = web.AppKey("poller", Poller)
