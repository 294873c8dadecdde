"""Run totals: what the per-pipeline series of /metrics are made of, kept in the store.

The ingest transaction adds each run that reaches a terminal status to the totals of its pipeline
(duration and queue-time histograms) and of its pipeline and branch (runs by status, latest finish,
latest success and failure, since when in its status), at the point where the core hands the run to
`Metrics.run_finished()` and with the same code (flowforged/run_totals.py). At start, `rebuild()` loads
them: a row per pipeline and per pipeline+branch, however many runs the store holds, and the counters
come back with the values they had.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowforged.model import iso
from flowforged.run_totals import (
    QUEUE_BUCKETS,
    RUN_BUCKETS,
    RUN_STATUSES,
    BranchTotals,
    Finish,
    Histogram,
    PipelineTotals,
)

if TYPE_CHECKING:
    from flowforged.metrics import Metrics

# BranchTotals as columns: counts in the order of RUN_STATUSES, then times (Unix).
_SAVE_BRANCH = (
    "INSERT OR REPLACE INTO run_totals (source, pipeline, branch, success, failed, cancelled, skipped,"
    " finished_at, last_success_at, last_failed_at, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The first success or failure of a branch after a time (a finish as Finish.of() takes it), by (status,
# inclusive). The status is written out: SQLite uses the partial index idx_runs_decisive only for a
# query that has one of the terms of the index's WHERE.
_FIRST = {
    (status, inclusive): "SELECT coalesce(finished_at, updated_at) AS finished FROM runs"  # noqa: S608
    f" WHERE source = ? AND pipeline = ? AND branch = ? AND status = '{status}'"
    f" AND coalesce(finished_at, updated_at) {'>=' if inclusive else '>'} ? ORDER BY finished LIMIT 1"
    for status in ("success", "failed")
    for inclusive in (False, True)
}
_SAVE_PIPELINE = "INSERT OR REPLACE INTO pipeline_totals (source, pipeline, duration, queue) VALUES (?, ?, ?, ?)"


def add(conn: sqlite3.Connection, run: Mapping[str, Any]) -> None:
    """Add a run that has just reached a terminal status; in the transaction that recorded it."""
    finish = Finish.of(run, time.time)  # a run has an updated_at: never called
    source, pipeline, branch = run["source"], run["pipeline"], run.get("branch") or ""
    row = conn.execute(
        "SELECT success, failed, cancelled, skipped, finished_at, last_success_at, last_failed_at, since"
        " FROM run_totals WHERE source = ? AND pipeline = ? AND branch = ?",
        (source, pipeline, branch),
    ).fetchone()
    totals = _branch_totals(row) if row else BranchTotals(finish.finished)
    totals.add(finish.status, finish.finished)
    conn.execute(_SAVE_BRANCH, (source, pipeline, branch, *_branch_values(totals)))

    row = conn.execute(
        "SELECT duration, queue FROM pipeline_totals WHERE source = ? AND pipeline = ?", (source, pipeline)
    ).fetchone()
    histograms = _pipeline_totals(*row) if row else PipelineTotals()
    histograms.add(finish)
    conn.execute(_SAVE_PIPELINE, (source, pipeline, _dump(histograms.duration), _dump(histograms.queue)))


def backfill(conn: sqlite3.Connection) -> int:
    """The totals of the runs already stored, added in the order they finished (the migration that
    creates the tables runs it once). Returns the number of runs added."""
    branches: dict[tuple[str, str, str], BranchTotals] = {}
    pipelines: dict[tuple[str, str], PipelineTotals] = {}
    rows = conn.execute(
        "SELECT source, pipeline, branch, status, finished_at, updated_at, duration_seconds, queue_seconds"
        " FROM runs WHERE status IN ('success', 'failed', 'cancelled', 'skipped')"
        # A failure sorts after a success of the same second, as in metrics._order().
        " ORDER BY coalesce(finished_at, updated_at), status = 'failed', id"
    )
    added = 0
    for source, pipeline, branch, status, finished_at, updated_at, duration, queue in rows:
        run = {
            "status": status,
            "finished_at": finished_at,
            "updated_at": updated_at,
            "duration_seconds": duration,
            "queue_seconds": queue,
        }
        finish = Finish.of(run, time.time)  # never called: every run has an updated_at
        key = (source, pipeline, branch or "")
        totals = branches.get(key)
        if totals is None:
            totals = branches[key] = BranchTotals(finish.finished)
        totals.add(finish.status, finish.finished)
        pipelines.setdefault((source, pipeline), PipelineTotals()).add(finish)
        added += 1
    conn.executemany(_SAVE_BRANCH, [(*key, *_branch_values(totals)) for key, totals in branches.items()])
    conn.executemany(
        _SAVE_PIPELINE, [(*key, _dump(each.duration), _dump(each.queue)) for key, each in pipelines.items()]
    )
    return added


def rebuild(conn: sqlite3.Connection, metrics: Metrics) -> int:
    """Load every total into a fresh Metrics, at start; returns the number of runs they count."""
    pipelines = [
        (source, pipeline, default_branch, _pipeline_totals(duration, queue))
        for source, pipeline, default_branch, duration, queue in conn.execute(
            "SELECT t.source, t.pipeline, p.default_branch, t.duration, t.queue"
            " FROM pipeline_totals t LEFT JOIN pipelines p USING (source, pipeline)"
        )
    ]
    branches = (
        (row[0], row[1], row[2], _branch_totals(row[3:]))
        for row in conn.execute(
            "SELECT source, pipeline, branch, success, failed, cancelled, skipped, finished_at, last_success_at,"
            " last_failed_at, since FROM run_totals"
        )
    )
    return metrics.rebuild(pipelines, branches, functools.partial(first_finished, conn))


class Rebuild:
    """rebuild() as a job of the writer, at any time after start. Each commit that finishes a run adds it
    to the totals in the same transaction (store/ingest.py), and event ids grow in commit order: the
    totals this job loads count the runs of every commit before it, and `counted()` tells the ingest
    listeners which commits those are, so that no run is counted twice or not at all."""

    def __init__(self) -> None:
        self.through: int | None = None  # the last event id of the commits the loaded totals count

    def __call__(self, conn: sqlite3.Connection, metrics: Metrics) -> int:
        (self.through,) = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return rebuild(conn, metrics)

    def counted(self, events: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the totals loaded (or still to load) count the runs that a commit of these new events
        finished. A commit that finished a run recorded an event."""
        return self.through is None or (bool(events) and events[-1]["id"] <= self.through)


