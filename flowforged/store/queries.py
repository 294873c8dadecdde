"""Read queries, run on a reader connection (row_factory = sqlite3.Row)."""

from __future__ import annotations

import sqlite3
from typing import Any

RUN_FIELDS = (
    "id",
    "source",
    "pipeline",
    "run_id",
    "attempt",
    "branch",
    "sha",
    "status",
    "provider_status",
    "url",
    "started_at",
    "finished_at",
    "duration_seconds",
    "transition",
)
EXTRA_RUN_FIELDS = (
    "number",
    "created_at",
    "updated_at",
    "queue_seconds",
    "commit_message",
    "author",
    "trigger",
    "pull_request",
)


def run_dict(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A run as `flowforged runs --json` and the API show it (docs/architecture.md names the fields)."""
    return {field: row[field] for field in (*RUN_FIELDS, *EXTRA_RUN_FIELDS)}


def runs(
    conn: sqlite3.Connection,
    *,
    source: str | None = None,
    pipeline: str | None = None,
    branch: str | None = None,
    status: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first. `before` is the cursor: the id of the last run of the previous page."""
    clauses, params = [], []
    for column, value in (("source", source), ("pipeline", pipeline), ("branch", branch), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - placeholders only
        (*params, limit),
    ).fetchall()
    return [run_dict(row) for row in rows]


def heartbeat(conn: sqlite3.Connection) -> None:
    """A write that must reach the disk: the readiness probe."""
    conn.execute(
        "INSERT INTO heartbeat (id, at) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ'))"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at"
    )


def prune_raw(conn: sqlite3.Connection, before: str, batch: int = 1000) -> int:
    """Drop the raw bodies of deliveries received before `before` (storage.raw_retention_days).

    The row stays, so that a redelivery of an old id is still a duplicate, and so do its events and
    runs; only the body goes. One batch per call keeps each write transaction short.
    """
    cursor = conn.execute(
        "UPDATE deliveries SET body = X'' WHERE id IN (SELECT id FROM deliveries"
        " WHERE received_at < ? AND length(body) > 0 LIMIT ?)",
        (before, batch),
    )
    return cursor.rowcount


def delivery(conn: sqlite3.Connection, source: str, delivery_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, source, delivery_id, origin, event, received_at, parse_error FROM deliveries"
        " WHERE source = ? AND delivery_id = ?",
        (source, delivery_id),
    ).fetchone()
    return dict(row) if row else None


def count(conn: sqlite3.Connection, table: str) -> int:
    if table not in {"deliveries", "events", "runs", "jobs", "pipelines"}:
        raise ValueError(table)
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
