"""The event log: transitions (docs/architecture.md, "The store"), idempotence, group commit, migrations."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import zlib

import pytest

from flowforged.ingest import redecode
from flowforged.model import RunEvent
from flowforged.store import Delivery, Store, connect, raw, reindex
from flowforged.store.schema import MIGRATIONS
from flowforged_plugins.github import GitHubProvider, normalize_run
from tests.conftest import base_config, github_run, make_config

NOW = "2026-11-27T09:00:00Z"


def delivery(n: int | str, body: bytes = b"{}", source: str = "github", parse_error: str | None = None) -> Delivery:
    return Delivery(
        source=source,
        delivery_id=str(n),
        origin="webhook",
        event="workflow_run",
        received_at=NOW,
        headers={"X-GitHub-Event": "workflow_run"},
        body=body,
        parse_error=parse_error,
    )


def run_event(
    conclusion: str, run_id: int, *, attempt: int = 1, branch: str = "master", created: str | None = None
) -> RunEvent:
    created = created or f"2026-11-27T08:{run_id % 60:02d}:00Z"
    payload = github_run(
        conclusion,
        run_id=run_id,
        attempt=attempt,
        branch=branch,
        created_at=created,
        updated_at=created.replace(":00Z", ":30Z"),
    )
    return normalize_run("github", payload["workflow_run"], payload["repository"])


@pytest.fixture
async def store(db_path):
    store = Store(db_path).open()
    yield store
    store.close()


async def feed(store: Store, *events: RunEvent) -> list[str | None]:
    transitions = []
    for n, event in enumerate(events):
        result = await store.ingest(delivery(f"{event.run_id}-{event.attempt}-{n}"), [event], NOW)
        transitions.append(result.transitions[0]["transition"] if result.transitions else None)
    return transitions


async def test_transitions_follow_the_previous_decisive_run(store):
    assert await feed(
        store,
        run_event("success", 1),
        run_event("failure", 2),  # broken
        run_event("failure", 3),  # still failing
        run_event("cancelled", 4),  # no change
        run_event("timed_out", 5),  # still failing: a timeout is a failure
        run_event("success", 6),  # fixed
        run_event("success", 7),
    ) == [None, "broken", "still_failing", None, "still_failing", "fixed", None]


async def test_first_run_failing_is_broken_and_branches_are_separate(store):
    assert await feed(
        store,
        run_event("failure", 1, branch="master"),
        run_event("failure", 2, branch="feature/x"),
        run_event("failure", 3, branch="master"),
    ) == ["broken", "broken", "still_failing"]


async def test_a_rerun_attempt_that_succeeds_fixes_its_pipeline(store):
    assert await feed(store, run_event("failure", 10), run_event("success", 10, attempt=2)) == ["broken", "fixed"]


async def test_an_older_run_finishing_late_does_not_change_the_state(store):
    newer = run_event("success", 21, created="2026-11-27T08:30:00Z")
    older = run_event("failure", 20, created="2026-11-27T08:10:00Z")
    assert await feed(store, newer, older) == [None, None]
    assert await feed(store, run_event("failure", 22, created="2026-11-27T08:40:00Z")) == ["broken"]


async def test_the_same_state_twice_is_one_event_and_one_transition(store):
    event = run_event("failure", 30)
    first = await store.ingest(delivery("a"), [event], NOW)
    second = await store.ingest(delivery("b"), [event], NOW)
    again = await store.ingest(delivery("a"), [event], NOW)
    assert [len(r.transitions) for r in (first, second, again)] == [1, 0, 0]
    assert [len(r.events) for r in (first, second, again)] == [1, 0, 0]
    assert again.duplicate and not second.duplicate


async def test_a_late_in_progress_event_does_not_undo_completion(store):
    done = run_event("failure", 40)
    payload = github_run(
        None, run_id=40, status="in_progress", created_at=done.created_at, updated_at="2026-11-27T08:40:05Z"
    )
    running = normalize_run("github", payload["workflow_run"], payload["repository"])
    await feed(store, done, running)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT status, transition FROM runs").fetchall() == [("failed", "broken")]


async def test_concurrent_writes_share_commits(store):
    events = [run_event("success", 1000 + n) for n in range(200)]
    results = await asyncio.gather(*(store.ingest(delivery(f"c{n}"), [e], NOW) for n, e in enumerate(events)))
    assert all(not r.duplicate for r in results)
    assert store.writes == 200
    assert store.commits < 200  # group commit: several deliveries per transaction


async def test_one_failing_item_does_not_fail_its_batch(store):
    def boom(conn):
        conn.execute("INSERT INTO pipelines (source, pipeline) VALUES ('x', 'y')")
        raise ValueError("bug")

    good = store.ingest(delivery("ok"), [run_event("success", 50)], NOW)
    outcomes = await asyncio.gather(store.write(boom), good, return_exceptions=True)
    assert isinstance(outcomes[0], ValueError)
    assert not outcomes[1].duplicate
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM pipelines WHERE source = 'x'").fetchone()[0] == 0  # rolled back


async def test_raw_body_is_compressed_and_headers_kept(store):
    body = b'{"hello": "world"}' * 100
    await store.ingest(delivery("z", body=body), [], NOW)
    conn = connect(store.path, readonly=True)
    row, stored, *kept = conn.execute(
        "SELECT id, body, headers, header_set, event, delivery_id FROM deliveries"
    ).fetchone()
    (compressed,) = conn.execute("SELECT length(body) FROM raw_bodies WHERE delivery = ?", (row,)).fetchone()
    assert compressed < len(body) and raw.read(conn, row, stored) == body
    assert raw.headers(conn, *kept) == {"X-GitHub-Event": "workflow_run"}


async def test_headers_are_kept_once_per_set_each_delivery_reads_its_own(store, db_path):
    sent = {}
    for n in ("a1", "b2"):
        headers = {"X-GitHub-Event": "workflow_job", "X-GitHub-Delivery": n, "Content-Type": "application/json"}
        sent[n] = headers
        await store.ingest(dataclasses.replace(delivery(n), event="workflow_job", headers=headers), [], NOW)
    conn = connect(db_path)
    # A row from before schema 10 keeps its headers in the row, and is read as it is.
    conn.execute(
        "INSERT INTO deliveries (source, delivery_id, origin, event, received_at, headers, body)"
        " VALUES ('github', 'c3', 'webhook', 'workflow_run', ?, ?, X'')",
        (NOW, '{"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": "c3"}'),
    )
    sent["c3"] = {"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": "c3"}
    rows = conn.execute("SELECT delivery_id, headers, header_set, event, delivery_id FROM deliveries").fetchall()
    assert {row[0]: raw.headers(conn, *row[1:]) for row in rows} == sent
    assert conn.execute("SELECT count(*) FROM header_sets").fetchone()[0] == 1  # both new rows share one


def test_schema_is_migrated_once_and_reopens(db_path):
    Store(db_path).open().close()
    Store(db_path).open().close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade flowforged"):
        Store(db_path).open()


async def test_reindex_picks_up_a_delivery_after_a_parser_fix(store, db_path):
    import json

    payload = github_run("failure", run_id=77)
    payload["workflow_run"]["path"] = None  # a shape today's parser cannot name a pipeline for
    payload["workflow_run"]["workflow_id"] = None
    body = json.dumps(payload).encode()
    await store.ingest(delivery("odd", body=body, parse_error="ValueError: no workflow"), [], NOW)
    store.close()

    class FixedGitHub(GitHubProvider):
        def normalize(self, event, payload):
            payload["workflow_run"]["path"] = ".github/workflows/recovered.yml"
            return super().normalize(event, payload)

    cfg = make_config(base_config(db_path))
    providers = {"github": FixedGitHub("github", cfg.source_configs["github"])}
    conn = sqlite3.connect(db_path, isolation_level=None)
    progress = list(reindex(conn, lambda *a: redecode(providers, *a), NOW))
    assert progress[-1] == (1, 1, 0)
    row = conn.execute("SELECT pipeline, status, transition FROM runs").fetchone()
    assert row == ("octo-org/octo-repo/.github/workflows/recovered.yml", "failed", "broken")
    assert conn.execute("SELECT parse_error FROM deliveries").fetchone() == (None,)
    assert list(reindex(conn, lambda *a: redecode(providers, *a), NOW))[-1] == (1, 0, 0)  # idempotent


async def test_raw_retention_drops_old_bodies_but_keeps_dedupe_and_runs(store, db_path):
    from flowforged.store import queries

    old = Delivery(
        source="github",
        delivery_id="old",
        origin="webhook",
        event="workflow_run",
        received_at="2026-01-01T00:00:00Z",
        headers={},
        body=b'{"a": 1}',
    )
    await store.ingest(old, [run_event("failure", 90)], NOW)
    await store.ingest(delivery("new", body=b'{"b": 2}'), [], NOW)
    assert await store.write(queries.prune_raw, "2026-06-01T00:00:00Z") == 1
    assert await store.write(queries.prune_raw, "2026-06-01T00:00:00Z") == 0
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT delivery_id, length(body) > 0 FROM deliveries ORDER BY id").fetchall() == [
        ("old", 0),
        ("new", 1),
    ]
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert (await store.ingest(old, [], NOW)).duplicate  # a redelivery of a pruned id is still a duplicate


def test_run_order_breaks_ties_by_run_number_not_by_id_text():
    from flowforged.store.ingest import run_order

    same_second = "2026-11-27T09:00:00Z"
    assert run_order(same_second, "job#9", 1, 9) < run_order(same_second, "job#10", 1, 10)
    assert run_order(same_second, "f0e1-uuid", 1, 41) < run_order(same_second, "0a1b-uuid", 1, 42)
    assert run_order(same_second, "100", 1, 7) < run_order(same_second, "100", 2, 7)  # a re-run attempt is later


def stored_body_row(conn: sqlite3.Connection, delivery_id: str) -> tuple[int, bytes]:
    return conn.execute("SELECT id, body FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def github_body(run_id: int) -> bytes:
    import json

    payload = github_run("success" if run_id % 3 else "failure", run_id=run_id)
    payload["workflow_run"]["path"] = f".github/workflows/ci-{run_id % 40}.yml"
    return json.dumps(payload).encode()


async def test_a_source_gets_a_dictionary_and_its_raw_bodies_shrink_to_under_half_of_zlib(store):
    bodies = {f"d{n}": github_body(1000 + n) for n in range(raw.TRAIN_AFTER)}
    await asyncio.gather(*(store.ingest(delivery(key, body=body), [], NOW) for key, body in bodies.items()))
    conn = connect(store.path, readonly=True)
    await wait_for(lambda: conn.execute("SELECT count(*) FROM dictionaries WHERE source = 'github'").fetchone()[0])
    later = github_body(5000)
    await store.ingest(delivery("later", body=later), [], NOW)
    row, stored = stored_body_row(conn, "later")
    dictionary, size = conn.execute(
        "SELECT dictionary, length(body) FROM raw_bodies WHERE delivery = ?", (row,)
    ).fetchone()
    assert dictionary is not None
    assert size * 2 < len(zlib.compress(later, 1))
    assert raw.read(conn, row, stored) == later
    for key, body in bodies.items():  # those stored before the dictionary are read as they were
        assert raw.read(conn, *stored_body_row(conn, key)) == body


async def test_a_body_stored_with_zlib_before_raw_bodies_is_still_read_by_reindex(store, db_path):
    body = github_body(77)
    store.close()
    conn = connect(db_path)
    conn.execute(
        "INSERT INTO deliveries (source, delivery_id, origin, event, received_at, headers, body, parse_error)"
        " VALUES ('github', 'old', 'webhook', 'workflow_run', ?, '{}', ?, 'ValueError: parser bug')",
        (NOW, zlib.compress(body, 1)),
    )
    cfg = make_config(base_config(db_path))
    providers = {"github": GitHubProvider("github", cfg.source_configs["github"])}
    progress = list(reindex(conn, lambda *a: redecode(providers, *a), NOW, only_errors=True))
    assert progress[-1] == (1, 1, 0)
    assert conn.execute("SELECT run_id FROM runs").fetchall() == [("77",)]


async def test_pruning_a_raw_body_drops_its_raw_bodies_row(store):
    from flowforged.store import queries

    await store.ingest(delivery("p", body=github_body(3)), [], NOW)
    assert await store.write(queries.prune_raw, "2100-01-01T00:00:00Z") == 1
    conn = connect(store.path, readonly=True)
    assert conn.execute("SELECT count(*) FROM raw_bodies").fetchone()[0] == 0
    assert raw.read(conn, *stored_body_row(conn, "p")) == b""


async def test_commits_never_checkpoint_the_wal_a_thread_beside_the_writer_does(db_path):
    store = Store(db_path, checkpoint_at=64 * 1024).open()
    assert await store.write(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    size = store.path.stat().st_size
    await asyncio.gather(*(store.ingest(delivery(f"w{n}", body=github_body(n)), [], NOW) for n in range(100)))
    try:
        await wait_for(lambda: store.path.stat().st_size > size)  # pages copied from the WAL by the checkpointer
    finally:
        store.close()


async def test_a_state_recorded_before_key_digests_is_not_recorded_again(db_path):
    """A store upgraded with events whose key is text: the same state arriving again adds nothing."""
    event = run_event("failure", 41)
    store = Store(db_path).open()
    await store.ingest(delivery("first"), [event], NOW)
    store.close()
    conn = sqlite3.connect(db_path)
    from flowforged.store.ingest import event_key

    # As the store held it before: the key as text, and the mark the upgrade leaves for such a store.
    conn.execute("UPDATE events SET key = ?", (event_key(event),))
    conn.execute("UPDATE store_marks SET value = 1 WHERE name = 'legacy_event_keys'")
    conn.commit()
    store = Store(db_path).open()
    try:
        result = await store.ingest(delivery("again"), [event], NOW)
    finally:
        store.close()
    assert result.events == []
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


async def test_event_keys_are_short_digests(store):
    await store.ingest(delivery("k"), [run_event("success", 42)], NOW)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT typeof(key), length(key) FROM events").fetchall() == [("blob", 12)]