def first_finished(
    conn: sqlite3.Connection, source: str, pipeline: str, branch: str, status: str, after: float, inclusive: bool
) -> float | None:
    """The finish of the branch's first run of `status` after `after` (or at it, when inclusive): what
    BranchTotals.merge() cannot tell from totals. One seek in idx_runs_decisive."""
    row = conn.execute(
        _FIRST[status, inclusive], (source, pipeline, branch, iso(datetime.fromtimestamp(after, UTC)))
    ).fetchone()
    return None if row is None else _seconds(row[0])


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # iso(): ISO 8601 with a Z


def _branch_totals(row: Sequence[Any]) -> BranchTotals:
    counts, (finished, last_success, last_failed, since) = row[: len(RUN_STATUSES)], row[len(RUN_STATUSES) :]
    return BranchTotals(finished, list(counts), last_success, last_failed, since)


def _branch_values(totals: BranchTotals) -> tuple[Any, ...]:
    return (*totals.counts, totals.finished, totals.last_success, totals.last_failed, totals.since)


def _pipeline_totals(duration: str, queue: str) -> PipelineTotals:
    return PipelineTotals(_load(duration, RUN_BUCKETS), _load(queue, QUEUE_BUCKETS))


def _dump(histogram: Histogram) -> str:
    """{"sum": 1183.0, "buckets": [[1200, 1]]}: counts by upper bound (null for +Inf), zeros left out."""
    buckets = [[None if math.isinf(bound) else bound, count] for bound, count in histogram.buckets()]
    return json.dumps({"sum": histogram.sum, "buckets": buckets})


def _load(text: str, bounds: tuple[float, ...]) -> Histogram:
    data = json.loads(text)
    histogram = Histogram(bounds)
    histogram.add_buckets(((math.inf if bound is None else bound, n) for bound, n in data["buckets"]), data["sum"])
    return histogram
