"""Storage on a large organization's store: bytes per event, raw bodies, start-up to READY.

- Bytes per stored event without raw bodies, on the store of bench/bigstore.py (10,000 pipelines x 3
  branches, 10M events, built once and cached under var/bench/): the file's size less its raw bodies,
  divided by its events. Target < 600 bytes.
- Raw bodies on real payloads: the fixtures of tests/fixtures (GitHub workflow_run, workflow_job,
  check_run; GitLab pipeline and job hooks), each sent many times with its ids, commits, branches,
  times, people and messages made different, stored through `Store.ingest` (zstandard with the
  dictionary the store trains per source) and, as the baseline, as the store kept them before (zlib in
  the deliveries row). Compared: the bytes each body adds to the file. Target: at least 2x smaller.
- Start-up of `flowforged run` to systemd's READY=1 on the 10M-event store, beside an empty store.
  Target < 1 s. Then how long after READY=1 /metrics answers: it waits for the run totals, which load
  after READY=1 (half a second or so at 10,000 pipelines, whatever the events).

    .venv/bin/python bench/store.py [--events 10000000] [--bodies 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import bigstore  # noqa: E402
from bench.figures import figure  # noqa: E402
from bench.ingest import free_port  # noqa: E402
from flowforged.store import Delivery, Store, connect, raw  # noqa: E402
from flowforged.store.schema import migrate  # noqa: E402

TOKEN = "bench-api-token"
FIXTURES = {
    "github": [
        "workflow_run.completed.success.json",
        "workflow_job.completed.failure.json",
        "check_run.completed.json",
    ],
    "gitlab": ["pipeline_hook.success.json", "job_hook.json"],
}
WORDS = "fix add remove bump update refactor test build cache flaky timeout deps docs lint api store".split()
PAGE = 4096


def varied(value: Any, rng: random.Random, key: str = "") -> Any:
    """The payload with what differs from one delivery to the next made different: ids, commits,
    times, branches, people, messages (URLs and the rest of the shape stay: they are the provider's)."""
    if isinstance(value, dict):
        return {k: varied(v, rng, k) for k, v in value.items()}
    if isinstance(value, list):
        return [varied(v, rng, key) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and (key == "id" or key.endswith("_id") or key in ("number", "run_number", "iid")):
        return rng.randrange(10**6, 10**10)
    if not isinstance(value, str):
        return value
    if len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return f"{rng.getrandbits(160):040x}"
    if len(value) >= 19 and value[4:5] == "-" and value[10:11] in ("T", " "):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rng.uniform(1.6e9, 1.8e9)))
    if key in ("message", "title", "display_title", "name") and value:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
    if key in ("head_branch", "ref", "login", "username", "email"):
        return f"{rng.choice(WORDS)}-{rng.randrange(10**4)}"
    return value


def bodies(count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """(source, event, body) of `count` deliveries, the fixtures in turn."""
    rng = random.Random(seed)
    payloads = [
        (source, name.split(".")[0], json.loads((ROOT / "tests/fixtures" / source / "webhooks" / name).read_text()))
        for source, names in FIXTURES.items()
        for name in names
    ]
    out = []
    for n in range(count):
        source, event, payload = payloads[n % len(payloads)]
        out.append((source, event, json.dumps(varied(payload, rng)).encode()))
    return out


def pages(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM dbstat WHERE name = ?", (table,)).fetchone()[0]
    finally:
        conn.close()


async def stored_now(path: Path, train: list, measured: list) -> tuple[int, int]:
    """Bytes the measured bodies add to the file, and their compressed bytes, as the store keeps them."""
    store = Store(path).open()
    try:
        await ingest_all(store, train, "t")
        conn = connect(path, readonly=True)
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(DISTINCT source) FROM dictionaries").fetchone()[0] < len(FIXTURES):
            if time.monotonic() > deadline:
                raise SystemExit("no dictionary was trained within 60 s")
            await asyncio.sleep(0.05)
        before = pages(path, "raw_bodies")
        first = conn.execute("SELECT coalesce(max(delivery), 0) FROM raw_bodies").fetchone()[0]
        await ingest_all(store, measured, "m")
        (compressed,) = conn.execute("SELECT sum(length(body)) FROM raw_bodies WHERE delivery > ?", (first,)).fetchone()
        conn.close()
    finally:
        store.close()
    return (pages(path, "raw_bodies") - before) * PAGE, compressed


async def ingest_all(store: Store, items: list, prefix: str) -> None:
    for start in range(0, len(items), 200):
        await asyncio.gather(
            *(
                store.ingest(delivery(f"{prefix}{start + n}", source, event, body), [], "2026-11-28T00:00:00Z")
                for n, (source, event, body) in enumerate(items[start : start + 200])
            )
        )


def delivery(key: str, source: str, event: str, body: bytes) -> Delivery:
    return Delivery(source, key, "webhook", event, "2026-11-28T00:00:00Z", {"Content-Type": "application/json"}, body)


def stored_before(tmp: Path, measured: list) -> tuple[int, int]:
    """The same bodies as the store kept them before raw_bodies: zlib, in the deliveries row. The bytes
    they add: the table's pages with them less its pages with empty bodies."""
    sizes = []
    compressed = 0
    for with_body in (False, True):
        path = tmp / f"before-{with_body}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, source TEXT, delivery_id TEXT, origin TEXT,"
            " event TEXT, received_at TEXT, headers TEXT, body BLOB, parse_error TEXT)"
        )
        conn.execute("BEGIN")
        for n, (source, event, body) in enumerate(measured):
            blob = zlib.compress(body, 1) if with_body else b""
            compressed += len(blob)
            conn.execute(
                "INSERT INTO deliveries VALUES (NULL, ?, ?, 'webhook', ?, '2026-11-28T00:00:00Z', ?, ?, NULL)",
                (source, f"m{n}", event, '{"Content-Type": "application/json"}', blob),
            )
        conn.execute("COMMIT")
        conn.close()
        sizes.append(pages(path, "deliveries"))
    return (sizes[1] - sizes[0]) * PAGE, compressed


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
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--bodies", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowforge-store-"))
    ok = raw_bodies(tmp, args.bodies)
    started = time.monotonic()
    big = bigstore.build(events=args.events)
    print(f"store: {big.name} ({big.stat().st_size / 1e9:.1f} GB), ready in {time.monotonic() - started:.0f} s")
    ok = per_event(big) and ok
    ok = start_up(tmp, big, args.events) and ok
    return 0 if ok else 1


