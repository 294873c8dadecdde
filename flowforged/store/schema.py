"""The schema, as a list of migrations applied in order at start (PRAGMA user_version counts them).

A migration is never edited once released: add a new one.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils

from flowforged import logs
from flowforged.store import totals

log = logs.get("flowforged.store")


def _v1(db: sqlite_utils.Database) -> None:
    db["deliveries"].create(
        {
            "id": int,
            "source": str,
            "delivery_id": str,  # the provider's id, or a key derived from polled data
            "origin": str,  # webhook | poll
            "event": str,  # the provider's event name
            "received_at": str,
            "headers": str,  # JSON of the provider plugin's stored_headers: never a secret
            "body": bytes,  # zlib
            "parse_error": str,
        },
        pk="id",
        not_null={"source", "delivery_id", "origin", "event", "received_at", "headers", "body"},
    )
    db["deliveries"].create_index(["source", "delivery_id"], unique=True)
    db["pipelines"].create(
        {
            "id": int,
            "source": str,
            "pipeline": str,
            "name": str,
            "repo": str,
            "default_branch": str,
            "first_seen": str,
            "last_seen": str,
        },
        pk="id",
        not_null={"source", "pipeline"},
    )
    db["pipelines"].create_index(["source", "pipeline"], unique=True)
    db["runs"].create(
        {
            "id": int,
            "source": str,
            "pipeline": str,
            "run_id": str,
            "attempt": int,
            "number": int,
            "branch": str,
            "sha": str,
            "status": str,
            "provider_status": str,
            "url": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "updated_at": str,
            "duration_seconds": float,
            "queue_seconds": float,
            "transition": str,
            "commit_message": str,
            "author": str,
            "trigger": str,
        },
        pk="id",
        not_null={"source", "pipeline", "run_id", "attempt", "status", "updated_at"},
    )
    db["runs"].create_index(["source", "run_id", "attempt"], unique=True)
    db["runs"].create_index(["source", "pipeline", "branch"])
    db["runs"].create_index(["status"])
    db["runs"].create_index(["branch"])
    db["jobs"].create(
        {
            "id": int,
            "source": str,
            "run_id": str,
            "attempt": int,
            "job_id": str,
            "name": str,
            "stage": str,
            "status": str,
            "provider_status": str,
            "url": str,
            "started_at": str,
            "finished_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"source", "run_id", "attempt", "job_id", "status", "updated_at"},
    )
    db["jobs"].create_index(["source", "job_id"], unique=True)
    db["jobs"].create_index(["source", "run_id", "attempt"])
    db["events"].create(
        {
            "id": int,
            "delivery": int,
            "source": str,
            "kind": str,  # run | job
            "pipeline": str,
            "run_id": str,
            "attempt": int,
            "job_id": str,
            "status": str,
            "provider_status": str,
            "updated_at": str,
            "recorded_at": str,
            "key": str,  # the state it reports: the same state told twice is stored once
            "data": str,  # JSON of the normalized event
        },
        pk="id",
        foreign_keys=[("delivery", "deliveries", "id")],
        not_null={"delivery", "source", "kind", "run_id", "status", "key"},
    )
    db["events"].create_index(["key"], unique=True)
    db["events"].create_index(["source", "run_id", "attempt"])
    db["pipeline_state"].create(
        {
            "source": str,
            "pipeline": str,
            "branch": str,  # '' for runs of no branch (tags)
            "status": str,  # success | failed: the last decisive status
            "run": int,  # runs.id that set it
            "run_order": str,  # see store.ingest.run_order(): later runs sort after earlier ones
            "consecutive_failures": int,
            "since": str,
        },
        pk=("source", "pipeline", "branch"),
    )
    db["poll_state"].create(
        {"source": str, "key": str, "etag": str, "cursor": str, "updated_at": str},
        pk=("source", "key"),
    )


def _v2(db: sqlite_utils.Database) -> None:
    """The outbox of notifications and the silences."""
    db["outbox"].create(
        {
            "id": int,
            "sink": str,
            "rule": str,
            "transition": str,
            "source": str,
            "pipeline": str,
            "branch": str,
            "run": int,  # runs.id
            "sha": str,
            "group_key": str,  # rows of one commit and rule gathered during group_wait
            "dedupe_key": str,  # one transition of one run to one sink, once
            "state": str,  # pending | sent | dead | suppressed | superseded
            "created_at": float,  # unix seconds: notification latency is measured from here
            "due_at": float,
            "attempts": int,
            "last_error": str,
            "sent_at": float,
            "answer": str,  # what the sink said, for people
            "payload": str,  # JSON: the Notification fields at the time of the transition
        },
        pk="id",
        not_null={"sink", "rule", "transition", "source", "pipeline", "state", "created_at", "due_at"},
    )
    db["outbox"].create_index(["dedupe_key"], unique=True)
    db["outbox"].create_index(["state", "due_at"])
    db["outbox"].create_index(["source", "pipeline", "branch", "rule", "sink"])
    db["silences"].create(
        {
            "id": int,
            "sources": str,  # JSON lists of glob patterns
            "pipelines": str,
            "branches": str,
            "until": float,
            "comment": str,
            "created_at": float,
            "expired_at": float,
        },
        pk="id",
        not_null={"sources", "pipelines", "branches", "until", "created_at"},
    )


def _v3(db: sqlite_utils.Database) -> None:
    """The readiness probe's row: /readyz writes it to know that a commit reaches the disk."""
    db.execute("CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT)")


def _v4(db: sqlite_utils.Database) -> None:
    """Run totals (store/totals.py): /metrics loads them at start instead of replaying every run."""
    db["run_totals"].create(
        {
            "source": str,
            "pipeline": str,
            "branch": str,  # '' for runs of no branch (tags)
            "success": int,  # runs by terminal status
            "failed": int,
            "cancelled": int,
            "skipped": int,
            "finished_at": float,  # Unix time of the latest finish
            "last_success_at": float,
            "last_failed_at": float,
            "since": float,  # finish of the run that moved it into its current status
        },
        pk=("source", "pipeline", "branch"),
        not_null={"source", "pipeline", "branch", "success", "failed", "cancelled", "skipped", "finished_at"},
    )
    db["pipeline_totals"].create(
        {
            "source": str,
            "pipeline": str,
            "duration": str,  # JSON histograms: {"sum": ..., "buckets": [[upper bound, count], ...]}
            "queue": str,
        },
        pk=("source", "pipeline"),
        not_null={"source", "pipeline", "duration", "queue"},
    )
    # The first success or failure on a branch after a given time (totals.first_finished). A run enters
    # it once, when it succeeds or fails.
    db.execute(
        "CREATE INDEX idx_runs_decisive ON runs (source, pipeline, branch, status, coalesce(finished_at, updated_at))"
        " WHERE status = 'success' OR status = 'failed'"
    )
    if added := totals.backfill(db.conn):
        log.info("run totals filled from the stored runs", runs=added)


def _v5(db: sqlite_utils.Database) -> None:
    """Runs of pull requests: which one (its number), and the repository its commit comes from (a fork)."""
    have = db["runs"].columns_dict
    for column, kind in (("pull_request", "INTEGER"), ("head_repo", "TEXT")):
        if column not in have:  # a store rolled back by hand to an older version may have it already
            db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; return it. Each migration commits on its own."""
    db = sqlite_utils.Database(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the database is at schema version {version}, newer than this flowforged knows "
            f"({len(MIGRATIONS)}): upgrade flowforged"
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            migration(db)
            conn.execute(f"PRAGMA user_version = {number}")
        log.info("schema migrated", version=number)
    return len(MIGRATIONS)
