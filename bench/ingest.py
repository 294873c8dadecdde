"""Ingest throughput and latency: the daemon against a bare aiohttp app, in the same run.

Sends signed `workflow_run` deliveries built from the real fixture, each with a unique delivery id,
with wrk at several concurrency levels, first to a bare aiohttp app that only reads the body and
answers 200, then to `flowforged run` with durable commits. Afterwards it checks that the store holds
at least every delivery that was acknowledged. Target: the daemon at >= 0.5x the bare app.

    .venv/bin/python bench/ingest.py [--seconds 5] [--levels 1,16,64]
"""

from __future__ import annotations

import argparse
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
TARGET = 0.5


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


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--levels", default="1,16,64")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    levels = [int(n) for n in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="flowforge-bench-"))
    payload = json.loads((FIXTURE / "github/webhooks/workflow_run.completed.success.json").read_text())
    body = json.dumps(payload).encode()
    (tmp / "body.json").write_bytes(body)
    env = {"BENCH_BODY": str(tmp / "body.json"), "BENCH_SIGNATURE": sign(SECRET, body)}

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
    rows = []
    acked_total = 0
    try:
        wait_http(f"http://127.0.0.1:{daemon_port}/healthz")
        wait_port(bare_port)
        for level in levels:
            base = wrk(
                f"http://127.0.0.1:{bare_port}/hooks/github",
                level,
                args.seconds,
                {**env, "BENCH_PREFIX": f"bare-{level}"},
            )
            mine = wrk(
                f"http://127.0.0.1:{daemon_port}/hooks/github",
                level,
                args.seconds,
                {**env, "BENCH_PREFIX": f"c{level}"},
            )
            acked_total += mine["acked"]
            rows.append((level, base, mine))
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        bare.kill()
        bare.wait()
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]

    print(
        f"ingest: {len(body)}-byte signed workflow_run deliveries, wrk -t1, {args.seconds:g} s per level, "
        f"synchronous=NORMAL WAL"
    )
    print(
        f"{'conns':>5}  {'bare req/s':>10} {'p50 ms':>7} {'p99 ms':>7}   {'daemon req/s':>12} {'p50 ms':>7} "
        f"{'p99 ms':>7}   {'ratio':>5}  {'target':>6}"
    )
    worst = None
    for level, base, mine in rows:
        base_rps, mine_rps = base["requests"] / base["seconds"], mine["requests"] / mine["seconds"]
        ratio = mine_rps / base_rps
        worst = ratio if worst is None else min(worst, ratio)
        print(
            f"{level:>5}  {base_rps:>10.0f} {base['p50_ms']:>7.2f} {base['p99_ms']:>7.2f}   {mine_rps:>12.0f} "
            f"{mine['p50_ms']:>7.2f} {mine['p99_ms']:>7.2f}   {ratio:>5.2f}  {'>=0.50':>6}"
            f"{'' if ratio >= TARGET else '  MISSED'}"
        )
        figure(
            f"ingest deliveries/s, {level} connections", mine_rps, "req/s", base_rps, ">= 0.5x bare", ratio >= TARGET
        )
        figure(f"ingest p99, {level} connections", mine["p99_ms"], "ms", base["p99_ms"], None, None)
        if mine["other"] or mine["errors"]:
            print(f"       daemon answered {mine['other']} non-2xx, {mine['errors']} socket errors")
    print(
        f"acknowledged {acked_total}, stored {stored} deliveries ({events} events: one state of one run, "
        f"deduplicated); daemon exit {code}"
    )
    ok = stored >= acked_total and code == 0
    print("every acknowledged delivery stored: " + ("yes" if ok else "NO"))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
