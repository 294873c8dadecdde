"""The daemon on a big store: start-up time to READY, resident memory, and the runs query at 1M events.

Builds a store of 1,000,000 events (333,334 runs of 200 pipelines on 5 branches over 90 days, each run
a pending, a running and a terminal state, each event with its raw delivery) straight through SQL, and
the run totals /metrics is rebuilt from (store/totals.py, as the upgrade to schema 4 fills them), then
starts `flowforged run` on it and on an empty store (the baseline, same script), and times:
  - start-up: process start to systemd's READY=1 (the listener is bound, metrics rebuilt);
  - resident memory (VmRSS) once ready and idle;
  - GET /api/v1/runs with filters (source+pipeline+branch, status, branch+status), p50/p99 over 300
    requests each, against GET /healthz in the same run as the HTTP floor.
Targets: runs query p99 < 20 ms at 1M events; memory < 150 MB; start-up < 1 s.

    .venv/bin/python bench/store.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import figure  # noqa: E402
from bench.ingest import free_port  # noqa: E402
from flowforged.store import connect, totals  # noqa: E402
from flowforged.store.schema import migrate  # noqa: E402

TOKEN = "bench-api-token"
STATUSES = ["success"] * 8 + ["failed", "cancelled"]


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def build(path: Path, events: int) -> tuple[int, float, float]:
    started = time.monotonic()
    conn = connect(path)
    migrate(conn)
    rng = random.Random(7)
    pipelines = [f"org/repo{n:03d}/.github/workflows/ci.yml" for n in range(200)]
    branches = ["main", "dev", "release", "feature/a", "feature/b"]
    runs = events // 3
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO pipelines (source, pipeline, name, repo, default_branch, first_seen, last_seen)"
        " VALUES ('github', ?, 'CI', ?, 'main', ?, ?)",
        [(p, p.rsplit("/", 3)[0], iso(now - 90 * 86400), iso(now)) for p in pipelines],
    )
    body = zlib.compress(json.dumps({"workflow_run": {"id": 0, "pad": "x" * 2000}}).encode(), 1)
    event_id = 0
    batch_runs, batch_deliveries, batch_events = [], [], []
    for n in range(runs):
        created = now - 90 * 86400 + n * (90 * 86400 / runs)
        pipeline, branch = rng.choice(pipelines), rng.choice(branches)
        status = rng.choice(STATUSES)
        duration = rng.uniform(30, 1800)
        batch_runs.append(
            (
                "github",
                pipeline,
                str(10_000_000 + n),
                1,
                n,
                branch,
                f"{n:040x}",
                status,
                f"completed/{status}",
                f"https://github.com/{pipeline}/runs/{n}",
                iso(created),
                iso(created + 5),
                iso(created + 5 + duration),
                iso(created + 5 + duration),
                duration,
                5.0,
            )
        )
        for step, state in enumerate(("pending", "running", status)):
            event_id += 1
            batch_deliveries.append(
                ("github", f"d-{event_id}", "webhook", "workflow_run", iso(created + step), "{}", body)
            )
            batch_events.append(
                (
                    event_id,
                    "github",
                    "run",
                    pipeline,
                    str(10_000_000 + n),
                    1,
                    state,
                    state,
                    iso(created + step),
                    iso(created + step),
                    f"k-{event_id}",
                    "{}",
                )
            )
        if len(batch_runs) >= 20_000 or n == runs - 1:
            conn.executemany(
                "INSERT INTO runs (source, pipeline, run_id, attempt, number, branch, sha, status, provider_status,"
                " url, created_at, started_at, finished_at, updated_at, duration_seconds, queue_seconds)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                batch_runs,
            )
            conn.executemany(
                "INSERT INTO deliveries (source, delivery_id, origin, event, received_at, headers, body)"
                " VALUES (?,?,?,?,?,?,?)",
                batch_deliveries,
            )
            conn.executemany(
                "INSERT INTO events (delivery, source, kind, pipeline, run_id, attempt, status, provider_status,"
                " updated_at, recorded_at, key, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                batch_events,
            )
            batch_runs, batch_deliveries, batch_events = [], [], []
    # The runs went in without the ingest transaction, which adds each to the run totals that /metrics
    # is rebuilt from: add them as the upgrade to schema 4 does, once, for a store that has runs.
    filling = time.monotonic()
    totals.backfill(conn)
    filled = time.monotonic() - filling
    conn.execute("COMMIT")
    conn.close()
    return event_id, time.monotonic() - started, filled


def start(tmp: Path, db: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "storage": {"path": str(db)},
        "api": {"token": TOKEN},
        "logging": {"level": "warning"},
        "sources": {"github": {"type": "github", "webhook_secret": "s"}},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    notify_path = tmp / f"notify-{port}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "flowforged", "-c", str(tmp / "config.yaml"), "run"],
        cwd=ROOT,
        env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while b"READY=1" not in sock.recv(4096):
        pass
    ready = time.monotonic() - started
    sock.close()
    return process, port, ready


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counted_runs(base: str) -> int:
    """The runs flowforge_pipeline_runs_finished_total counts: every run of the store, once rebuilt."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:  # noqa: S310 - 127.0.0.1
        lines = response.read().decode().splitlines()
    prefix = "flowforge_pipeline_runs_finished_total{"
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)))


