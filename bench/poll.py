"""Polling at scale: requests a minute and primary rate-limit budget an hour, flowforged vs the naive
pattern, in the same run, for 1,000 and 5,000 GitHub repositories.

The world: FakeGitHub in-process on 127.0.0.1, each repository with three workflows (ci, lint,
release) of one finished run each. Every cycle after the first, a share of the repositories (--changed,
2% by default) gets a new run, one in five of them failed with jobs.

- flowforged: the real Poller and GitHub plugin, ETags in a real SQLite store, default pacing (810
  points a minute, 90% of GitHub's secondary limit), poll_interval as README.md recommends for the
  size (5 min for 1,000 repositories, 10 min for 5,000). The first cycle (the backfill at start), then
  one simulated hour of scheduled cycles, each spread over 80% of the interval as the scheduler does.
- naive: what a poller written without care does each cycle: list each repository's workflows, then
  each workflow's runs, no ETag, four connections, no pacing. Its cycles are all alike (nothing is
  conditional), so one cycle is measured and an hour is that cycle times cycles an hour at the same
  interval.

Time is simulated so that an hour does not take an hour: one virtual clock is the fake's, the
client's and the poller's; each request moves it by 25 ms (100 ms to api.github.com over four
connections), and the pacer's and the spreader's waits move it instead of sleeping. "req/min" is the
most requests any sliding minute held (GitHub's secondary limit: 900 points, a GET is 1, 304s
count); "budget/h" is what GitHub counts against the primary 5,000 an hour (a 304 costs nothing).

    .venv/bin/python bench/poll.py [--sizes 1000,5000] [--changed 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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
from flowforged.poller import SPREAD, Poller  # noqa: E402
from flowforged.secrets import Secret  # noqa: E402
from flowforged.store import Store  # noqa: E402
from flowforged_plugins.github import GitHubProvider, GitHubSourceConfig  # noqa: E402
from tests.fakes.github_api import FakeGitHub  # noqa: E402

TOKEN = "ghp_bench0000000000000000000000000000000"
WORKFLOWS = (".github/workflows/ci.yml", ".github/workflows/lint.yml", ".github/workflows/release.yml")
LATENCY = 0.100  # seconds per request to api.github.com
CONNECTIONS = 4  # a poller's concurrent requests (flowforged: CONCURRENCY workers)
SECONDARY = 900  # GitHub: points a minute for REST endpoints
PRIMARY = 5000  # GitHub: requests an hour for a personal access token
INTERVALS = {1000: 300.0, 5000: 600.0}  # README.md, "Polling": the recommended poll_interval


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class SimulatedGitHub(FakeGitHub):
    """The fake GitHub, where each request takes LATENCY / CONNECTIONS of simulated time."""

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await super()._answer(request, handler)
        self.clock.now += LATENCY / CONNECTIONS  # type: ignore[attr-defined]
        return response


def world(size: int, clock: Clock) -> tuple[SimulatedGitHub, list[str]]:
    fake = SimulatedGitHub(token=TOKEN, rate_limit=10**9, clock=clock)  # counts the budget, never runs out
    repos = [f"bench-org/repo-{n:04d}" for n in range(size)]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock() - 3600))
    for repo in repos:
        for workflow in WORKFLOWS:
            fake.add_run(repo, workflow, status="completed", conclusion="success", created_at=created)
    return fake, repos


def change(fake: FakeGitHub, repos: list[str], share: float, rng: random.Random) -> None:
    """`share` of the repositories get a new finished run; one in five of those failed, with jobs."""
    for n, repo in enumerate(rng.sample(repos, max(int(len(repos) * share), 1))):
        run = fake.add_run(repo, WORKFLOWS[0], status="in_progress", created_at=fake.now())
        conclusion = "failure" if n % 5 == 0 else "success"
        fake.add_job(run["id"], "test", status="completed", conclusion=conclusion)
        fake.set_run_status(run["id"], "completed", conclusion)


async def naive_cycle(client: ProviderClient, repos: list[str]) -> None:
    """List the workflows of each repository, then the runs of each workflow; no ETag, no pacing."""
    queue = iter(repos)

    async def worker() -> None:
        for repo in queue:
            workflows = await client.get(f"/repos/{repo}/actions/workflows", params={"per_page": 100})
            for workflow in workflows.data["workflows"]:
                await client.get(f"/repos/{repo}/actions/workflows/{workflow['id']}/runs", params={"per_page": 30})

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))


class Measure:
    """The fake's requests from a point on: how many, the busiest minute, the primary budget."""

    def __init__(self, fake: FakeGitHub) -> None:
        self.fake, self.since, self.charged, self.began = fake, len(fake.requests), fake.charged, fake.clock()

    def result(self) -> dict[str, float]:
        sent = self.fake.requests[self.since :]
        return {
            "requests": len(sent),
            "304": sum(1 for r in sent if r.status == 304),
            "refused": sum(1 for r in sent if r.status in (403, 429)),
            "per_minute": self.fake.max_points_per_minute(self.since),
            "budget": self.fake.charged - self.charged,
            "minutes": (self.fake.clock() - self.began) / 60,
        }


