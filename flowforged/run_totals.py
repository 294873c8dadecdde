"""Run totals: what the per-pipeline series of /metrics are made of, pure (no I/O, no Prometheus).

The live path (flowforged/metrics.py) and the store (flowforged/store/totals.py) add up the same runs
with the same code: a pipeline's duration and queue-time histograms (PipelineTotals), and per branch its
runs by status, latest finish and since when it is in its status (BranchTotals).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUN_STATUSES = ("success", "failed", "cancelled", "skipped")
DECISIVE = frozenset({"success", "failed"})  # cancelled and skipped runs leave the pipeline's state alone

# A CI run lasts from a few seconds (lint) to hours: GitHub stops a job after 6 h, GitLab's default
# job timeout is 1 h. Buckets are denser where people set their expectations (1 to 30 minutes).
RUN_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600)
# Hosted runners usually pick a job up within seconds; hours mean a runner shortage.
QUEUE_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)

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


def _timestamp(value: str | float | None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value).timestamp()  # ISO 8601 with Z, as model.iso() writes it
