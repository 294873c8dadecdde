"""The web board's reads, which the control API does not need: every pipeline's branches with their recent
runs in a handful of queries (not one per pipeline), a pipeline's history, a run's notifications.
Run on a reader connection (row_factory = sqlite3.Row), like flowforged.store.reads.
"""

from __future__ import annotations

import sqlite3
from typing import Any

STRIP = 20  # runs in a tile's strip
_BRANCH_RUNS = """
SELECT id, source, pipeline, branch, status, duration_seconds, started_at, finished_at, updated_at, run_id, number
FROM (
  SELECT r.*, row_number() OVER (PARTITION BY r.source, r.pipeline, r.branch ORDER BY r.id DESC) AS n
  FROM runs r JOIN pipelines p ON p.source = r.source AND p.pipeline = r.pipeline
  WHERE r.pull_request IS NULL AND (r.branch = p.default_branch OR r.branch IN ({branches})) {where}
) WHERE n <= ? ORDER BY id
"""


def _scope(source: str | None, pipeline: str | None, alias: str) -> tuple[str, list[str]]:
    if source is None or pipeline is None:
        return "", []
    return f" AND {alias}.source = ? AND {alias}.pipeline = ?", [source, pipeline]


def board(
    conn: sqlite3.Connection, branches: list[str], source: str | None = None, pipeline: str | None = None
) -> dict[str, Any]:
    """Pipelines, the state of each branch, the last STRIP runs of the shown branches (each pipeline's
    default branch and `branches`, metrics.branches) oldest first, and the failed jobs of broken ones.
    With `source` and `pipeline`, only that pipeline (one tile's update)."""
    where, params = _scope(source, pipeline, "p")
    pipelines = conn.execute(
        f"SELECT id, source, pipeline, name, repo, default_branch FROM pipelines p WHERE 1 = 1{where}",  # noqa: S608
        params,
    ).fetchall()
    where_s, params_s = _scope(source, pipeline, "s")
    states = conn.execute(
        "SELECT source, pipeline, branch, status, run, consecutive_failures, since FROM pipeline_state s"  # noqa: S608
        f" WHERE 1 = 1{where_s}",
        params_s,
    ).fetchall()
    where_r, params_r = _scope(source, pipeline, "r")
    marks = ", ".join("?" * len(branches)) or "NULL"
    runs = conn.execute(_BRANCH_RUNS.format(branches=marks, where=where_r), [*branches, *params_r, STRIP]).fetchall()
    failed_jobs = conn.execute(
        "SELECT s.source, s.pipeline, s.branch, j.name FROM pipeline_state s"  # noqa: S608 - placeholders only
        " JOIN runs r ON r.id = s.run JOIN jobs j ON j.source = r.source AND j.run_id = r.run_id"
        f" AND j.attempt = r.attempt WHERE s.status = 'failed' AND j.status = 'failed'{where_s} ORDER BY j.id",
        params_s,
    ).fetchall()
    return {"pipelines": pipelines, "states": states, "runs": runs, "failed_jobs": failed_jobs}


def history(conn: sqlite3.Connection, source: str, pipeline: str, branch: str | None, limit: int) -> list[sqlite3.Row]:
    """The last `limit` finished runs of a pipeline (on one branch if given), oldest first: the chart."""
    clauses, params = ["source = ?", "pipeline = ?", "finished_at IS NOT NULL"], [source, pipeline]
    if branch is not None:
        clauses.append("branch = ?")
        params.append(branch)
    rows = conn.execute(
        "SELECT id, run_id, number, branch, status, duration_seconds, finished_at, transition FROM runs"  # noqa: S608
        f" WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return rows[::-1]


def breakages(conn: sqlite3.Connection, source: str, pipeline: str) -> list[sqlite3.Row]:
    """The runs that broke or fixed a branch, oldest first: what time to fix is measured from."""
    return conn.execute(
        "SELECT id, branch, transition, finished_at FROM runs WHERE source = ? AND pipeline = ?"
        " AND transition IN ('broken', 'fixed') AND pull_request IS NULL ORDER BY id",
        (source, pipeline),
    ).fetchall()


def run_notifications(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, sink, rule, transition, state, created_at, sent_at, attempts, last_error, answer"
        " FROM outbox WHERE run = ? ORDER BY id",
        (run_id,),
    ).fetchall()
    return [dict(row) for row in rows]


def branches_of(conn: sqlite3.Connection, source: str, pipeline: str) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT branch FROM runs WHERE source = ? AND pipeline = ? AND branch IS NOT NULL ORDER BY branch",
        (source, pipeline),
    ).fetchall()
    return [row[0] for row in rows]


def pipeline_id(conn: sqlite3.Connection, source: str, pipeline: str) -> int | None:
    row = conn.execute("SELECT id FROM pipelines WHERE source = ? AND pipeline = ?", (source, pipeline)).fetchone()
    return row[0] if row else None
