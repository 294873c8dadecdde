"""Prometheus metrics for `GET /metrics`.

Every series is kept in plain dicts and written by flowforged/exposition.py (prometheus_client's
encoders took 8 s and 150 MB more at 10,000 pipelines; the same families stay readable through
prometheus_client's registry, `_Collector`), for three reasons:

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

By default a pipeline has about 9 series, so that 10,000 pipelines stay under 100,000 samples: the
status, since and last finish of its named branches (the default branch and `metrics.branches`), its
runs by status, and the sum and count of its run durations (`flowforge_pipeline_run_time_seconds`,
the mean). The pipelines that match `metrics.detail` have every series: runs by branch label, the
status of `other` and `none`, and the duration and queue-time histograms.

A scrape renders only the pipelines that changed: each pipeline's lines are kept until one of its
runs finishes or one of its series goes stale (`exposition()`).

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
import functools
import gzip
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.utils import floatToGoString

from flowforged import exposition
from flowforged.run_totals import (
    RUN_STATUSES,
    BranchTotals,
    Finish,
    FirstFinished,
    Histogram,
    PipelineTotals,
    Run,
)

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
    labels: list[str] = field(default_factory=list)  # its branch labels, keys of Metrics._branches


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
        detail: list[str] = [],  # noqa: B006 (read only, the config's default)
    ):
        self.registry = registry
        self._detail_pattern = re.compile("|".join(translate(p) for p in detail)) if detail else None
        # The sample lines of each pipeline, by family, kept until a run of it finishes (dirty) or its
        # first visible series goes stale (the float): most scrapes render a few pipelines, not 10,000.
        self._chunks: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._order: list[tuple[str, str]] = []  # the pipelines, sorted: the order of their series
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
        self._unapplied = 0
        self._notification_latency = Histogram(NOTIFICATION_BUCKETS)
        self._branches: dict[tuple[str, str, str], _PipelineBranch] = {}
        self._pipelines: dict[tuple[str, str], _Pipeline] = {}

        registry.register(_Collector(self))
        self._process: ProcessCollector | None = None
        if process_metrics:
            # The standard process_* names, with no prefix: stock dashboards and alerts query them.
            self._process = ProcessCollector(registry=registry)

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

    def unapplied(self, count: int) -> None:
        """Webhook deliveries acknowledged and not yet applied (docs/architecture.md, "Accept, then apply")."""
        self._unapplied = count

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
                entry.labels.append(label)
            state.default = default
            state.totals.add(finish.status, finish.finished)
            self._dirty.add((source, pipeline))

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
                self._pipelines[source, pipeline].labels.append(label)
            self._chunks.clear()
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
        """GET /metrics: the text format, or OpenMetrics when the scraper asks for it (Prometheus does),
        gzipped when it accepts gzip (Prometheus does)."""
        openmetrics = exposition.wants_openmetrics(request.headers.get(hdrs.ACCEPT, ""))
        gzipped = exposition.accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
        # Rendering takes tens of milliseconds at 10,000 pipelines: off the event loop, so that no
        # webhook waits on a scrape.
        body = await asyncio.get_running_loop().run_in_executor(None, self.body, openmetrics, gzipped)
        headers = {
            hdrs.CONTENT_TYPE: exposition.OPENMETRICS if openmetrics else exposition.TEXT,
            hdrs.VARY: hdrs.ACCEPT_ENCODING,
        }
        if gzipped:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)

    def body(self, openmetrics: bool, gzipped: bool = False) -> bytes:
        """The whole exposition, as /metrics serves it."""
        process = [_process_spec(metric) for metric in self._process.collect()] if self._process else []
        text = exposition.render(process, openmetrics) + self.exposition(openmetrics)
        data = (text + exposition.EOF if openmetrics else text).encode()
        # Level 1: a sixth of the text, in a tenth of the time of the default level.
        return gzip.compress(data, compresslevel=1, mtime=0) if gzipped else data

    def exposition(self, openmetrics: bool) -> str:
        """Every family of the daemon's own (process metrics aside), in one format.

        The per-pipeline families are nearly all of it, and a pipeline's series change only when one of
        its runs finishes or one of them goes stale: each pipeline's lines are kept until then.
        """
        now = self._clock()
        horizon = now - self.stale_after
        with self._lock:
            head, tail = list(self._head_specs()), list(self._tail_specs())
            if len(self._order) != len(self._pipelines):
                self._order = sorted(self._pipelines)
            order = self._order
            chunks = self._chunks
            todo = [key for key in order if key in self._dirty or key not in chunks or chunks[key][0] <= now]
            self._dirty.clear()
            # Copied under the lock, rendered outside it: recording a run never waits on a scrape.
            expiries: dict[tuple[str, str], float] = {}
            copies = [(key, self._pipeline_values([key], horizon, expiries)) for key in todo]
        writers = _pipeline_writers()
        rendered = {
            key: (
                expiries[key] + self.stale_after,
                tuple(write(each) if each else "" for write, each in zip(writers, values, strict=True)),
            )
            for key, values in copies
        }
        with self._lock:
            self._chunks.update(rendered)
            lines = [self._chunks[key][1] for key in order]
        parts = [exposition.render(head, openmetrics)]
        for index, (kind, name, help_text, _) in enumerate(_PIPELINE_FAMILIES):
            parts.append(exposition.header(kind, name, help_text, openmetrics))
            parts.extend(each[index] for each in lines)
        parts.append(exposition.render(tail, openmetrics))
        return "".join(parts)

    def families(self) -> list[Metric]:
        """Every family, with its samples as of now (stale pipelines left out)."""
        with self._lock:
            horizon = self._clock() - self.stale_after
            specs = [*self._head_specs(), *self._pipeline_specs(horizon), *self._tail_specs()]
        # Most of a scrape is building samples: outside the lock, so that recording never waits on it.
        return [_family(*spec) for spec in specs]

    def _head_specs(self) -> Iterator[_Spec]:
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
            "gauge",
            "flowforge_deliveries_unapplied",
            "Webhook deliveries acknowledged and stored raw, not yet applied (normalized into runs).",
            [],
            {(): self._unapplied},
        )
        yield (
            "counter",
            "flowforge_events_stored_total",
            "Normalized run and job events stored, by source and origin (webhook or poll).",
            ["source", "origin"],
            dict(self._events),
        )

    def _tail_specs(self) -> Iterator[_Spec]:
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

    def _detailed(self, pipeline: str) -> bool:
        """Whether `metrics.detail` names the pipeline: histograms, runs by branch, every branch label."""
        return bool(self._detail_pattern and self._detail_pattern.match(pipeline))

    def _pipeline_specs(self, horizon: float) -> Iterator[_Spec]:
        """The per-pipeline families, without what finished no run since `horizon` (stale)."""
        values = self._pipeline_values(self._pipelines, horizon)
        for family, each in zip(_PIPELINE_FAMILIES, values, strict=True):
            yield (*family, each)

    def _pipeline_values(
        self, keys: Iterable[tuple[str, str]], horizon: float, expiries: dict[tuple[str, str], float] | None = None
    ) -> list[dict[tuple, Any]]:
        """The values of each of _PIPELINE_FAMILIES for these pipelines, copied; in `expiries`, the finish
        of each pipeline's first visible series to go stale (inf: none visible).

        Every pipeline: the status, since and last finish of its named branches (the default branch and
        metrics.branches: what the alert and the dashboard's table show), its runs by status, and the
        sum and count of its run durations. A pipeline in metrics.detail also has them by branch, for
        `other` and `none` too, and its duration and queue-time histograms: 35 series more, 71% of
        /metrics when every pipeline had them.
        """
        finished: dict[tuple[str | None, ...], int] = {}
        status: dict[tuple[str, ...], int] = {}
        since: dict[tuple[str, ...], float] = {}
        last: dict[tuple[str, ...], float] = {}
        times: dict[tuple[str, ...], tuple[float, int]] = {}
        durations: dict[tuple[str, ...], Histogram] = {}
        queues: dict[tuple[str, ...], Histogram] = {}
        for source, pipeline in keys:
            entry = self._pipelines[source, pipeline]
            soonest = math.inf
            if expiries is not None:
                expiries[source, pipeline] = soonest
            if entry.finished < horizon:
                continue
            detail = self._detailed(pipeline)
            for branch in entry.labels:
                state = self._branches[source, pipeline, branch]
                totals = state.totals
                if totals.finished < horizon:
                    continue
                soonest = min(soonest, totals.finished)
                for name, count in zip(RUN_STATUSES, totals.counts, strict=True):
                    key = (source, pipeline, branch if detail else None, name)
                    finished[key] = finished.get(key, 0) + count
                if not (detail or state.default or branch not in (OTHER, NO_BRANCH)):
                    continue  # the status of unnamed branches merged: noise but for the pipelines one follows
                key = (source, pipeline, branch, "true" if state.default else "false")
                if (current := totals.status) is not None:
                    status[(*key, current)] = 1
                    since[key] = totals.since
                last[key] = totals.finished
            if expiries is not None:
                expiries[source, pipeline] = soonest
            duration = entry.totals.duration
            times[source, pipeline] = (duration.sum, sum(duration.counts))
            if detail:
                durations[source, pipeline] = _copy_one(duration)
                queues[source, pipeline] = _copy_one(entry.totals.queue)
        return [finished, status, since, last, times, durations, queues]


_PIPELINE_FAMILIES = (
    (
        "counter",
        "flowforge_pipeline_runs_finished_total",
        "Pipeline runs that reached a terminal status, counted once per run, by status (and by branch "
        "for the pipelines in metrics.detail).",
        ["source", "pipeline", "branch", "status"],
    ),
    (
        "gauge",
        "flowforge_pipeline_status",
        "1 for the current status of each pipeline+branch (success or failed, from its latest "
        "decisive run); one series per pipeline+branch, its status in the status label.",
        ["source", "pipeline", "branch", "default_branch", "status"],
    ),
    (
        "gauge",
        "flowforge_pipeline_status_since_timestamp_seconds",
        "When the pipeline+branch entered its current status: the finish of the run that broke or "
        "fixed it (Unix time).",
        ["source", "pipeline", "branch", "default_branch"],
    ),
    (
        "gauge",
        "flowforge_pipeline_last_finished_timestamp_seconds",
        "When the latest run of the pipeline+branch finished, whatever its status (Unix time).",
        ["source", "pipeline", "branch", "default_branch"],
    ),
    (
        "summary",
        "flowforge_pipeline_run_time_seconds",
        "Duration of the pipeline's runs that succeeded or failed, as a sum and a count (the mean).",
        ["source", "pipeline"],
    ),
    (
        "histogram",
        "flowforge_pipeline_run_duration_seconds",
        "Duration of pipeline runs that succeeded or failed (cancelled and skipped runs are left out); "
        "pipelines in metrics.detail.",
        ["source", "pipeline"],
    ),
    (
        "histogram",
        "flowforge_pipeline_run_queue_seconds",
        "Time pipeline runs waited between being created and starting; pipelines in metrics.detail.",
        ["source", "pipeline"],
    ),
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


@functools.cache
def _pipeline_writers() -> tuple[exposition.Writer, ...]:
    return tuple(exposition.Writer(kind, name, tuple(labels)) for kind, name, _, labels in _PIPELINE_FAMILIES)


def _process_spec(metric: Metric) -> _Spec:
    """A family of prometheus_client's ProcessCollector (no labels, one sample) as a spec."""
    name = f"{metric.name}_total" if metric.type == "counter" else metric.name
    return metric.type, name, metric.documentation, [], {(): metric.samples[0].value}


def _copy(histograms: Mapping[tuple[str, ...], Histogram]) -> dict[tuple[str, ...], Histogram]:
    return {key: _copy_one(histogram) for key, histogram in histograms.items()}


def _copy_one(histogram: Histogram) -> Histogram:
    copy = Histogram(histogram.bounds)
    copy.counts, copy.sum = list(histogram.counts), histogram.sum
    return copy


def _family(kind: str, name: str, help_text: str, labels: list[str], values: Mapping[tuple[str, ...], Any]) -> Metric:
    """The spec as prometheus_client's Metric: what `generate_latest(metrics.registry)` serves, the
    generic path that /metrics no longer takes (exposition.py); kept as the baseline to compare with."""
    if kind == "info":
        return InfoMetricFamily(name, help_text, value=dict(zip(labels, next(iter(values)), strict=True)))
    family: Metric
    if kind == "histogram":
        family = HistogramMetricFamily(name, help_text, labels=labels)
    elif kind == "summary":
        family = SummaryMetricFamily(name, help_text, labels=labels)
    else:
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)
    sample_name = f"{family.name}_total" if kind == "counter" else family.name
    for key, value in sorted(values.items(), key=lambda item: tuple(v or "" for v in item[0])):
        if kind == "histogram":
            cumulative, buckets = 0, []
            for le, count in zip(_les(value.bounds), value.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, value.sum)
        elif kind == "summary":
            family.add_metric(list(key), count_value=value[1], sum_value=value[0])
        else:  # a label whose value is None is left out of that series
            family.add_sample(sample_name, {n: v for n, v in zip(labels, key, strict=True) if v is not None}, value)
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
