"""Poll cost: API requests, rate-limit budget and time per cycle, against a naive poller, same run.

FakeGitHub runs in-process on 127.0.0.1 with N repositories of a few finished runs each. The poller
under test (flowforged.poller.Poller with the GitHub plugin, its ETags in a real SQLite store) runs:
a first cycle (the backfill at start), a quiet cycle (nothing changed), a cycle after a tenth of the
repositories got a new run (one in five of those failed, with jobs), and a quiet cycle again. The
baseline lists every repository's runs unconditionally each cycle and ingests what it reads through
the same ingest path. "budget" is what GitHub would count against the 5000-an-hour rate limit (a 304
costs nothing); "seconds" include the fake server's own work, on the same event loop.

    .venv/bin/python bench/poll.py [--sizes 10,100,1000] [--runs 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import figure  # noqa: E402
from flowforged import logs  # noqa: E402
from flowforged.bus import Bus  # noqa: E402
from flowforged.http import MemoryEtags, ProviderClient  # noqa: E402
from flowforged.ingest import Ingest  # noqa: E402
from flowforged.poller import Poller  # noqa: E402
from flowforged.secrets import Secret  # noqa: E402
from flowforged.store import Store  # noqa: E402
from flowforged_plugins.github import GitHubProvider, GitHubSourceConfig, api  # noqa: E402
from tests.fakes.github_api import FakeGitHub  # noqa: E402

TOKEN = "ghp_bench0000000000000000000000000000000"
WORKFLOW = ".github/workflows/ci.yml"


def ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


def world(size: int, runs: int) -> tuple[FakeGitHub, list[str]]:
    fake = FakeGitHub(token=TOKEN, rate_limit=10**9)  # the bench counts the budget, never runs out of it
    repos = [f"bench-org/repo-{n:04d}" for n in range(size)]
    for repo in repos:
        for n in range(runs):
            fake.add_run(repo, WORKFLOW, status="completed", conclusion="success", created_at=ago(3600 * (n + 1)))
    return fake, repos


def change(fake: FakeGitHub, repos: list[str]) -> None:
    """A tenth of the repositories (at least one) get a new finished run; one in five of those failed."""
    for n, repo in enumerate(repos[: max(len(repos) // 10, 1)]):
        run = fake.add_run(repo, WORKFLOW, status="in_progress", created_at=ago(30))
        conclusion = "failure" if n % 5 == 0 else "success"
        fake.add_job(run["id"], "test", status="completed", conclusion=conclusion)
        fake.set_run_status(run["id"], "completed", conclusion)


class Naive:
    """The baseline: every repository's first page of runs, unconditionally, every cycle."""

    def __init__(self, client: ProviderClient, ingest: Ingest, provider: GitHubProvider, repos: list[str]):
        self.client, self.ingest, self.provider, self.repos = client, ingest, provider, repos

    async def cycle(self, concurrency: int) -> None:
        queue = iter(self.repos)

        async def worker() -> None:
            for repo in queue:
                page = await self.client.get(f"/repos/{repo}/actions/runs", params={"per_page": 30})
                for run in page.data["workflow_runs"]:
                    await self.ingest.polled(self.provider, "workflow_run", api.run_payload(run))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(fake: FakeGitHub, step: Any) -> dict[str, float]:
    requests, used = len(fake.requests), fake.used
    started = time.perf_counter()
    await step()
    seconds = time.perf_counter() - started
    answers = fake.requests[requests:]
    return {
        "requests": len(answers),
        "304": sum(1 for r in answers if r.status == 304),
        "budget": fake.used - used,
        "seconds": seconds,
    }


async def bench(size: int, runs: int, concurrency: int, tmp: Path) -> list[tuple[str, dict, dict]]:
    fake, repos = world(size, runs)
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = GitHubSourceConfig(type="github", token=Secret(TOKEN, "inline"), api_url=base, repos=repos)
    provider = GitHubProvider("github", config)
    stores = [Store(tmp / f"poller-{size}.db").open(), Store(tmp / f"naive-{size}.db").open()]
    rows: list[tuple[str, dict, dict]] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
            ingest = Ingest(stores[0], {"github": provider}, Bus())
            poller = Poller(stores[0], ingest, {"github": provider}, session, concurrency=concurrency)
            await poller.start()  # poll_interval 0: nothing scheduled, the bench runs each cycle
            naive_ingest = Ingest(stores[1], {"github": provider}, Bus())
            client = ProviderClient("naive", base, ("Authorization", f"Bearer {TOKEN}"), session, MemoryEtags())
            naive = Naive(client, naive_ingest, provider, repos)
            steps = [("first cycle (backfill)", None), ("quiet", None), ("10% changed", change), ("quiet", None)]
            for label, before in steps:
                if before is not None:
                    before(fake, repos)
                mine = await measure(fake, lambda: poller.poll_once("github"))
                theirs = await measure(fake, lambda: naive.cycle(concurrency))
                rows.append((label, mine, theirs))
            await poller.stop()
    finally:
        for store in stores:
            store.close()
        await runner.cleanup()
    return rows


def table(results: list[tuple[int, list[tuple[str, dict, dict]]]]) -> str:
    head = (
        f"{'repos':>5}  {'cycle':<22} | {'flowforged':^31} | {'naive (unconditional)':^24} |\n"
        f"{'':>5}  {'':<22} | {'requests':>8} {'304s':>6} {'budget':>6} {'seconds':>8} |"
        f" {'requests':>8} {'budget':>6} {'seconds':>8} |"
    )
    lines = [head, "-" * len(head.splitlines()[1])]
    for size, rows in results:
        for label, mine, theirs in rows:
            lines.append(
                f"{size:>5}  {label:<22} | {mine['requests']:>8} {mine['304']:>6} {mine['budget']:>6}"
                f" {mine['seconds']:>8.3f} | {theirs['requests']:>8} {theirs['budget']:>6} {theirs['seconds']:>8.3f} |"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=3, help="finished runs per repository at the start")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    logs.setup("warning")
    results = []
    with tempfile.TemporaryDirectory(prefix="flowforge-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            results.append((size, await bench(size, args.runs, args.concurrency, Path(tmp))))
    print(table(results))  # noqa: T201 - a benchmark prints its table
    for size, rows in results:
        quiet = next(mine for label, mine, _ in rows if label == "quiet")
        naive = next(theirs for label, _, theirs in rows if label == "quiet")
        figure(
            f"poll requests per quiet cycle, {size} repos",
            quiet["requests"],
            "requests",
            naive["requests"],
            "all conditional",
            quiet["304"] == quiet["requests"],
        )
        figure(
            f"rate-limit budget per quiet cycle, {size} repos",
            quiet["budget"],
            "requests",
            naive["budget"],
            "0",
            quiet["budget"] == 0,
        )


if __name__ == "__main__":
    asyncio.run(main())
