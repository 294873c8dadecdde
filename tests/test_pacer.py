"""Pacing: no window of a provider's per-minute limit is overrun, and a cycle is spread over its interval.

The pure Pacer is tested alone; the poller is tested against the fake GitHub, which counts every
request (304s included) in a sliding minute and refuses, as GitHub does, what goes over its secondary
limit. Time is a virtual clock: the pacer's and the spreader's sleeps move it instead of waiting, so a
ten-minute cycle runs in a second and nothing depends on how fast the machine is. One worker polls
(concurrency=1), so that requests reach the fake in the order, and at the moments, they were given.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from flowforged import app as app_module
from flowforged.bus import Bus
from flowforged.http import MemoryEtags, ProviderClient
from flowforged.ingest import Ingest
from flowforged.pacer import Pacer
from flowforged.poller import SPREAD, Poller
from flowforged.store import Store
from flowforged_plugins.github import GitHubProvider, GitHubSourceConfig
from flowforged_plugins.github import remote as github_remote
from flowforged_plugins.gitlab import GitLabProvider, GitLabSourceConfig
from tests.conftest import GH_TOKEN, GITHUB_SECRET, GITLAB_TOKEN, GL_TOKEN, base_config, make_config
from tests.fakes.github_api import FakeGitHub
from tests.fakes.gitlab_api import FakeGitLab

START = 1_800_000_000.0
CI = ".github/workflows/ci.yml"


class VirtualClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def windows_hold(starts: list[tuple[float, float]], limit: float, window: float = 60.0) -> bool:
    """Whether every window of `window` seconds, wherever it begins, holds at most `limit` points."""
    starts = sorted(starts)
    first = 0
    total = 0.0
    for at, points in starts:
        total += points
        while starts[first][0] + window <= at:
            total -= starts[first][1]
            first += 1
        if total > limit + 1e-9:
            return False
    return True


# --- the pure pacer ------------------------------------------------------------------------------


def test_no_window_holds_more_than_the_limit_whatever_the_mix_and_arrivals():
    pacer = Pacer(900, 60.0)
    rng = random.Random(7)
    now, starts = 0.0, []
    for _ in range(5000):
        now += rng.choice([0.0, 0.0, 0.001, 0.05, 2.0])  # bursts of concurrent requests, and lulls
        points = rng.choice([1, 1, 1, 1, 5])  # GitHub: GET 1, POST 5
        start = pacer.reserve(points, now)
        assert start >= now
        starts.append((start, points))
    assert windows_hold(starts, 900)
    assert [s for s, _ in starts] == sorted(s for s, _ in starts)  # in the order they asked


def test_a_few_requests_go_at_once_and_many_are_spread_at_the_windows_rate():
    pacer = Pacer(600, 60.0)  # 10 a second, a burst of 30
    starts = [pacer.reserve(1, 0.0) for _ in range(330)]
    assert starts[:30] == [0.0] * 30
    assert starts[31] - starts[30] == pytest.approx(0.1)
    assert starts[-1] == pytest.approx(30.0)  # 300 more at 10 a second
    assert windows_hold([(s, 1) for s in starts], 600)


def test_a_request_worth_more_than_a_window_waits_for_an_empty_one():
    pacer = Pacer(10, 60.0, burst=10)
    first = [pacer.reserve(1, 0.0) for _ in range(10)]
    assert first == [0.0] * 10
    assert pacer.reserve(50, 0.0) == 60.0  # alone in its window, not never


def test_max_rps_alone_spaces_starts():
    pacer = Pacer(max_rps=4)
    assert [pacer.reserve(1, 0.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert pacer.seconds_for(60) == 15.0


def github_provider() -> GitHubProvider:
    return GitHubProvider("gh", GitHubSourceConfig(type="github", token="t"))


def gitlab_provider() -> GitLabProvider:
    return GitLabProvider("gl", GitLabSourceConfig(type="gitlab", token="t"))


async def test_provider_defaults_are_below_their_documented_limits():
    async with aiohttp.ClientSession() as session:
        gh: ProviderClient = github_provider().make_client(session, MemoryEtags())
        gl: ProviderClient = gitlab_provider().make_client(session, MemoryEtags())
    assert gh.pacer.limit == 810 <= 900 and gl.pacer.limit == 1800 <= 2000
    assert github_remote.points("GET") == 1 and github_remote.points("post") == 5


# --- the poller against the fake GitHub ----------------------------------------------------------


class Polling:
    """A Poller over a real store, a fake provider and one virtual clock for all three."""

    def __init__(self, db: Path, fake: Any, name: str, source: dict[str, Any]) -> None:
        self.db, self.fake, self.name, self.source = db, fake, name, source

    async def __aenter__(self) -> Poller:
        clock: VirtualClock = self.fake.clock
        config = make_config(base_config(self.db, sources={self.name: self.source}))
        self.store = Store(config.storage.path).open()
        self.session = aiohttp.ClientSession()
        ingest = Ingest(self.store, app_module.make_providers(config), Bus())
        options = {"monotonic": clock, "sleep": clock.sleep}
        self.poller = Poller(
            self.store,
            ingest,
            ingest.providers,
            self.session,
            clock=clock,
            sleep=clock.sleep,
            concurrency=1,
            client_options=options,
        )
        await self.poller.start()
        return self.poller

    async def __aexit__(self, *exc: Any) -> None:
        await self.poller.stop()
        await self.session.close()
        await asyncio.to_thread(self.store.close)


def github(db: Path, fake: FakeGitHub, server: Any, repos: list[str], **extra: Any) -> Polling:
    source = {
        "type": "github",
        "webhook_secret": GITHUB_SECRET,
        "token": GH_TOKEN,
        "api_url": str(server.make_url("")),
        "repos": repos,
        **extra,
    }
    return Polling(db, fake, "github", source)


async def first_cycle(poller: Poller, timeout: float = 30.0) -> None:
    """Wait, with a deadline, for the cycle start() scheduled for now."""
    deadline = asyncio.get_running_loop().time() + timeout
    while poller.last_cycle("github") is None:
        assert asyncio.get_running_loop().time() < deadline, "the first cycle did not end"
        await asyncio.sleep(0.01)


def world(n: int, per_minute: int | None = 900) -> tuple[FakeGitHub, list[str]]:
    clock = VirtualClock()
    fake = FakeGitHub(token=GH_TOKEN, clock=clock, per_minute=per_minute, rate_limit=10**6)
    repos = [f"octo-org/repo-{i:04d}" for i in range(n)]
    for repo in repos:
        fake.add_repo(repo)
    return fake, repos


async def test_a_thousand_repositories_stay_under_githubs_secondary_limit_by_default(aiohttp_server, db_path):
    fake, repos = world(1000)  # the fake refuses what goes over 900 points a minute, as GitHub does
    server = await aiohttp_server(fake.app)
    async with github(db_path, fake, server, repos, poll_interval=0) as poller:
        cycle = await poller.poll_once("github")
    assert cycle.ok, cycle.rate_limited
    assert len(fake.requests) == 1000 and all(r.status == 200 for r in fake.requests)
    assert fake.max_points_per_minute() <= github_remote.POINTS_PER_MINUTE


async def test_a_scheduled_cycle_is_spread_over_its_interval_and_an_unchanged_repo_costs_nothing(
    aiohttp_server, db_path
):
    fake, repos = world(100)
    server = await aiohttp_server(fake.app)
    async with github(db_path, fake, server, repos, poll_interval="10m") as poller:
        await first_cycle(poller)  # the backfill at start: ETags for every repository
        changed = repos[37]
        fake.add_run(changed, CI, status="completed", conclusion="success", created_at=fake.now())
        since, used, began = len(fake.requests), fake.used, fake.clock()
        cycle = await poller.poll_once("github", spread=SPREAD * 600)
    assert cycle.ok and cycle.events == 1
    sent = fake.requests[since:]
    # Every repository once, in order, each asked no sooner than its share of the interval.
    listed = [r.path.split("/")[3] for r in sent if r.path.endswith("/actions/runs")]
    assert listed == [repo.split("/")[1] for repo in repos]
    # The first at once (give or take the pace left from the backfill), the last near the spread's end.
    assert sent[0].at < began + 1 and sent[-1].at >= began + SPREAD * 600 * 99 / 100
    per_minute = fake.points_per_window(began, 8, since)
    assert all(11 <= n <= 14 for n in per_minute), per_minute  # 100 over 8 minutes, not in one burst
    # Only the repository that changed spent any of the primary budget: the others were 304s.
    assert fake.used - used == sum(1 for r in sent if r.status == 200)
    assert {r.path for r in sent if r.status != 304} == {f"/repos/{changed}/actions/runs"}


async def test_a_configured_pace_holds_every_minute_and_a_short_interval_is_named(aiohttp_server, db_path):
    fake, repos = world(200, per_minute=50)
    server = await aiohttp_server(fake.app)
    async with github(db_path, fake, server, repos, poll_interval="1m", points_per_minute=50) as poller:
        with structlog.testing.capture_logs() as logged:
            cycle = await poller.poll_once("github", spread=SPREAD * 60)
    assert cycle.ok, cycle.rate_limited  # the fake refused nothing
    assert fake.max_points_per_minute() <= 50
    assert fake.requests[-1].at - fake.requests[0].at >= 180  # 200 requests at 50 a minute
    warnings = [e for e in logged if e.get("key") == "sources.github.poll_interval"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["targets"] == 200 and warnings[0]["cycle_seconds"] == 240  # 200 at 50 a minute
    assert warnings[0]["suggested"].startswith("300s or more")


async def test_gitlab_is_paced_under_its_per_minute_limit_which_counts_every_answer(aiohttp_server, db_path):
    clock = VirtualClock()
    fake = FakeGitLab(token=GL_TOKEN, clock=clock, rate_limit=40)  # 40 requests a minute, as RateLimit-* tell
    projects = [f"acme/app-{i:02d}" for i in range(30)]
    for project in projects:
        fake.add_project(project)
    server = await aiohttp_server(fake.app)
    source = {
        "type": "gitlab",
        "webhook_secret": GITLAB_TOKEN,
        "token": GL_TOKEN,
        "api_url": str(server.make_url("/api/v4")),
        "repos": projects,
        "points_per_minute": 25,  # the client keeps a quarter of the 40 in reserve: 30 usable
    }
    async with Polling(db_path, fake, "gitlab", source) as poller:
        assert poller.clients["gitlab"].pacer.limit == 25  # the source's key, over GitLab's default
        first = await poller.poll_once("gitlab")  # each project looked up once, then its pipelines
        second = await poller.poll_once("gitlab")
    assert first.ok and second.ok, (first.rate_limited, second.rate_limited)
    assert len(fake.requests) == 90 and all(r.status == 200 for r in fake.requests)
    assert fake.max_points_per_minute() <= 25


def test_pacing_keys_are_validated_for_every_provider(db_path):
    for provider in ("github", "gitlab", "buildkite"):
        data = base_config(db_path)
        data["sources"]["src"] = {"type": provider, "insecure_no_auth": True, "points_per_minute": 0}
        with pytest.raises(Exception, match="sources.src.points_per_minute"):
            make_config(data)
        data["sources"]["src"].update(points_per_minute=100, max_rps=2.5)
        source = make_config(data).source_configs["src"]
        assert (source.points_per_minute, source.max_rps) == (100, 2.5)
