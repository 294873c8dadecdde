"""Ingest throughput and latency with every delivery a new run: the daemon against a bare aiohttp app.

Writes signed `workflow_run` deliveries made from the real fixture, each a new run (its own run id) of
one of 10,000 pipelines (workflow files) on 3 branches, requested, in progress, succeeded or failed in
turn, and sends them with wrk at several concurrency levels, first to a bare aiohttp app that only
reads the body and answers 200 (the baseline, same run), then to `flowforged run` with durable commits.
Only a 202 counts as acknowledged (a 200 is a duplicate). The daemon acknowledges a delivery once it is
stored raw and applies it after (docs/architecture.md, "Accept, then apply"): after each level the
bench waits until everything acknowledged is applied, and reports the sustained rate (acknowledged
deliveries per second until the last was applied) beside the acknowledgement rate. After the daemon
has stopped, the store is counted: every acknowledged delivery must be there with its run.
Targets: the daemon at >= 0.3x the bare app and p99 < 20 ms at 16 connections.

    .venv/bin/python bench/ingest.py [--seconds 5] [--levels 1,16,64] [--rate 4000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import figure  # noqa: E402
from flowforged_plugins.github import sign  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures"
SECRET = "bench-secret"
TARGET = 0.3
TARGET_P99_MS = 20.0
PIPELINES, BRANCHES = 10_000, ("main", "develop", "release")
# (status, conclusion) in turn: GitHub's workflow_run actions requested, in_progress and completed.
STATES = (("queued", None), ("in_progress", None), ("completed", "success"), ("completed", "failure"))


def write_bodies(path: Path, count: int, first_run: int) -> int:
    """`count` signed deliveries for wrk_delivery.lua, each a new run; returns the bytes of one body."""
    template = json.loads((FIXTURE / "github/webhooks/workflow_run.completed.success.json").read_text())
    size = 0
    with path.open("wb") as out:
        for n in range(count):
            payload = copy.deepcopy(template)
            run = payload["workflow_run"]
            status, conclusion = STATES[n % len(STATES)]
            run_id = first_run + n
            run.update(
                id=run_id,
                run_number=run_id % 1_000_000,
                status=status,
                conclusion=conclusion,
                head_branch=BRANCHES[(n // len(STATES)) % len(BRANCHES)],
                path=f".github/workflows/ci-{(n * 7919) % PIPELINES:05d}.yml",
            )
            payload["action"] = {"queued": "requested"}.get(status, status)
            body = json.dumps(payload).encode()
            size = len(body)
            out.write(f"{sign(SECRET, body)}\n{len(body)}\n".encode() + body)
    return size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - 127.0.0.1 only
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def wrk(url: str, connections: int, seconds: float, env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "wrk_delivery.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def applied(db: Path, timeout: float = 600) -> float:
    """Seconds until the daemon has applied every delivery it acknowledged (docs/architecture.md,
    "Accept, then apply"), read from its database as `flowforged` itself would."""
    started = time.monotonic()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while conn.execute("SELECT count(*) FROM unapplied").fetchone()[0]:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"deliveries still unapplied after {timeout} s")
            time.sleep(0.05)
    finally:
        conn.close()
    return time.monotonic() - started


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--rate", type=int, default=6000, help="deliveries written per second of each level")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    levels = [int(n) for n in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="flowforge-bench-"))
    daemon, bare, db, bare_port, daemon_port = _start_both(tmp)
    rows, size = [], 0
    try:
        wait_http(f"http://127.0.0.1:{daemon_port}/healthz")
        wait_port(bare_port)
        for index, level in enumerate(levels):
            bodies = tmp / "bodies"
            size = write_bodies(bodies, int(args.rate * args.seconds), first_run=(index + 1) * 100_000_000)
            env = {"BENCH_BODIES": str(bodies)}
            url = "http://127.0.0.1:{}/hooks/github"
            base = wrk(url.format(bare_port), level, args.seconds, {**env, "BENCH_PREFIX": f"bare-{level}"})
            mine = wrk(url.format(daemon_port), level, args.seconds, {**env, "BENCH_PREFIX": f"c{level}"})
            mine["applied_after"] = applied(db)  # the next level starts with nothing left to apply
            rows.append((level, base, mine))
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        bare.kill()
        bare.wait()
    stored = _stored(db, levels)
    ok = _report(rows, stored, size, args.seconds) and code == 0
    print(f"daemon exit {code}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def _start_both(tmp: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path, int, int]:
    bare_port, daemon_port = free_port(), free_port()
    db = tmp / "flowforge.db"
    config = {
        "server": {"listen": f"127.0.0.1:{daemon_port}"},
        "storage": {"path": str(db)},
        "logging": {"level": "warning"},
        "sources": {"github": {"type": "github", "webhook_secret": SECRET}},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    bare = start([sys.executable, str(ROOT / "bench" / "bare.py"), str(bare_port)])
    daemon = start([sys.executable, "-m", "flowforged", "-c", str(tmp / "config.yaml"), "run"])
    return daemon, bare, db, bare_port, daemon_port


def _stored(db: Path, levels: list[int]) -> dict[int, tuple[int, int]]:
    """Per level: the deliveries stored, and the runs they made (each delivery is a new run)."""
    conn = sqlite3.connect(db)
    stored = {}
    for index, level in enumerate(levels):
        first = (index + 1) * 100_000_000
        deliveries = conn.execute(
            "SELECT count(*) FROM deliveries WHERE delivery_id LIKE ?", (f"c{level}-%",)
        ).fetchone()[0]
        runs = conn.execute(
            "SELECT count(*) FROM runs WHERE CAST(run_id AS INTEGER) BETWEEN ? AND ?", (first, first + 99_999_999)
        ).fetchone()[0]
        stored[level] = (deliveries, runs)
    conn.close()
    return stored


def _report(rows: list, stored: dict[int, tuple[int, int]], size: int, seconds: float) -> bool:
    print(f"ingest: {size}-byte signed workflow_run deliveries, each a new run; wrk -t1, {seconds:g} s per level")
    print(
        f"{'conns':>5}  {'bare req/s':>10} {'p99 ms':>7}   {'daemon 202/s':>12} {'p50 ms':>7} {'p99 ms':>7}"
        f"   {'ratio':>5} {'target':>6}   {'acked':>6} {'stored':>6} {'runs':>6}   {'applied in':>10} {'sustained':>9}"
    )
    ok = True
    for level, base, mine in rows:
        base_rps, acked_rps = base["requests"] / base["seconds"], mine["acked"] / mine["seconds"]
        ratio = acked_rps / base_rps
        deliveries, runs = stored[level]
        # Acknowledged deliveries per second until the last of them was applied: the pace the daemon
        # keeps up with for good (a burst is acknowledged faster, and applied within storage.apply_lag).
        sustained = mine["acked"] / (mine["seconds"] + mine["applied_after"])
        complete = deliveries >= mine["acked"] and runs >= mine["acked"] and not mine["exhausted"]
        ok = ok and complete
        print(
            f"{level:>5}  {base_rps:>10.0f} {base['p99_ms']:>7.2f}   {acked_rps:>12.0f} {mine['p50_ms']:>7.2f} "
            f"{mine['p99_ms']:>7.2f}   {ratio:>5.2f} {'>=0.30':>6}   {mine['acked']:>6} {deliveries:>6} {runs:>6}"
            f"   {mine['seconds'] + mine['applied_after']:>9.1f}s {sustained:>9.0f}"
            f"{'' if ratio >= TARGET else '  MISSED'}"
        )
        if mine["other"] or mine["errors"] or mine["duplicates"] or mine["exhausted"]:
            print(
                f"       daemon: {mine['duplicates']} duplicates, {mine['other']} other answers, {mine['errors']} "
                f"socket errors, bodies ran out {mine['exhausted']} times (raise --rate)"
            )
        figure(f"ingest new runs/s, {level} conns", acked_rps, "req/s", base_rps, ">= 0.3x bare", ratio >= TARGET)
        p99_target = level == 16
        figure(
            f"ingest p99, {level} conns",
            mine["p99_ms"],
            "ms",
            base["p99_ms"],
            "< 20 ms" if p99_target else None,
            mine["p99_ms"] < TARGET_P99_MS if p99_target else None,
        )
        figure(f"ingest acked stored, {level} conns", deliveries, "rows", mine["acked"], ">= acked", complete)
        figure(f"ingest applied/s sustained, {level} conns", sustained, "req/s", base_rps, None, None)
    print("every acknowledged delivery stored, with its run: " + ("yes" if ok else "NO"))
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
