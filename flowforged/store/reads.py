"""Read queries of the control API that the CLI does not need: pipelines, one run with its
jobs and events, the event log, one notification, one silence. Run on a reader connection.

Pages are keyset pages on the table's id, never OFFSET: a page boundary does not move when new rows
arrive, so walking the pages neither repeats nor skips a row.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from flowforged.store import eventrows, outbox, queries

JOB_FIELDS = (
    "id",
    "job_id",
    "name",
    "stage",
    "status",
    "provider_status",
    "url",
    "started_at",
    "finished_at",
    "updated_at",
)
_PIPELINE_FIELDS = "id, source, pipeline, name, repo, default_branch, first_seen, last_seen"
# With its delivery's origin (webhook or poll) and its run's facts (store/eventrows.py).
_EVENTS = eventrows.SELECT


def pipelines(
    conn: sqlite3.Connection, *, source: str | None = None, after: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Oldest first (ids only grow, so a new pipeline lands on the last page), each with its branches."""
    clauses, params = [], []
    if source is not None:
        clauses.append("source = ?")
        params.append(source)
    if after is not None:
        clauses.append("id > ?")
        params.append(after)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {_PIPELINE_FIELDS} FROM pipelines {where} ORDER BY id LIMIT ?"  # noqa: S608
    rows = conn.execute(sql, (*params, limit)).fetchall()
    return [_with_branches(conn, dict(row)) for row in rows]


def pipeline(conn: sqlite3.Connection, pipeline_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_PIPELINE_FIELDS} FROM pipelines WHERE id = ?", (pipeline_id,)).fetchone()  # noqa: S608
    return _with_branches(conn, dict(row)) if row else None


def _with_branches(conn: sqlite3.Connection, item: dict[str, Any]) -> dict[str, Any]:
    """The last decisive status of each branch (pipeline_state); '' there is a run of no branch (a tag)."""
    rows = conn.execute(
        "SELECT branch, status, run, consecutive_failures, since FROM pipeline_state"
        " WHERE source = ? AND pipeline = ? ORDER BY branch",
        (item["source"], item["pipeline"]),
    ).fetchall()
    item["branches"] = [{**dict(row), "branch": row["branch"] or None} for row in rows]
    return item


def run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    """One run by runs.id, in the fields of `flowforged runs --json`."""
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return queries.run_dict(row) if row else None


def run_jobs(conn: sqlite3.Connection, source: str, run_id: str, attempt: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(JOB_FIELDS)} FROM jobs WHERE source = ? AND run_id = ? AND attempt = ?"  # noqa: S608
        " ORDER BY coalesce(started_at, updated_at), id",
        (source, run_id, attempt),
    ).fetchall()
    return [dict(row) for row in rows]


def run_events(conn: sqlite3.Connection, source: str, run_id: str, attempt: int) -> list[dict[str, Any]]:
    """Every event of one attempt of a run (the run's own and its jobs'), in the order they were recorded."""
    rows = conn.execute(
        f"{_EVENTS} WHERE e.source = ? AND e.run_id = ? AND e.attempt = ? ORDER BY e.id",  # noqa: S608
        (source, run_id, attempt),
    ).fetchall()
    return [eventrows.event_dict(row) for row in rows]


def events(
    conn: sqlite3.Connection,
    *,
    source: str | None = None,
    run_id: str | None = None,
    kind: str | None = None,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
    oldest_first: bool | None = None,
) -> list[dict[str, Any]]:
    """Between `after` and `before` (each optional): newest first, or oldest first (following the log),
    which is the default when `after` is given."""
    clauses, params = [], []
    for column, value in (("e.source", source), ("e.run_id", run_id), ("e.kind", kind)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        clauses.append("e.id < ?")
        params.append(before)
    if after is not None:
        clauses.append("e.id > ?")
        params.append(after)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    if oldest_first is None:
        oldest_first = after is not None
    order = "ASC" if oldest_first else "DESC"
    sql = f"{_EVENTS} {where} ORDER BY e.id {order} LIMIT ?"  # noqa: S608
    rows = conn.execute(sql, (*params, limit)).fetchall()
    return [eventrows.event_dict(row) for row in rows]


def last_event_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def notification(conn: sqlite3.Connection, notification_id: int) -> dict[str, Any] | None:
    rows = conn.execute(
        "SELECT id, sink, rule, transition, source, pipeline, branch, run, sha, state, created_at, due_at,"
        " attempts, last_error, sent_at, answer FROM outbox WHERE id = ?",
        (notification_id,),
    ).fetchall()
    return dict(rows[0]) if rows else None


def silence(conn: sqlite3.Connection, silence_id: int, now: float) -> dict[str, Any] | None:
    """One silence, expired or not, as outbox.silences() shows it (silences are a handful)."""
    return next((item for item in outbox.silences(conn, now, include_expired=True) if item["id"] == silence_id), None)
