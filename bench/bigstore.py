"""A large organization's store, built once and cached for the benchmarks: 10,000 pipelines x 3 branches,
10,000,000 events.

Built through the store's own write functions (store/ingest.py: a delivery per state, the events, the
runs upsert, the run totals, the transitions), in large transactions on one connection rather than
through HTTP, so that every table and index holds what a daemon would have written. Each run tells 7
states: requested, in progress and completed, and two jobs each in progress and completed. Raw bodies
are left out (as after `storage.raw_retention_days`): bench/store.py measures them on real payloads.

The file is cached under var/bench/, named by the schema layout (LAYOUT) and this builder's version, so
that a migration that changes the layout (or a change here) builds a new one. Other benchmarks import `build()`:

    from bench.bigstore import build
    path = build()  # var/bench/big-v10-b2-10000x3-10000000.db

    .venv/bin/python bench/bigstore.py [--events 10000000] [--pipelines 10000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flowforged.model import JobEvent, RunEvent, Status, iso  # noqa: E402
from flowforged.store import connect  # noqa: E402
from flowforged.store.ingest import Delivery, IngestResult, apply_events, insert_delivery  # noqa: E402
from flowforged.store.schema import MIGRATIONS, migrate  # noqa: E402

BUILDER = 2  # bump when what is built changes, so that cached stores are rebuilt
# The schema version whose layout the cache name carries: the last migration that changes how the rows
# the builder writes are laid out. A later one that only adds an empty table (11: unapplied) runs when
# a daemon opens the cached store, and needs no 30-minute rebuild. Raise it with such a migration.
LAYOUT = 10
assert LAYOUT <= len(MIGRATIONS)
CACHE = ROOT / "var" / "bench"
BRANCH_NAMES = ("main", "develop", "release")
EVENTS_PER_RUN = 7
DAYS = 90
BATCH = 20_000  # runs per transaction
# GitHub's conclusions, as often as a busy organization sees them.
CONCLUSIONS = (Status.SUCCESS,) * 16 + (Status.FAILED,) * 3 + (Status.CANCELLED,)
_DAY = 86_400.0


def cached_path(pipelines: int, branches: int, events: int) -> Path:
    return CACHE / f"big-v{LAYOUT}-b{BUILDER}-{pipelines}x{branches}-{events}.db"


def build(path: Path | None = None, pipelines: int = 10_000, branches: int = 3, events: int = 10_000_000) -> Path:
    """The store's path, built on the first call and cached: about 7,000 events a second on an idle
    2-core machine (10M: ~25 min), half that when the machine is busy. `path` overrides the cache
    location; an existing file there is used as is."""
    path = Path(path) if path is not None else cached_path(pipelines, branches, events)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm", ".lock"))):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    _fill(partial, pipelines, branches, events)
    os.replace(partial, path)
    print(f"bigstore: built {path.name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return path


def _fill(path: Path, pipelines: int, branches: int, events: int) -> None:
    conn = connect(path)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")  # a half-built file is thrown away, never used
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the unique indexes are written in random order
    runs = events // EVENTS_PER_RUN
    names = [f"org{n % 97:02d}/repo{n:05d}" for n in range(pipelines)]
    branch_names = [BRANCH_NAMES[b] if b < len(BRANCH_NAMES) else f"branch{b}" for b in range(branches)]
    rng = random.Random(11)
    start = time.time() - DAYS * _DAY
    done = 0
    while done < runs:
        count = min(BATCH, runs - done)
        conn.execute("BEGIN")
        for n in range(done, done + count):
            created = start + n * (DAYS * _DAY / runs)
            repo = names[rng.randrange(pipelines)]
            branch = branch_names[rng.randrange(branches)]
            for delivery, states in _run(n, repo, branch, created, rng):
                row = insert_delivery(conn, delivery)
                assert row is not None  # noqa: S101 - every generated delivery id is new
                apply_events(conn, row, states, delivery.received_at, IngestResult(delivery=row), None, notify=False)
        conn.execute("COMMIT")
        done += count
        print(f"bigstore: {done * EVENTS_PER_RUN:,} events", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()


def _run(n: int, repo: str, branch: str, created: float, rng: random.Random) -> Iterator[tuple[Delivery, list]]:
    """The deliveries of one workflow run, each with the states it tells, in the order GitHub sends them."""
    pipeline = f"{repo}/.github/workflows/ci.yml"
    run_id = str(9_000_000_000 + n)
    queued = rng.uniform(2, 60)
    duration = rng.uniform(30, 1800)
    status = rng.choice(CONCLUSIONS)
    sha = f"{rng.getrandbits(160):040x}"
    common = {
        "source": "github",
        "pipeline": pipeline,
        "run_id": run_id,
        "attempt": 1,
        "pipeline_name": "CI",
        "branch": branch,
        "sha": sha,
        "url": f"https://github.com/{repo}/actions/runs/{run_id}",
        "created_at": iso_at(created),
        "repo": repo,
        "default_branch": "main",
        "commit_message": f"Change {n}: make the thing faster",
        "author": f"dev{n % 500}",
        "trigger": "push",
        "number": n % 100_000,
    }
    begun, ended = created + queued, created + queued + duration
    yield (
        _delivery(n, 0, "workflow_run", created),
        [RunEvent(status=Status.PENDING, provider_status="requested", updated_at=iso_at(created), **common)],
    )
    yield (
        _delivery(n, 1, "workflow_run", begun),
        [
            RunEvent(
                status=Status.RUNNING,
                provider_status="in_progress",
                updated_at=iso_at(begun),
                started_at=iso_at(begun),
                **common,
            )
        ],
    )
    for job in range(2):
        job_common = {
            "source": "github",
            "run_id": run_id,
            "attempt": 1,
            "job_id": f"{run_id}{job}",
            "name": ("build", "test")[job],
            "pipeline": pipeline,
            "branch": branch,
            "sha": sha,
            "started_at": iso_at(begun),
        }
        yield (
            _delivery(n, 2 + 2 * job, "workflow_job", begun + 1),
            [
                JobEvent(
                    status=Status.RUNNING, provider_status="in_progress", updated_at=iso_at(begun + 1), **job_common
                )
            ],
        )
        yield (
            _delivery(n, 3 + 2 * job, "workflow_job", ended - 1),
            [
                JobEvent(
                    status=status,
                    provider_status=f"completed/{status.value}",
                    updated_at=iso_at(ended - 1),
                    finished_at=iso_at(ended - 1),
                    **job_common,
                )
            ],
        )
    yield (
        _delivery(n, 6, "workflow_run", ended),
        [
            RunEvent(
                status=status,
                provider_status=f"completed/{status.value}",
                updated_at=iso_at(ended),
                started_at=iso_at(begun),
                finished_at=iso_at(ended),
                **common,
            )
        ],
    )


def _delivery(n: int, step: int, event: str, at: float) -> Delivery:
    delivery_id = f"{n:08x}-{step:04x}-4d1c-9f3e-000000000000"  # GitHub's ids are GUIDs
    return Delivery(
        source="github",
        delivery_id=delivery_id,
        origin="webhook",
        event=event,
        received_at=iso_at(at),
        headers={  # what the GitHub provider keeps of a delivery's headers (its stored_headers)
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery_id,
            "X-GitHub-Hook-ID": "421337",
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/8e03811",
        },
        body=b"",  # pruned (storage.raw_retention_days): bench/store.py measures raw bodies on real payloads
    )


def iso_at(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, UTC))


def copy(path: Path, to: Path) -> Path:
    """A throwaway copy of a cached store, for a benchmark that writes to it."""
    shutil.copyfile(path, to)
    return to


def size_report(path: Path) -> dict[str, int]:
    """Bytes per table and index (dbstat), for the storage figures."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        conn.close()
    return dict(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--pipelines", type=int, default=10_000)
    parser.add_argument("--branches", type=int, default=3)
    args = parser.parse_args()
    path = build(pipelines=args.pipelines, branches=args.branches, events=args.events)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
