"""How events are kept (store/eventrows.py): a row holds only what its run's row does not tell, and every
event reads back as it was normalized, whether its row was written before schema 10 (the whole event in
`data`) or after."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import sqlite_utils

from flowforged.api.schemas import Event as EventSchema
from flowforged.model import Event, JobEvent, RunEvent, Status
from flowforged.store import Delivery, Store, connect, reads
from flowforged.store.eventrows import event_data, key_digest
from flowforged.store.ingest import event_key
from flowforged.store.schema import MIGRATIONS

PIPELINE = "octo-org/octo-repo/.github/workflows/ci.yml"
SHA = "b3f1c0ffee0123456789abcdef0123456789abcd"
RUN = {
    "source": "github",
    "pipeline": PIPELINE,
    "run_id": "500",
    "attempt": 1,
    "pipeline_name": "CI",
    "branch": "main",
    "sha": SHA,
    "url": "https://github.com/octo-org/octo-repo/actions/runs/500",
    "created_at": "2026-11-27T08:00:00Z",
    "repo": "octo-org/octo-repo",
    "default_branch": "main",
    "commit_message": "Make it faster",
    "author": "octocat",
    "trigger": "push",
    "number": 41,
}
JOB = {"source": "github", "run_id": "500", "attempt": 1, "pipeline": PIPELINE, "branch": "main", "sha": SHA}


def run(status: Status, provider: str, at: str, **changes) -> RunEvent:
    return RunEvent(status=status, provider_status=provider, updated_at=at, **(RUN | changes))


def job(job_id: str, status: Status, at: str, **changes) -> JobEvent:
    return JobEvent(
        job_id=job_id, name="build", status=status, provider_status=status.value, updated_at=at, **(JOB | changes)
    )


# One run's states in the order they arrive, with what makes keeping them compact hard.
HISTORY: list[Event] = [
    job("7", Status.RUNNING, "2026-11-27T08:00:05Z", started_at="2026-11-27T08:00:04Z"),  # before its run's row
    run(Status.PENDING, "requested", "2026-11-27T08:00:00Z"),
    run(Status.RUNNING, "in_progress", "2026-11-27T08:00:03Z", commit_message=None, started_at="2026-11-27T08:00:03Z"),
    job("7", Status.SUCCESS, "2026-11-27T08:04:00Z", sha=None, finished_at="2026-11-27T08:04:00Z", url="https://j/7"),
    # The provider tells another message and an earlier creation: the run's row changes facts that the
    # states above took from it.
    run(
        Status.FAILED,
        "completed/failure",
        "2026-11-27T08:05:00Z",
        commit_message="Make it faster (amended)",
        created_at="2026-11-27T07:59:00Z",
        finished_at="2026-11-27T08:05:00Z",
        duration_seconds=297.5,
    ),
    run(Status.RUNNING, "in_progress/late", "2026-11-27T08:00:04Z", author="someone-else"),  # late: row unchanged
    run(Status.SUCCESS, "completed/success", "2026-11-27T09:00:00Z", run_id="501", pull_request=12, head_repo="fork/r"),
]


def delivery(n: int, received: str) -> Delivery:
    return Delivery("github", f"d{n}", "webhook", "workflow_run", received, {"X-GitHub-Event": "workflow_run"}, b"")


def write_before_schema_10(path: Path, events: list[Event]) -> None:
    """A store at schema 9 with the events as it wrote them: the whole event in data, the key a digest."""
    conn = connect(path)
    db = sqlite_utils.Database(conn)
    for number, migration in enumerate(MIGRATIONS[:9], start=1):
        with db.atomic():
            migration(db)
            conn.execute(f"PRAGMA user_version = {number}")
    with db.atomic():
        for n, event in enumerate(events):
            received = event.updated_at
            row = conn.execute(
                "INSERT INTO deliveries (source, delivery_id, origin, event, received_at, headers, body)"
                " VALUES ('github', ?, 'webhook', 'workflow_run', ?, '{}', X'')",
                (f"d{n}", received),
            ).lastrowid
            conn.execute(
                "INSERT INTO events (delivery, source, kind, pipeline, run_id, attempt, job_id, status,"
                " provider_status, updated_at, recorded_at, key, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row,
                    event.source,
                    event.kind,
                    event.pipeline,
                    event.run_id,
                    event.attempt,
                    getattr(event, "job_id", None),
                    event.status.value,
                    event.provider_status,
                    event.updated_at,
                    received,
                    key_digest(event_key(event)),
                    json.dumps(event_data(event)),
                ),
            )
    conn.close()


async def ingest(path: Path, events: list[Event]) -> None:
    store = Store(path).open()
    try:
        for n, event in enumerate(events):
            assert (await store.ingest(delivery(n, event.updated_at), [event], "2026-11-27T10:00:00Z")).events
    finally:
        store.close()


def answers(path: Path) -> tuple[list[dict], list[dict], list[str]]:
    """The event log, one run's events, and the API's JSON of each event."""
    Store(path).open().close()  # migrated to the latest schema, as the daemon opens it
    conn = connect(path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        log = reads.events(conn, limit=100, oldest_first=True)
        one = reads.run_events(conn, "github", "500", 1)
    finally:
        conn.close()
    return log, one, [EventSchema.model_validate(event).model_dump_json() for event in log]


async def test_an_event_reads_the_same_from_a_row_before_schema_10_and_from_a_compact_row(tmp_path):
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    write_before_schema_10(old, HISTORY)
    await ingest(new, HISTORY)
    before, after = answers(old), answers(new)
    assert after == before
    # And what both say is what was normalized, field for field and in order.
    assert [json.dumps({k: v for k, v in e.items() if k not in ("id", "type", "origin")}) for e in after[0]] == [
        json.dumps(event_data(event)) for event in HISTORY
    ]


async def test_an_event_row_does_not_repeat_its_runs_facts(tmp_path):
    path = tmp_path / "store.db"
    await ingest(path, HISTORY[1:3])
    conn = sqlite3.connect(path)
    rows = [json.loads(data or "{}") for (data,) in conn.execute("SELECT data FROM events ORDER BY id")]
    conn.close()
    # The run's facts are in its runs row once; an event keeps its own times, and what it told otherwise.
    assert rows == [{}, {"commit_message": None, "started_at": "2026-11-27T08:00:03Z"}]