def raw_bodies(tmp: Path, count: int) -> bool:
    train, measured = bodies(raw.TRAIN_AFTER * 3, seed=1), bodies(count, seed=2)  # each source trains
    size = sum(len(body) for _, _, body in measured) / count
    now_disk, now_bytes = asyncio.run(stored_now(tmp / "now.db", train, measured))
    then_disk, then_bytes = stored_before(tmp, measured)
    ratio = then_disk / now_disk
    print(f"raw bodies: {count} real payloads ({size / 1000:.1f} KB on average, GitHub and GitLab fixtures varied)")
    print(f"{'':<34}{'compressed B':>13}{'on disk B':>11}")
    print(f"{'zlib in deliveries (before)':<34}{then_bytes / count:>13.0f}{then_disk / count:>11.0f}")
    print(f"{'zstd + dictionary in raw_bodies':<34}{now_bytes / count:>13.0f}{now_disk / count:>11.0f}")
    print(f"on disk: {ratio:.1f}x smaller (target >= 2x)")
    figure("raw body on disk, zstd+dictionary", now_disk / count, "B", then_disk / count, ">= 2x smaller", ratio >= 2)
    figure("raw body compressed, zstd+dictionary", now_bytes / count, "B", then_bytes / count, None, None)
    return ratio >= 2


def per_event(path: Path) -> bool:
    sizes = bigstore.size_report(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    (events,) = conn.execute("SELECT max(id) FROM events").fetchone()
    conn.close()
    bodies_bytes = sizes.get("raw_bodies", 0) + sizes.get("dictionaries", 0)
    total = path.stat().st_size
    per = (total - bodies_bytes) / events
    print(f"storage: {events:,} events, {total / 1e9:.2f} GB, {per:.0f} bytes per event without raw bodies")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:8]:
        print(f"    {name:<40}{size / events:>8.0f} B/event")
    figure("storage per event, no raw bodies", per, "B", None, "< 600 B", per < 600)
    return per < 600


def start_up(tmp: Path, big: Path, events: int) -> bool:
    """READY=1 on the big store beside an empty one; then how long after READY /metrics answers, with the
    store's run totals (they load after READY=1, app.py: _rebuild())."""
    empty = tmp / "empty.db"
    conn = connect(empty)
    migrate(conn)
    conn.close()
    ready, complete, counted = {}, 0.0, 0
    for name, db in (("empty", empty), ("big", big)):
        process, port, ready[name] = start(tmp, db)
        if name == "big":
            started = time.monotonic()
            counted = counted_runs(f"http://127.0.0.1:{port}")  # answered once the totals are loaded
            complete = time.monotonic() - started
        process.terminate()
        process.wait(30)
    print(f"start-up to READY: {ready['big']:.2f} s at {events:,} events, {ready['empty']:.2f} s empty (target < 1 s)")
    print(f"    /metrics answers {complete:.2f} s after READY, with the run totals ({counted:,} runs not stale)")
    figure(f"start-up to READY @{events / 1e6:g}M events", ready["big"], "s", ready["empty"], "< 1 s", ready["big"] < 1)
    figure("run totals loaded after READY", complete, "s", None, None, None)
    return ready["big"] < 1


if __name__ == "__main__":
    raise SystemExit(main())
