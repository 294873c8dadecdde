"""Read queries, run on a reader connection (row_factory = sqlite3.Row)."""

from __future__ import annotations

import sqlite3
import time
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


# The index that answers each set of filtered columns in id order, and the columns it has that the
# filter leaves open (migration _v6). An open column is source or status: a handful of values, each read
# in its own arm of a UNION ALL that SQLite merges in id order, so a page reads about `limit` entries
# whatever the store holds. A filter answered by reading its runs and sorting them took 261 ms for
# source=github at 5M events.
_SOURCE, _STATUS = "source", "status"
_INDEXES = {
    frozenset(): (None, ()),
    frozenset({"status"}): ("idx_runs_status", ()),
    frozenset({"source"}): ("idx_runs_source_status", (_STATUS,)),
    frozenset({"source", "status"}): ("idx_runs_source_status", ()),
    frozenset({"branch"}): ("idx_runs_branch", ()),
    frozenset({"branch", "source"}): ("idx_runs_branch_source_status", (_STATUS,)),
    frozenset({"branch", "status"}): ("idx_runs_branch_source_status", (_SOURCE,)),
    frozenset({"branch", "source", "status"}): ("idx_runs_branch_source_status", ()),
    frozenset({"pipeline"}): ("idx_runs_pipeline_status", (_SOURCE, _STATUS)),
    frozenset({"pipeline", "source"}): ("idx_runs_pipeline_status", (_STATUS,)),
    frozenset({"pipeline", "status"}): ("idx_runs_pipeline_status", (_SOURCE,)),
    frozenset({"pipeline", "source", "status"}): ("idx_runs_pipeline_status", ()),
    frozenset({"pipeline", "branch"}): ("idx_runs_pipeline_branch_status", (_SOURCE, _STATUS)),
    frozenset({"pipeline", "branch", "source"}): ("idx_runs_pipeline_branch_status", (_STATUS,)),
    frozenset({"pipeline", "branch", "status"}): ("idx_runs_pipeline_branch_status", (_SOURCE,)),
    frozenset({"pipeline", "branch", "source", "status"}): ("idx_runs_pipeline_branch_status", ()),
}
# Where the distinct values of an open column are read, one seek each (a loose index scan).
_DISTINCT = {_SOURCE: "idx_runs_source_status", _STATUS: "idx_runs_status"}


def runs(
    conn: sqlite3.Connection,
    *,
    source: str | None = None,
    pipeline: str | None = None,
    branch: str | None = None,
    status: str | None = None,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first, between `after` and `before` (ids, each optional): `before` is the cursor, the id
    of the last run of the previous page."""
    given = {"source": source, "pipeline": pipeline, "branch": branch, "status": status}
    filters = {column: value for column, value in given.items() if value is not None}
    index, open_columns = _INDEXES[frozenset(filters)]
    bounds, bound_params = [], []
    if before is not None:
        bounds.append("id < ?")
        bound_params.append(before)
    if after is not None:
        bounds.append("id > ?")
        bound_params.append(after)
    arms = [dict(filters)]
    for column in open_columns:
        arms = [{**arm, column: value} for arm in arms for value in _distinct(conn, column)]
    if not arms:  # no run at all
        return []
    selects, params = [], []
    for arm in arms:
        clauses = [f"{column} = ?" for column in arm] + bounds
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        indexed = f" INDEXED BY {index}" if index else ""
        selects.append(f"SELECT id FROM runs{indexed}{where}")  # noqa: S608 - names from _INDEXES, placeholders
        params += [*arm.values(), *bound_params]
    ids = [row[0] for row in conn.execute(f"{' UNION ALL '.join(selects)} ORDER BY id DESC LIMIT ?", (*params, limit))]
    if not ids:
        return []
    rows = conn.execute(
        f"SELECT * FROM runs WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id DESC",  # noqa: S608
        ids,
    ).fetchall()
    return [run_dict(row) for row in rows]


def _distinct(conn: sqlite3.Connection, column: str) -> list[str]:
    """The values `column` holds, one index seek each: a handful for source and status."""
    first = f"SELECT min({column}) FROM runs INDEXED BY {_DISTINCT[column]}"  # noqa: S608
    values, value = [], conn.execute(first).fetchone()[0]
    while value is not None:
        values.append(value)
        value = conn.execute(f"{first} WHERE {column} > ?", (value,)).fetchone()[0]
    return values


def heartbeat(conn: sqlite3.Connection) -> None:
    """A write that must reach the disk: the readiness probe."""
    conn.execute(
        "INSERT INTO heartbeat (id, at) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ'))"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at"
    )


def prune_raw(conn: sqlite3.Connection, before: str, batch: int = 1000) -> int:
    """Drop the raw bodies of the next deliveries received before `before` (storage.raw_retention_days),
    at most `batch`; returns how many deliveries it went past, 0 once none is left before `before`.

    Deliveries are walked in id order (the order they arrived in) from where the last call stopped, kept
    in store_marks: a call reads about `batch` rows however many the store holds, where a search by
    received_at would read them all (an index on it would cost every delivery ~30 bytes). The row stays,
    so that a redelivery of an old id is still a duplicate, and so do its events and runs; only the body
    goes. One batch per call keeps each write transaction short.
    """
    (mark,) = conn.execute("SELECT value FROM store_marks WHERE name = 'raw_pruned_through'").fetchone()
    passed = 0
    last = mark
    for row_id, received_at in conn.execute(
        "SELECT id, received_at FROM deliveries WHERE id > ? ORDER BY id LIMIT ?", (mark, batch)
    ).fetchall():
        if received_at >= before:
            break  # the walk stops at the first delivery received since: the next ones came later still
        passed, last = passed + 1, row_id
    if passed:
        conn.execute("UPDATE deliveries SET body = X'' WHERE id > ? AND id <= ? AND length(body) > 0", (mark, last))
        conn.execute("UPDATE store_marks SET value = ? WHERE name = 'raw_pruned_through'", (last,))
    return passed


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


def wait_applied(conn: sqlite3.Connection, seconds: float) -> int:
    """For a reader outside the daemon (the CLI): wait up to `seconds` for the webhook deliveries the
    daemon acknowledged to be applied (docs/architecture.md, "Accept, then apply"); the number still
    waiting (a daemon that is stopped applies them at its next start)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            (left,) = conn.execute("SELECT count(*) FROM unapplied").fetchone()
        except sqlite3.OperationalError:  # a database from before the table: nothing waits
            return 0
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)
