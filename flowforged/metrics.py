"""Prometheus metrics for `GET /metrics`.

Every series is kept in plain dicts and exposed by one custom collector, for three reasons:

- Per-pipeline series must drop out once a pipeline+branch has not finished a run for
  `metrics.stale_after`. A collector leaves them out at scrape time, which prometheus_client's
  Counter and Gauge cannot do without a sweep thread.
- The store keeps the totals the per-pipeline series are made of (BranchTotals, PipelineTotals), and
  `rebuild()` loads them as they are: prometheus_client's Counter can only be incremented.
- No `_created` series: with the text format Prometheus ingests each as a gauge of its own, which
  doubles the series of every counter for a value no dashboard uses.

Cardinality is bounded by construction: `source` and `sink` are configured names; `event` is clamped
to a short charset and to a fixed number of values per source; `branch` is the branch only for the
repository's default branch and the patterns in `metrics.branches`, every other branch is `other`
(`none` for a run on a tag); no run id, SHA or user is ever a label. The histograms carry `source`
and `pipeline` only: a pipeline's duration depends little on the branch, and a branch label would
double their ~36 series per pipeline.

Counters survive a restart. A Prometheus counter must never go down while the daemon runs on: if it
did, `rate()` and `increase()` would take the drop for a reset and count the whole value again, a
spike of a week of runs at every restart. So the counters of a pipeline+branch count every run it
ever finished, and so do its histograms, whether the daemon was running or not: the ingest
transaction adds each run that reaches a terminal status to the store's run totals
(store/totals.py), exactly where the core hands it to `run_finished()`, and `rebuild()` loads those
totals at start. Start-up reads a row per pipeline and branch, however many runs the store holds.

Per-pipeline series drop out of /metrics once their pipeline+branch (the histograms: their pipeline)
has finished no run for `stale_after`: a pipeline that was deleted or renamed would otherwise keep
~40 series forever, and Prometheus handles a series that stops (it is marked stale, old samples
remain queryable). The entry stays in memory (a few hundred bytes), so that a pipeline+branch that
comes back carries on from its old values, as it does after a restart, where the totals hold every
run: its counters never restart from zero, and its status is still that of its latest decisive run.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import translate
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

WEBHOOK_OUTCOMES = (
    "accepted",
    "duplicate",
    "rejected",
    "invalid",
    "too_large",
    "unknown_source",
    "unavailable",
)
POLL_OUTCOMES = ("ok", "not_modified", "rate_limited", "error")
ORIGINS = ("webhook", "poll")
NOTIFICATION_OUTCOMES = ("sent", "retried", "dead", "suppressed")
OUTBOX_STATES = ("pending", "dead")
RUN_STATUSES = ("success", "failed", "cancelled", "skipped")
DECISIVE = frozenset({"success", "failed"})  # cancelled and skipped runs leave the pipeline's state alone

# A CI run lasts from a few seconds (lint) to hours: GitHub stops a job after 6 h, GitLab's default
# job timeout is 1 h. Buckets are denser where people set their expectations (1 to 30 minutes).
RUN_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600)
# Hosted runners usually pick a job up within seconds; hours mean a runner shortage.
QUEUE_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)
# Acknowledging a webhook waits for one group commit: milliseconds, seconds when the disk struggles.
WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From the transition to the sink's answer: a second when all is well, an hour through retries.
NOTIFICATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)

UNKNOWN_SOURCE = "unknown"
OTHER = "other"  # every branch without a label of its own, and an event name out of bounds
NO_BRANCH = "none"  # a run on a tag, or a provider that names no branch
_EVENT = re.compile(r"[A-Za-z0-9 _.-]{1,64}")
MAX_EVENTS_PER_SOURCE = 32  # webhook event names are the provider's; headers of rejected ones are not
_GUESSED_DEFAULTS = frozenset({"main", "master"})  # until a run tells us the repository's default
_BRANCH_CACHE_SIZE = 10_000

_STATUS_INDEX = {status: index for index, status in enumerate(RUN_STATUSES)}

Run = Mapping[str, Any]
# (source, pipeline, branch, status, after, inclusive) -> the finish of the branch's first run of that
# status after `after` (at it too when inclusive), from the store; see BranchTotals.merge().
FirstFinished = Callable[[str, str, str, str, float, bool], float | None]


class Histogram:
    """Bucket counts and their sum: of the live series, and of the store's run totals."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)
        # bisect_left: a value equal to a bound belongs to that bucket (`le` is inclusive).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, count) of each bucket that counted something; +Inf is math.inf."""
        return [(bound, count) for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True) if count]

    def add_buckets(self, buckets: Iterable[tuple[float, int]], total: float) -> None:
        """Add counts kept by upper bound. Should the buckets change in a release, a count kept under a
        bound that is gone goes to the bucket that holds that bound: never lost, never counted twice."""
        for bound, count in buckets:
            self.counts[bisect.bisect_left(self.bounds, bound)] += count
        self.sum += total