async def serve(fake: FakeGitHub, body: Callable[[str], Awaitable[Any]]) -> Any:
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        return await body(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


async def bench(size: int, share: float, tmp: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """flowforged's backfill and hour, then one naive cycle over the same world, on the same clock."""
    clock = Clock(time.time())
    fake, repos = world(size, clock)

    async def body(base: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        mine = await flowforged(fake, repos, base, clock, share, tmp)
        return mine, await naive(fake, repos, base)

    return await serve(fake, body)


def make_poller(store: Store, provider: GitHubProvider, session: aiohttp.ClientSession, clock: Clock) -> Poller:
    """The real Poller on the simulated clock. One worker, so that requests reach the fake in the
    order and at the moments the pacer and the spread gave them (several would overtake each other
    in simulated time)."""
    ingest = Ingest(store, {"github": provider}, Bus())
    options = {"monotonic": clock, "sleep": clock.sleep}
    return Poller(
        store, ingest, ingest.providers, session, clock=clock, sleep=clock.sleep, concurrency=1, client_options=options
    )


async def flowforged(
    fake: FakeGitHub, repos: list[str], base: str, clock: Clock, share: float, tmp: Path
) -> dict[str, dict[str, float]]:
    """The backfill, then an hour of cycles at the recommended interval, each at its simulated time."""
    interval = INTERVALS.get(len(repos), 600.0)
    rng = random.Random(len(repos))
    # poll_interval 0: nothing is scheduled in real time; the bench is the scheduler.
    config = GitHubSourceConfig(type="github", token=Secret(TOKEN, "inline"), api_url=base, repos=repos)
    provider = GitHubProvider("github", config)
    store = Store(tmp / f"poller-{len(repos)}.db").open()
    try:
        async with aiohttp.ClientSession() as session:
            poller = make_poller(store, provider, session, clock)
            await poller.start()
            start, backfill = clock(), Measure(fake)
            await poller.poll_once("github")
            first, hour = backfill.result(), Measure(fake)
            for n in range(1, int(3600 / interval) + 1):
                clock.now = max(clock.now, start + n * interval)  # the scheduler's next run time
                change(fake, repos, share, rng)
                await poller.poll_once("github", spread=SPREAD * interval)
            await poller.stop()
            return {"backfill": first, "hour": hour.result()}
    finally:
        store.close()


async def naive(fake: FakeGitHub, repos: list[str], base: str) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        client = ProviderClient("naive", base, ("Authorization", f"Bearer {TOKEN}"), session, MemoryEtags())
        cycle = Measure(fake)
        await naive_cycle(client, repos)
        return cycle.result()


def table(rows: list[tuple[int, float, dict[str, dict[str, float]], dict[str, float]]]) -> str:
    head = (
        f"{'repos':>5} {'interval':>8} | {'flowforged: backfill':^22} | {'flowforged: one hour of cycles':^37} |"
        f" {'naive: one cycle':^28} | {'naive an hour':>13}\n"
        f"{'':>5} {'':>8} | {'requests':>9} {'req/min':>12} | {'requests':>9} {'304s':>7} {'req/min':>8}"
        f" {'budget/h':>10} | {'requests':>9} {'minutes':>8} {'req/min':>9} | {'budget/h':>13}"
    )
    lines = [head, "-" * len(head.splitlines()[1])]
    for size, interval, mine, theirs in rows:
        first, hour = mine["backfill"], mine["hour"]
        per_hour = theirs["requests"] * 3600 / interval
        lines.append(
            f"{size:>5} {interval / 60:>6.0f} m | {first['requests']:>9,} {first['per_minute']:>12,} |"
            f" {hour['requests']:>9,} {hour['304']:>7,} {hour['per_minute']:>8,} {hour['budget']:>10,} |"
            f" {theirs['requests']:>9,} {theirs['minutes']:>8.1f} {theirs['per_minute']:>9,} | {per_hour:>13,.0f}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--changed", type=float, default=0.02, help="share of repositories with a new run each cycle")
    args = parser.parse_args()
    logs.setup("error")  # the pacing warnings of a too-short interval would be the only lines
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowforge-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            interval = INTERVALS.get(size, 600.0)
            rows.append((size, interval, *await bench(size, args.changed, Path(tmp))))
    print(table(rows))  # noqa: T201 - a benchmark prints its table
    print(  # noqa: T201
        f"simulated time: {LATENCY * 1000:.0f} ms a request over {CONNECTIONS} connections; "
        f"{args.changed:.0%} of repositories changed each cycle"
    )
    for size, interval, mine, theirs in rows:
        hour = mine["hour"]
        busiest = max(hour["per_minute"], mine["backfill"]["per_minute"])
        figure(
            f"poll req/min (busiest minute), {size} repos",
            busiest,
            "requests",
            theirs["per_minute"],
            f"<= {SECONDARY} (GitHub)",
            busiest <= SECONDARY and hour["refused"] == 0,
        )
        figure(
            f"poll primary budget an hour, {size} repos",
            hour["budget"],
            "requests",
            round(theirs["requests"] * 3600 / interval),
            f"<= {PRIMARY} (GitHub)",
            hour["budget"] <= PRIMARY,
        )


if __name__ == "__main__":
    asyncio.run(main())
