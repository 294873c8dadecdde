"""Notification latency: webhook acknowledged -> the fake Slack receives the message.

Starts `flowforged run` with a Slack sink pointed at a fake Slack in this process, sends signed
`workflow_run` deliveries from the real fixture that alternate failure and success on the default
branch (each one a `broken` or `fixed` transition), and times each message from the daemon's 202 to
its arrival. Slack allows one message per second per webhook, and the daemon keeps to that, so the
deliveries are spaced 1.1 s apart. Baseline, same run: one direct POST to the same fake Slack.
Target: p99 under 100 ms with a healthy sink and no group wait.

    .venv/bin/python bench/notify.py [--count 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import figure  # noqa: E402
from bench.ingest import free_port, wait_http  # noqa: E402
from flowforged_plugins.github import sign  # noqa: E402
from tests.conftest import github_run  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402

SECRET = "bench-secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    slack = FakeSlack()
    runner = web.AppRunner(slack.app())
    await runner.setup()
    slack_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", slack_port).start()
    slack_url = f"http://127.0.0.1:{slack_port}{slack.path}"

    tmp = Path(tempfile.mkdtemp(prefix="flowforge-notify-"))
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "storage": {"path": str(tmp / "flowforge.db")},
        "logging": {"level": "warning"},
        "sources": {"github": {"type": "github", "webhook_secret": SECRET}},
        "sinks": {"team-slack": {"type": "slack", "webhook_url": slack_url}},
        "rules": [{"name": "main", "branches": ["master"], "on": ["broken", "fixed"], "sinks": ["team-slack"]}],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "flowforged", "-c", str(tmp / "config.yaml"), "run"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latencies: list[float] = []
    baseline: list[float] = []
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        async with aiohttp.ClientSession() as session:
            for n in range(args.count):
                start = time.monotonic()
                async with session.post(slack_url, json={"text": f"baseline {n}"}) as response:
                    await response.read()
                baseline.append(time.monotonic() - start)
                seen = len(slack.received)
                payload = github_run(
                    "failure" if n % 2 == 0 else "success",
                    run_id=900_000 + n,
                    created_at=f"2026-11-27T{8 + n // 60:02d}:{n % 60:02d}:00Z",
                    updated_at=f"2026-11-27T{8 + n // 60:02d}:{n % 60:02d}:30Z",
                )
                body = json.dumps(payload).encode()
                headers = {
                    "X-GitHub-Event": "workflow_run",
                    "X-GitHub-Delivery": f"notify-{n}",
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sign(SECRET, body),
                }
                async with session.post(f"http://127.0.0.1:{port}/hooks/github", data=body, headers=headers) as r:
                    assert r.status == 202, r.status
                    acked = time.monotonic()
                deadline = acked + 10
                while len(slack.received) == seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.0005)
                if len(slack.received) > seen:
                    latencies.append(slack.received[seen].at - acked)
                await asyncio.sleep(1.1)  # Slack: one message per second per webhook
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        await runner.cleanup()
    print(f"notification latency: {args.count} transitions (broken/fixed alternating), Slack sink, no group wait")
    print(f"{'':<34}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    for name, values in (("baseline: one POST to fake Slack", baseline), ("webhook 202 -> Slack received", latencies)):
        ms = [v * 1000 for v in values]
        print(f"{name:<34}{statistics.median(ms):>8.1f}{percentile(ms, 99):>8.1f}{max(ms):>8.1f}")
    p99 = percentile(latencies, 99) * 1000
    figure("notification latency p99 (202 -> Slack)", p99, "ms", percentile(baseline, 99) * 1000, "< 100 ms", p99 < 100)
    notified = sum(1 for m in slack.messages if not m.get("text", "").startswith("baseline"))
    print(
        f"target p99 < 100 ms: {'met' if p99 < 100 else 'MISSED'} ({p99:.1f} ms); "
        f"notifications received {notified} of {args.count}"
    )
    return 0 if notified == args.count else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