@dataclass(frozen=True, slots=True)
class Finish:
    """What a run that reached a terminal status adds to its pipeline's series."""

    status: str
    finished: float  # Unix time
    duration: float | None  # None: not observed
    queue: float | None

    @classmethod
    def of(cls, run: Run, now: Callable[[], float]) -> Finish:
        """What `run` adds. Without a finish time from the provider, a run finished when it was last
        updated, the time the store keeps for it too; `now()` if the run says neither."""
        status = run["status"]
        status = getattr(status, "value", status)  # model.Status or its string
        if status not in _STATUS_INDEX:
            raise ValueError(f"run of {run.get('pipeline')!r} is not terminal: {status!r}")
        finished = _timestamp(run.get("finished_at") or run.get("updated_at"))
        # A cancelled run stops early and a skipped one takes no time: either would drag p50 down.
        duration = run.get("duration_seconds") if status in DECISIVE else None
        return cls(status, now() if finished is None else finished, duration, run.get("queue_seconds"))


def _order(status: str | None, finished: float) -> tuple[float, bool]:
    """Where a decisive run sorts: by finish, and a failure after a success of the same second (times
    are whole seconds). The latest one sets the status whichever arrived first, so that merging the
    totals of several branches gives what one label fed their runs would."""
    return finished, status == "failed"


@dataclass(slots=True)
class BranchTotals:
    """The runs of one pipeline on one branch, added up: the live path keeps them per branch label, the
    store per branch (store/totals.py), and `Metrics.rebuild()` merges the latter into labels."""

    finished: float  # latest finish of any terminal run
    counts: list[int] = field(default_factory=lambda: [0] * len(RUN_STATUSES))
    last_success: float | None = None  # finish of the latest successful run
    last_failed: float | None = None
    since: float = 0.0  # finish of the run that moved it into its current status

    @property
    def status(self) -> str | None:
        """success or failed: that of the latest decisive run (see `_order`)."""
        if self.last_failed is not None and (self.last_success is None or self.last_failed >= self.last_success):
            return "failed"
        return None if self.last_success is None else "success"

    def last(self, status: str) -> float | None:
        return self.last_success if status == "success" else self.last_failed

    def add(self, status: str, finished: float) -> None:
        """Count a run; a decisive one that sorts after the latest decisive one sets the status."""
        self.counts[_STATUS_INDEX[status]] += 1
        self.finished = max(self.finished, finished)
        if status not in DECISIVE:
            return
        current = self.status
        # A run that sorts before the latest decisive one arrived late: it changes nothing.
        if current is None or (status != current and _order(status, finished) > _order(current, self.last(current))):
            self.since = finished
        latest = self.last(status)
        if latest is None or finished > latest:
            if status == "success":
                self.last_success = finished
            else:
                self.last_failed = finished

    @classmethod
    def merge(
        cls, members: list[tuple[str, BranchTotals]], first: Callable[[str, str, float, bool], float | None]
    ) -> BranchTotals:
        """The totals of several branches under one label (`other`), as if one label had been fed their
        runs in finish order. Counts add up; `since` is the first run of the label's status after its
        latest run of the other status, on any branch. A branch whose own streak of that status began
        before that run holds the answer in the middle of its streak: `first(branch, status, after,
        inclusive)` looks it up in the store.
        """
        if len(members) == 1:
            return members[0][1]
        every = [totals for _, totals in members]
        merged = cls(
            max(totals.finished for totals in every),
            [sum(counts) for counts in zip(*(totals.counts for totals in every), strict=True)],
            max((t.last_success for t in every if t.last_success is not None), default=None),
            max((t.last_failed for t in every if t.last_failed is not None), default=None),
        )
        status = merged.status
        if status is None:
            return merged
        other = merged.last("failed" if status == "success" else "success")
        if other is None:  # never the other status: its first run of this one, on any branch
            merged.since = min(totals.since for totals in every if totals.status == status)
            return merged
        inclusive = status == "failed"  # a failure sorts after a success of the same second

        def after(finished: float) -> bool:
            return finished > other or (inclusive and finished == other)

        starts = []
        for branch, totals in members:
            latest = totals.last(status)
            if totals.status != status or latest is None or not after(latest):
                continue  # none of its runs of that status comes after the label's last of the other
            if after(totals.since):
                starts.append(totals.since)
            else:
                found = first(branch, status, other, inclusive)
                # Not in the store as such (a re-run changed the run since): its latest run of that status.
                starts.append(latest if found is None else found)
        merged.since = min(starts)
        return merged


