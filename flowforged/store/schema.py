"""The schema, as a list of migrations applied in order at start (PRAGMA user_version counts them).

A migration is never edited once released: add a new one.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from flowforged import logs
from flowforged.store import totals

if TYPE_CHECKING:
    import sqlite_utils

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


def _v6(db: sqlite_utils.Database) -> None:
    """Every filter of the runs list answered by an index in id order (store/queries.py: runs())."""
    # Each index ends in the rowid, so equality on all of its columns reads the runs newest first; a
    # column the filter leaves open, source or status (a handful of values), is read value by value.
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_source_status ON runs (source, status)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_branch_source_status ON runs (branch, source, status)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_pipeline_status ON runs (source, pipeline, status)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_pipeline_branch_status ON runs (source, pipeline, branch, status)")
    # Its prefix of the one above, which replaces it.
    db.execute("DROP INDEX IF EXISTS idx_runs_source_pipeline_branch")


def _v7(db: sqlite_utils.Database) -> None:
    """Raw bodies in a table of their own, compressed with a dictionary per source (store/raw.py). Bodies
    stored before stay in deliveries.body (zlib) and are read from there: nothing is rewritten."""
    db.execute(
        "CREATE TABLE dictionaries (id INTEGER PRIMARY KEY, source TEXT NOT NULL, trained_at TEXT NOT NULL,"
        " samples INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE raw_bodies (delivery INTEGER PRIMARY KEY, dictionary INTEGER REFERENCES dictionaries (id),"
        " body BLOB NOT NULL)"
    )
    # Pruning (storage.raw_retention_days) empties deliveries.body: the body it pointed to goes with it.
    db.execute(
        "CREATE TRIGGER raw_bodies_pruned AFTER UPDATE OF body ON deliveries WHEN length(new.body) = 0"
        " BEGIN DELETE FROM raw_bodies WHERE delivery = new.id; END"
    )


def _v8(db: sqlite_utils.Database) -> None:
    """Chat threads (store/threads.py): the message ids of each breakage, so its still-failing runs and
    its fix reply in its thread after a restart; and the operations people asked for from a message."""
    db.execute(
        "CREATE TABLE chat_threads (id INTEGER PRIMARY KEY, sink TEXT NOT NULL, source TEXT NOT NULL,"
        " pipeline TEXT NOT NULL, branch TEXT NOT NULL,"  # '' for runs of no branch (tags)
        " channel TEXT NOT NULL, ts TEXT NOT NULL,"  # the parent message, as the chat service names it
        " notification INTEGER, sha TEXT,"  # the breakage: its outbox.id (rule, run) and its commit
        " opened_at REAL NOT NULL, broken_at REAL NOT NULL,"  # when posted; when the breaking run finished
        " state TEXT NOT NULL, fixed_sha TEXT, updated_at REAL NOT NULL)"  # open | fixed | replaced
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_chat_threads_open ON chat_threads (sink, source, pipeline, branch)"
        " WHERE state = 'open'"
    )
    db.execute("CREATE INDEX idx_chat_threads_message ON chat_threads (channel, ts)")
    db.execute(
        "CREATE TABLE operation_requests (id INTEGER PRIMARY KEY, at REAL NOT NULL, via TEXT NOT NULL,"
        " user_id TEXT NOT NULL, user_name TEXT, action TEXT NOT NULL, source TEXT, pipeline TEXT,"
        " branch TEXT, run INTEGER, outcome TEXT NOT NULL, detail TEXT)"  # accepted | refused | failed
    )


def _v9(db: sqlite_utils.Database) -> None:
    """events.key holds a 12-byte digest of the key from now on (store/ingest.py: key_digest()). The
    events stored before keep their key as text, unrewritten: while there are any, a new state is also
    looked up by its text key, which this mark tells."""
    db.execute("CREATE TABLE store_marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO store_marks SELECT 'legacy_event_keys', count(*) > 0 FROM (SELECT 1 FROM events LIMIT 1)")


def _v10(db: sqlite_utils.Database) -> None:
    """Compact rows, nothing rewritten (docs/architecture.md, "The store"). An event keeps in its data only
    what its run's row does not tell (store/eventrows.py), so the run's row also holds the facts its
    events took from the pipeline. A delivery's headers are kept once per distinct set, with its event
    name and id left for the row's own columns (store/raw.py). Raw bodies are pruned walking deliveries
    in id order from where the last prune stopped (store/queries.py: prune_raw()), never by a scan."""
    have = db["runs"].columns_dict
    for column in ("pipeline_name", "repo", "default_branch"):
        if column not in have:
            db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
    db.execute("CREATE TABLE header_sets (id INTEGER PRIMARY KEY, headers TEXT NOT NULL UNIQUE)")
    db.execute("ALTER TABLE deliveries ADD COLUMN header_set INTEGER REFERENCES header_sets (id)")
    db.execute("INSERT INTO store_marks (name, value) VALUES ('raw_pruned_through', 0)")


def _v11(db: sqlite_utils.Database) -> None:
    """Deliveries acknowledged but not yet applied (docs/architecture.md, "Accept, then apply"): a webhook
    is answered once its raw delivery is committed, and the writer applies it after, in order. A
    delivery listed here when the daemon stops is applied at the next start."""
    db.execute("CREATE TABLE unapplied (delivery INTEGER PRIMARY KEY)")


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; return it. Each migration commits on its own."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the database is at schema version {version}, newer than this flowforged knows "
            f"({len(MIGRATIONS)}): upgrade flowforged"
        )
    if version == len(MIGRATIONS):
        return version  # the usual start: sqlite-utils (a tenth of a second to import) is not needed
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            migration(db)
            conn.execute(f"PRAGMA user_version = {number}")
        log.info("schema migrated", version=number)
    return len(MIGRATIONS)
