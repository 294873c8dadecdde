"""/metrics at 10,000 pipelines x 3 branches, scraped the way Prometheus scrapes (OpenMetrics, gzip).

Each variant runs in a server process of its own, loaded with the same run totals (those of the cached
large store, bench/bigstore.py, through the start-up path `totals.rebuild()`; without that store, the
same shape fed through `Metrics.run_finished()`), and is scraped N times; the figures are the scrape
time (request to last byte), the samples and bytes of one scrape, and the server's RSS after N scrapes.

- baseline: what /metrics served before: every pipeline with both histograms, written by
  prometheus_client's OpenMetrics encoder, compressed by aiohttp;
- detail=*: every pipeline with every series, written by flowforged/exposition.py;
- default: what the daemon serves by default (metrics.detail empty).

    .venv/bin/python bench/metrics.py [--scrapes 5] [--synthetic]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aiohttp import ClientSession, ClientTimeout, web  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest  # noqa: E402

from bench.bigstore import BRANCH_NAMES, cached_path  # noqa: E402
from bench.figures import figure  # noqa: E402
from flowforged.metrics import Metrics  # noqa: E402
from flowforged.store import totals  # noqa: E402

PIPELINES, BRANCHES = 10_000, 3
ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"  # Prometheus'
# Runs finished between two scrapes: 10M events over 90 days is ~3 in 15 s; a busy hour, 10 times that.
RUNS_BETWEEN = 30
VARIANTS = {"baseline": ["*"], "detail=*": ["*"], "default": []}


def load(detail: list[str], synthetic: bool, events: int = 10_000_000) -> tuple[Metrics, str]:
    metrics = Metrics(CollectorRegistry(), detail=detail, stale_after=365 * 86400.0)
    store = cached_path(PIPELINES, BRANCHES, events)
    if store.exists() and not synthetic:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        runs = totals.rebuild(conn, metrics)
        conn.close()
        return metrics, f"{store.name}: {runs:,} runs"
    rng, now = random.Random(11), time.time()
    for n in range(PIPELINES):
        pipeline = f"org{n % 97:02d}/repo{n:05d}/.github/workflows/ci.yml"
        for branch in BRANCH_NAMES[:BRANCHES]:
            for status in ("success", "failed", "cancelled"):
                metrics.run_finished(
                    {
                        "source": "github",
                        "pipeline": pipeline,
                        "branch": branch,
                        "default_branch": "main",
                        "status": status,
                        "finished_at": now - rng.uniform(0, 86400),
                        "duration_seconds": rng.uniform(30, 1800),
                        "queue_seconds": rng.uniform(2, 60),
                    }
                )
    return metrics, f"synthetic: {PIPELINES:,} pipelines x {BRANCHES} branches x 3 statuses"


async def serve(variant: str, synthetic: bool, events: int) -> None:
    """Serve /metrics on a free port; print it once listening; run until SIGINT."""
    metrics, origin = load(VARIANTS[variant], synthetic, events)

    async def generic(request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, metrics.registry)
        response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        response.enable_compression()
        return response

    keys, rng = list(metrics._pipelines), random.Random(7)

    async def finish(request: web.Request) -> web.Response:
        """Runs that finished since the last scrape: the series of their pipelines change."""
        for _ in range(int(request.query["runs"])):
            source, pipeline = rng.choice(keys)
            run = {"source": source, "pipeline": pipeline, "branch": rng.choice(BRANCH_NAMES), "status": "failed"}
            metrics.run_finished({**run, "finished_at": time.time(), "duration_seconds": rng.uniform(30, 1800)})
        return web.Response()

    app = web.Application()
    app.router.add_get("/metrics", generic if variant == "baseline" else metrics.handler)
    app.router.add_post("/finish", finish)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY {port} {origin}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def scrape(port: int, scrapes: int) -> dict:
    """The first scrape after start, then `scrapes` more with RUNS_BETWEEN runs finished before each."""
    times, body = [], b""
    timeout = ClientTimeout(total=120)
    async with ClientSession(auto_decompress=False, timeout=timeout) as session:
        for n in range(scrapes + 1):
            if n:
                await (await session.post(f"http://127.0.0.1:{port}/finish?runs={RUNS_BETWEEN}")).read()
            started = time.perf_counter()
            headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as reply:
                body = await reply.read()
                encoding = reply.headers.get("Content-Encoding")
            times.append(time.perf_counter() - started)
    text = gzip.decompress(body) if encoding == "gzip" else body
    lines = [line for line in text.split(b"\n") if line and not line.startswith(b"#")]
    return {"times": times, "gzip": len(body), "text": len(text), "samples": len(lines)}


def run_variant(variant: str, scrapes: int, synthetic: bool, events: int) -> dict:
    command = [sys.executable, __file__, "--serve", variant, "--events", str(events)]
    if synthetic:
        command.append("--synthetic")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()
        if not ready.startswith("READY"):
            raise RuntimeError(f"{variant} server did not start: {ready!r}")
        _, port, origin = ready.strip().split(" ", 2)
        before = rss_mb(server.pid)
        result = asyncio.run(scrape(int(port), scrapes))
        result.update(origin=origin, rss_before=before, rss_after=rss_mb(server.pid))
        return result
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--synthetic", action="store_true", help="without the cached large store")
    parser.add_argument("--events", type=int, default=10_000_000, help="the cached store of that many events")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.synthetic, args.events))
        return 0
    results = {}
    for variant in VARIANTS:
        results[variant] = run_variant(variant, args.scrapes, args.synthetic, args.events)
    origin = results["default"]["origin"]
    print(f"/metrics as Prometheus scrapes it (OpenMetrics, gzip); data: {origin}")
    print(f"first scrape after start, then {args.scrapes} scrapes with {RUNS_BETWEEN} runs finished before each")
    columns = ("first s", 8), ("p50 s", 7), ("max s", 7), ("samples", 9), ("text MB", 8), ("gzip MB", 8), ("RSS MB", 13)
    print(f"{'variant':<10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for variant, r in results.items():
        rss = f"{r['rss_before']:.0f} -> {r['rss_after']:.0f}"
        first, rest = r["times"][0], r["times"][1:]
        print(
            f"{variant:<10} {first:>8.2f} {statistics.median(rest):>7.2f} {max(rest):>7.2f} {r['samples']:>9,} "
            f"{r['text'] / 1e6:>8.1f} {r['gzip'] / 1e6:>8.2f} {rss:>13}"
        )
    base, ours = results["baseline"], results["default"]
    p50, base_p50 = statistics.median(ours["times"][1:]), statistics.median(base["times"][1:])
    figure("metrics scrape p50, runs finishing between", p50, "s", base_p50, "< 1 s", p50 < 1)
    worst, base_worst = max(ours["times"]), max(base["times"])
    # The first scrape renders every pipeline; the daemon does that in the background after start.
    figure("metrics first scrape, cold (every pipeline)", worst, "s", base_worst, "< 1 s", worst < 1)
    samples = ours["samples"]
    figure("metrics samples (default)", samples, "samples", base["samples"], "< 100,000", samples < 100_000)
    figure("metrics gzip bytes", ours["gzip"], "bytes", base["gzip"], None, None)
    after = ours["rss_after"]
    figure(f"metrics RSS after {args.scrapes + 1} scrapes", after, "MB", base["rss_after"], "< 150 MB", after < 150)
    detail = statistics.median(results["detail=*"]["times"][1:])
    figure("metrics scrape p50, every pipeline in metrics.detail", detail, "s", base_p50, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