@dataclass(slots=True)
class PipelineTotals:
    """The duration and queue-time histograms of one pipeline, live and in the store."""

    duration: Histogram = field(default_factory=lambda: Histogram(RUN_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(QUEUE_BUCKETS))

    def add(self, finish: Finish) -> None:
        if finish.duration is not None:
            self.duration.observe(finish.duration)
        if finish.queue is not None:
            self.queue.observe(finish.queue)


@dataclass(slots=True)
class _PipelineBranch:
    """What is known of one pipeline on one branch label."""

    default: bool  # the repository's default branch: what the "broken" alert watches
    totals: BranchTotals


@dataclass(slots=True)
class _Pipeline:
    finished: float  # latest finish of any terminal run, on any branch
    default_branch: str | None
    totals: PipelineTotals = field(default_factory=PipelineTotals)


def _timestamp(value: str | float | None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value).timestamp()  # ISO 8601 with Z, as model.iso() writes it


@functools.cache
def _les(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return (*(floatToGoString(bound) for bound in bounds), "+Inf")


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


class Metrics:
    """The daemon's metrics, in a registry of their own (one per daemon, one per test)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        branches: list[str] = ["main", "master"],  # noqa: B006 (read only, the config's default)
        stale_after: float = 7 * 86400,
        version: str = "0.0.0",
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
    ):
        self.registry = registry
        self.stale_after = float(stale_after)
        self.version = version
        self._clock = clock
        self._branch_pattern = re.compile("|".join(translate(p) for p in branches)) if branches else None
        self._branch_cache: dict[str, bool] = {}
        self._lock = threading.Lock()  # the store's writer thread may report as the event loop scrapes

        self._webhooks: dict[tuple[str, str, str], int] = {}
        self._webhook_events: dict[str, set[str]] = {}
        self._webhook_seconds: dict[tuple[str], Histogram] = {}
        self._polls: dict[tuple[str, str], int] = {}
        self._rate_limits: dict[str, tuple[int, int | None, float | None]] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._notifications: dict[tuple[str, str], int] = {}
        self._outbox: dict[str, int] = {}
        self._notification_latency = Histogram(NOTIFICATION_BUCKETS)
        self._branches: dict[tuple[str, str, str], _PipelineBranch] = {}
        self._pipelines: dict[tuple[str, str], _Pipeline] = {}

        registry.register(_Collector(self))
        if process_metrics:
            # The standard process_* names, with no prefix: stock dashboards and alerts query them.
            ProcessCollector(registry=registry)

    # --- webhooks, polling, storage -------------------------------------------------------------
    def webhook(self, source: str, event: str, outcome: str, seconds: float) -> None:
        """One delivery to /hooks/{source}, answered after `seconds`."""
        _check(outcome, WEBHOOK_OUTCOMES, "webhook outcome")
        if outcome == "unknown_source":
            source = UNKNOWN_SOURCE  # the path is the sender's choice, not a configured name
        with self._lock:
            event = self._event_label(source, event)
            if (source, event, outcome) not in self._webhooks:
                # Every outcome starts at 0, so that the first rejection is an increase() and alerts.
                for each in WEBHOOK_OUTCOMES:
                    self._webhooks.setdefault((source, event, each), 0)
            self._webhooks[source, event, outcome] += 1
            histogram = self._webhook_seconds.get((source,))
            if histogram is None:
                histogram = self._webhook_seconds[source,] = Histogram(WEBHOOK_BUCKETS)
            histogram.observe(seconds)

    def _event_label(self, source: str, event: str) -> str:
        if not _EVENT.fullmatch(event or ""):
            return OTHER
        seen = self._webhook_events.setdefault(source, set())
        if event not in seen:
            if len(seen) >= MAX_EVENTS_PER_SOURCE:
                return OTHER
            seen.add(event)
        return event

    def poll_request(self, source: str, outcome: str) -> None:
        _check(outcome, POLL_OUTCOMES, "poll outcome")
        with self._lock:
            self._count(self._polls, source, outcome, POLL_OUTCOMES)

    def rate_limit_remaining(
        self, source: str, remaining: int | None, quota: int | None = None, reset_at: float | None = None
    ) -> None:
        """What the provider's rate-limit headers said (GitHub `x-ratelimit-remaining`, `-limit`,
        `-reset`; GitLab `RateLimit-Remaining`, `-Limit`, `-Reset`). None removes the series."""
        with self._lock:
            if remaining is None:
                self._rate_limits.pop(source, None)
            else:
                self._rate_limits[source] = (remaining, quota, reset_at)

    def events_stored(self, source: str, origin: str, count: int = 1) -> None:
        _check(origin, ORIGINS, "origin")
        with self._lock:
            self._count(self._events, source, origin, ORIGINS, count)

    # --- notifications ----------------------------------------------------------------------------
    def notification(self, sink: str, outcome: str) -> None:
        _check(outcome, NOTIFICATION_OUTCOMES, "notification outcome")
        with self._lock:
            self._count(self._notifications, sink, outcome, NOTIFICATION_OUTCOMES)

    def outbox_depth(self, count: int, state: str = "pending") -> None:
        _check(state, OUTBOX_STATES, "outbox state")
        with self._lock:
            self._outbox[state] = count

    def outbox_depth_by_state(self, counts: Mapping[str, int]) -> None:
        """The outbox rows per state; states other than pending and dead have left the outbox."""
        with self._lock:
            for state in OUTBOX_STATES:
                self._outbox[state] = counts.get(state, 0)

    def notification_latency(self, seconds: float) -> None:
        """From the run's finish (the transition) to the sink's acknowledgement."""
        with self._lock:
            self._notification_latency.observe(seconds)

    @staticmethod
    def _count(
        counters: dict[tuple[str, str], int], name: str, outcome: str, outcomes: tuple[str, ...], by: int = 1
    ) -> None:
        if (name, outcome) not in counters:
            for each in outcomes:
                counters.setdefault((name, each), 0)
        counters[name, outcome] += by

    # --- pipeline runs ----------------------------------------------------------------------------
    def run_finished(self, run: Run) -> None:
        """A run reached a terminal status; called once per run (the core guarantees it)."""
        with self._lock:
            finish = Finish.of(run, self._clock)
            source, pipeline = run["source"], run["pipeline"]
            entry = self._pipelines.get((source, pipeline))
            if entry is None:
                entry = self._pipelines[source, pipeline] = _Pipeline(finish.finished, None)
            entry.finished = max(entry.finished, finish.finished)
            if run.get("default_branch"):
                entry.default_branch = run["default_branch"]
            entry.totals.add(finish)

            label, default = self._branch_label(run.get("branch"), entry.default_branch)
            state = self._branches.get((source, pipeline, label))
            if state is None:
                state = self._branches[source, pipeline, label] = _PipelineBranch(
                    default, BranchTotals(finish.finished)
                )
            state.default = default
            state.totals.add(finish.status, finish.finished)

    def rebuild(
        self,
        pipelines: Iterable[tuple[str, str, str | None, PipelineTotals]],
        branches: Iterable[tuple[str, str, str, BranchTotals]],
        first_finished: FirstFinished,
    ) -> int:
        """Load the store's run totals at start, before the listener is ready (store/totals.py).

        `pipelines`: (source, pipeline, default branch, histograms); `branches`: (source, pipeline,
        branch or "", totals), one per branch that ever finished a run, stale or not, so that no
        counter is lower than before the restart (see the module's docstring). Branches that share a
        label (`other`) are merged, with `first_finished` for what their totals cannot tell (see
        BranchTotals.merge()). Returns the number of runs the counters hold.
        """
        labels: dict[tuple[str, str, str], tuple[bool, list[tuple[str, BranchTotals]]]] = {}
        counted = 0
        with self._lock:
            for source, pipeline, default_branch, histograms in pipelines:
                self._pipelines[source, pipeline] = _Pipeline(-math.inf, default_branch, histograms)
            for source, pipeline, branch, totals in branches:
                entry = self._pipelines.get((source, pipeline))
                if entry is None:
                    entry = self._pipelines[source, pipeline] = _Pipeline(-math.inf, None)
                entry.finished = max(entry.finished, totals.finished)
                label, default = self._branch_label(branch, entry.default_branch)
                labels.setdefault((source, pipeline, label), (default, []))[1].append((branch, totals))
                counted += sum(totals.counts)
            for (source, pipeline, label), (default, members) in labels.items():
                merged = BranchTotals.merge(members, functools.partial(first_finished, source, pipeline))
                self._branches[source, pipeline, label] = _PipelineBranch(default, merged)
        return counted

    def _branch_label(self, branch: str | None, default_branch: str | None) -> tuple[str, bool]:
        """The `branch` label and whether it is the repository's default branch."""
        if not branch:
            return NO_BRANCH, False
        if default_branch is not None:
            is_default = branch == default_branch
        else:
            is_default = branch in _GUESSED_DEFAULTS
        if is_default:
            return branch, True
        matched = self._branch_cache.get(branch)
        if matched is None:
            matched = bool(self._branch_pattern and self._branch_pattern.match(branch))
            if len(self._branch_cache) >= _BRANCH_CACHE_SIZE:
                self._branch_cache.clear()  # feature branches come and go; keep memory bounded
            self._branch_cache[branch] = matched
        return (branch if matched else OTHER), False

    # --- exposition ----------------------------------------------------------------------------
    async def handler(self, request: web.Request) -> web.Response:
        """GET /metrics: the text format, or OpenMetrics when the scraper asks for it (Prometheus does)."""
        encoder, content_type = choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
        # Rendering thousands of series takes tens of milliseconds: off the event loop, so that no
        # webhook waits on a scrape.
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, self.registry)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    def families(self) -> list[Metric]:
        """Every family, with its samples as of now (stale pipelines left out)."""
        with self._lock:
            specs = list(self._specs(self._clock() - self.stale_after))
        # Most of a scrape is building samples: outside the lock, so that recording never waits on it.
        return [_family(*spec) for spec in specs]

    def _specs(self, horizon: float) -> Iterator[_Spec]:
        """What each family holds, copied: (type, name, help, label names, values by label values)."""
        yield "info", "flowforge_build", "The running flowforged.", ["version"], {(self.version,): 1}
        yield (
            "counter",
            "flowforge_webhook_deliveries_total",
            "Webhook deliveries received, by source, event and how they were answered.",
            ["source", "event", "outcome"],
            dict(self._webhooks),
        )
        yield (
            "histogram",
            "flowforge_webhook_duration_seconds",
            "Time from a webhook request to its answer (after the commit, for an accepted one).",
            ["source"],
            _copy(self._webhook_seconds),
        )
        yield (
            "counter",
            "flowforge_poll_requests_total",
            "Requests to the provider APIs by the poller, by source and outcome.",
            ["source", "outcome"],
            dict(self._polls),
        )
        for index, (name, help_text) in enumerate(_RATE_LIMIT_FAMILIES):
            values = {(source,): v[index] for source, v in self._rate_limits.items() if v[index] is not None}
            yield "gauge", name, help_text, ["source"], values
        yield (
            "counter",
            "flowforge_events_stored_total",
            "Normalized run and job events stored, by source and origin (webhook or poll).",
            ["source", "origin"],
            dict(self._events),
        )
        yield from self._pipeline_specs(horizon)
        yield (
            "counter",
            "flowforge_notifications_total",
            "Notification attempts, by sink and outcome (sent, retried, dead, suppressed).",
            ["sink", "outcome"],
            dict(self._notifications),
        )
        yield (
            "gauge",
            "flowforge_outbox_notifications",
            "Notifications in the outbox (its depth): pending delivery, or dead after their last attempt.",
            ["state"],
            {(state,): count for state, count in self._outbox.items()},
        )
        yield (
            "histogram",
            "flowforge_notification_latency_seconds",
            "Time from a transition to its notification's delivery to the sink.",
            [],
            _copy({(): self._notification_latency}),
        )

    def _pipeline_specs(self, horizon: float) -> Iterator[_Spec]:
        """The per-pipeline families, without what finished no run since `horizon` (stale)."""
        finished: dict[tuple[str, ...], float] = {}
        status: dict[tuple[str, ...], float] = {}
        since: dict[tuple[str, ...], float] = {}
        last: dict[tuple[str, ...], float] = {}
        for (source, pipeline, branch), state in self._branches.items():
            totals = state.totals
            if totals.finished < horizon:
                continue
            key = (source, pipeline, branch, "true" if state.default else "false")
            for name, count in zip(RUN_STATUSES, totals.counts, strict=True):
                finished[source, pipeline, branch, name] = count
            if (current := totals.status) is not None:
                status[(*key, current)] = 1
                since[key] = totals.since
            last[key] = totals.finished
        pipelines = {key: entry.totals for key, entry in self._pipelines.items() if entry.finished >= horizon}
        labels = ["source", "pipeline", "branch"]
        yield (
            "counter",
            "flowforge_pipeline_runs_finished_total",
            "Pipeline runs that reached a terminal status, counted once per run, by branch and status.",
            [*labels, "status"],
            finished,
        )
        yield (
            "gauge",
            "flowforge_pipeline_status",
            "1 for the current status of each pipeline+branch (success or failed, from its latest "
            "decisive run); one series per pipeline+branch, its status in the status label.",
            [*labels, "default_branch", "status"],
            status,
        )
        yield (
            "gauge",
            "flowforge_pipeline_status_since_timestamp_seconds",
            "When the pipeline+branch entered its current status: the finish of the run that broke or "
            "fixed it (Unix time).",
            [*labels, "default_branch"],
            since,
        )
        yield (
            "gauge",
            "flowforge_pipeline_last_finished_timestamp_seconds",
            "When the latest run of the pipeline+branch finished, whatever its status (Unix time).",
            [*labels, "default_branch"],
            last,
        )
        yield (
            "histogram",
            "flowforge_pipeline_run_duration_seconds",
            "Duration of pipeline runs that succeeded or failed (cancelled and skipped runs are left out).",
            ["source", "pipeline"],
            _copy({key: totals.duration for key, totals in pipelines.items()}),
        )
        yield (
            "histogram",
            "flowforge_pipeline_run_queue_seconds",
            "Time pipeline runs waited between being created and starting.",
            ["source", "pipeline"],
            _copy({key: totals.queue for key, totals in pipelines.items()}),
        )


_Spec = tuple[str, str, str, list[str], Mapping[tuple[str, ...], Any]]
_RATE_LIMIT_FAMILIES = (
    ("flowforge_rate_limit_remaining", "Requests left in the provider's rate-limit window, as it last said."),
    ("flowforge_rate_limit_quota", "Requests allowed in the provider's rate-limit window."),
    (
        "flowforge_rate_limit_reset_timestamp_seconds",
        "When the provider's rate-limit window resets (Unix time).",
    ),
)


def _copy(histograms: Mapping[tuple[str, ...], Histogram]) -> dict[tuple[str, ...], Histogram]:
    copies = {}
    for key, histogram in histograms.items():
        copy = copies[key] = Histogram(histogram.bounds)
        copy.counts, copy.sum = list(histogram.counts), histogram.sum
    return copies


def _family(kind: str, name: str, help_text: str, labels: list[str], values: Mapping[tuple[str, ...], Any]) -> Metric:
    if kind == "info":
        return InfoMetricFamily(name, help_text, value=dict(zip(labels, next(iter(values)), strict=True)))
    family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if kind == "histogram":
        family = HistogramMetricFamily(name, help_text, labels=labels)
    else:
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)
    for key, value in sorted(values.items(), key=lambda item: item[0]):  # the same runs, the same text
        if kind == "histogram":
            cumulative, buckets = 0, []
            for le, count in zip(_les(value.bounds), value.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, value.sum)
        else:
            family.add_metric(list(key), value)
    return family


class _Collector:
    """The registry's view of a Metrics: families built at scrape time."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics.families())

    def describe(self) -> Iterator[Metric]:
        # The registry reads the names, and refuses a second Metrics on the same registry.
        return iter(self._metrics.families())