def timed(url: str, count: int, token: str | None = TOKEN) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(count):
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1
            size = len(response.read())
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99) - 1] * 1000, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowforge-store-"))
    empty, big = tmp / "empty.db", tmp / "big.db"
    conn = connect(empty)
    migrate(conn)
    conn.close()
    made, seconds, filled = build(big, args.events)
    print(
        f"store: {made:,} events, {made // 3:,} runs, {big.stat().st_size / 1e6:.0f} MB, built in {seconds:.0f} s"
        f" (run totals filled from the runs in {filled:.1f} s, as the upgrade to schema 4 does once)"
    )
    rows, counted = [], {}
    for name, db in (("empty store (baseline)", empty), (f"{made:,} events", big)):
        process, port, ready = start(tmp, db)
        try:
            time.sleep(1.0)
            memory = rss_mb(process.pid)
            base = f"http://127.0.0.1:{port}"
            health = timed(f"{base}/healthz", 300, token=None)
            counted[name] = counted_runs(base)
            queries = {
                "runs?source&pipeline&branch": timed(
                    f"{base}/api/v1/runs?source=github&pipeline=org/repo007/.github/workflows/ci.yml&branch=main", 300
                ),
                "runs?status=failed": timed(f"{base}/api/v1/runs?status=failed", 300),
                "runs?branch=dev&status=cancelled": timed(f"{base}/api/v1/runs?branch=dev&status=cancelled", 300),
            }
            rows.append((name, ready, memory, health, queries))
        finally:
            process.terminate()
            process.wait(30)
    print(f"{'':<26}{'start-up s':>11}{'RSS MB':>8}   {'query':<34}{'p50 ms':>7}{'p99 ms':>7}")
    for name, ready, memory, health, queries in rows:
        floor = "GET /healthz (HTTP floor)"
        print(f"{name:<26}{ready:>11.2f}{memory:>8.0f}   {floor:<34}{health[0]:>7.2f}{health[1]:>7.2f}")
        for query, (p50, p99, _) in queries.items():
            print(f"{'':<45}{'GET /api/v1/' + query:<34}{p50:>7.2f}{p99:>7.2f}")
    print(
        f"runs counted by /metrics once READY (flowforge_pipeline_runs_finished_total): {counted[rows[-1][0]]:,}"
        f" of {made // 3:,} in the store"
    )
    _, base_ready, base_memory, health, _ = rows[0]
    figure("RSS idle, empty store", base_memory, "MB", None, "< 150 MB", base_memory < 150)
    for query, (_, p99, _) in rows[-1][4].items():
        figure(f"{query} p99 @1M events", p99, "ms", rows[-1][3][1], "< 20 ms", p99 < 20)
    figure("RSS idle, 1M-event store", rows[-1][2], "MB", base_memory, "< 150 MB", rows[-1][2] < 150)
    figure("start-up to READY, 1M-event store", rows[-1][1], "s", base_ready, "< 1 s", rows[-1][1] < 1)
    _, ready, memory, _, queries = rows[-1]
    worst = max(p99 for _, p99, _ in queries.values())
    print(
        f"targets at {made:,} events: runs query p99 < 20 ms: {'met' if worst < 20 else 'MISSED'} ({worst:.1f});"
        f" memory < 150 MB: {'met' if memory < 150 else 'MISSED'} ({memory:.0f});"
        f" start-up < 1 s: {'met' if ready < 1 else 'MISSED'} ({ready:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
