"""/api/v1/runs at 10M events: p50 and p99 of every filter combination, first page and a later page.

What the handler awaits, `queries.runs()` on a reader connection of the cached large store
(bench/bigstore.py, built on first use), beside two baselines measured in the same run: a primary-key
lookup of one run (what `GET /api/v1/runs/{id}` reads), and the plain query the store ran before
(`WHERE ... ORDER BY id DESC LIMIT 51`, the planner's choice), for the first page: on this store it
may use the indexes that migration _v6 added, so it shows the shape of the query, not the old store.

    .venv/bin/python bench/query.py [--events 10000000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bigstore import build  # noqa: E402
from bench.figures import figure  # noqa: E402
from flowforged.store import queries, reads  # noqa: E402

LIMIT = 51  # a page of 50 and one more, as the API asks: is there a next page?
VALUES = {
    "source": "github",
    "pipeline": "org01/repo00001/.github/workflows/ci.yml",
    "branch": "main",
    "status": "cancelled",  # the rarest status: the most runs to skip for a filter that scans
}
COMBINATIONS = [{}] + [
    dict(combo) for size in range(1, len(VALUES) + 1) for combo in itertools.combinations(VALUES.items(), size)
]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def plain(conn: sqlite3.Connection, filters: dict) -> list:
    """The query /api/v1/runs ran before: the planner picks an index, and may sort what matches."""
    where = " AND ".join(f"{column} = ?" for column in filters)
    sql = f"SELECT * FROM runs {'WHERE ' + where if where else ''} ORDER BY id DESC LIMIT ?"  # noqa: S608
    return [queries.run_dict(row) for row in conn.execute(sql, (*filters.values(), LIMIT))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--plain-repeat", type=int, default=5)
    args = parser.parse_args()
    path = build(events=args.events)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    runs, top = conn.execute("SELECT count(*), max(id) FROM runs").fetchone()
    middle = top // 2  # a page deep in the history: the keyset seek from an arbitrary cursor

    pk = timed(lambda: reads.run(conn, middle), args.repeat)
    print(f"{path.name}: {runs:,} runs; limit {LIMIT}; {args.repeat} repeats; milliseconds")
    print(f"{'filters':<32} {'first p50':>9} {'p99':>7} {'later p50':>9} {'p99':>7} {'plain p50':>9}")
    print(f"{'(primary-key lookup: baseline)':<32} {pk[0]:>9.2f} {pk[1]:>7.2f}")
    worst, worst_name, worst_plain = 0.0, "", 0.0
    for filters in COMBINATIONS:
        first = timed(lambda f=filters: queries.runs(conn, **f, limit=LIMIT), args.repeat)
        later = timed(lambda f=filters: queries.runs(conn, **f, before=middle, limit=LIMIT), args.repeat)
        before = timed(lambda f=filters: plain(conn, f), args.plain_repeat)
        name = "+".join(filters) or "(none)"
        print(f"{name:<32} {first[0]:>9.2f} {first[1]:>7.2f} {later[0]:>9.2f} {later[1]:>7.2f} {before[0]:>9.1f}")
        if max(first[1], later[1]) > worst:
            worst, worst_name = max(first[1], later[1]), name
        worst_plain = max(worst_plain, before[0])
    figure("runs filters: worst p99, any page", worst, "ms", pk[1], "< 20 ms", worst < 20)
    print(f"(worst: {worst_name}; primary-key lookup p99 {pk[1]:.2f} ms; plain query worst p50 {worst_plain:.0f} ms)")
    figure("runs filters: plain query worst p50", worst_plain, "ms", None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
