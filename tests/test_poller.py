"""The poller with the real application against the fake GitHub and GitLab APIs (127.0.0.1 only).

Each scenario is something an operator would notice: runs missed while the daemon was down, a run
told twice (webhook and poll), what a quiet cycle costs, a spent rate limit, operations that reach
the provider. Nothing sleeps for a fixed time: tests run a cycle with poll_once() or wait on the
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from flowforged import app as app_module
from flowforged import webhooks
from flowforged.bus import Bus
from flowforged.errors import ProviderError
from flowforged.ingest import Ingest
from flowforged.operations import ProviderOperations
from flowforged.poller import POLLER, Poller
from flowforged.store import Store
from flowforged_plugins.github import remote as github_remote
from tests.conftest import GH_TOKEN, GITHUB_SECRET, GITLAB_TOKEN, GL_TOKEN, base_config, make_config, reindex_all
from tests.fakes.github_api import FakeGitHub

REPO = "octo-org/octo-repo"
CI = ".github/workflows/ci.yml"


# --- helpers -------------------------------------------------------------------------------------


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until condition() is true (deadline `timeout` seconds); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def query(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, args)]


def runs(db: Path) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM runs ORDER BY created_at, run_id")


def count_runs(db: Path) -> int:
    return len(runs(db)) if db.exists() else 0


def github_source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "github",
        "webhook_secret": GITHUB_SECRET,
        "token": GH_TOKEN,
        "api_url": str(server.make_url("")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        **extra,
    }


def gitlab_source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "gitlab",
        "webhook_secret": GITLAB_TOKEN,
        "token": GL_TOKEN,
        "api_url": str(server.make_url("/api/v4")),
        "repos": repos,
        "poll_interval": "1h",
        **extra,
    }


class Daemon:
    """The real application on a test server, its poller, and every IngestResult it committed."""

    def __init__(self, client: TestClient):
        self.client = client
        self.app = client.server.app
        self.poller: Poller = self.app[POLLER]
        self.results: list[Any] = []
        self.app[webhooks.INGEST].listeners.append(lambda result, source, origin: self.results.append(result))

    @property
    def transitions(self) -> list[tuple[str, str]]:
        return [(t["run_id"], t["transition"]) for r in self.results for t in r.transitions]

    async def first_cycle(self, source: str) -> None:
        """Wait for the cycle that start() scheduled (the backfill) to finish."""
        await eventually(lambda: self.poller.last_cycle(source) is not None)


@pytest.fixture
def start(aiohttp_client: Callable[..., Any], db_path: Path) -> Callable[..., Any]:
    async def start(sources: dict[str, Any]) -> Daemon:
        app = app_module.build(make_config(base_config(db_path, sources=sources)))
        return Daemon(await aiohttp_client(app))

    return start


def ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


def completed(
    fake: FakeGitHub, branch: str, conclusion: str, created: float, jobs: bool = False, ended: float | None = None
) -> dict:
    """A run created `created` seconds ago and completed now (or `ended` seconds ago)."""
    run = fake.add_run(REPO, CI, branch=branch, created_at=ago(created))
    if jobs:
        fake.add_job(run["id"], "lint", status="completed", conclusion="success")
        fake.add_job(run["id"], "test (ubuntu-latest)", status="completed", conclusion=conclusion)
    fake.set_run_status(run["id"], "completed", conclusion)
    if ended is not None:
        run["updated_at"] = ago(ended)
    return run


# --- GitHub --------------------------------------------------------------------------------------


async def test_runs_missed_while_the_daemon_was_stopped_are_found_at_restart(start, github, db_path):
    source = {"github": github_source(github.server, [REPO])}
    r0 = completed(github, "main", "success", created=7200)
    daemon = await start(source)
    await daemon.first_cycle("github")
    assert count_runs(db_path) == 1
    await daemon.client.close()  # the daemon stops; webhooks are cut: runs happen only in the fake

    r1 = completed(github, "main", "failure", created=3000, jobs=True)
    r2 = completed(github, "main", "success", created=2400)
    r3 = completed(github, "dev", "success", created=1800)
    r4 = completed(github, "dev", "failure", created=1200, jobs=True)
    r5 = completed(github, "feature", "success", created=600)

    daemon = await start(source)
    await eventually(lambda: count_runs(db_path) == 6)  # within the first cycle after the restart
    by_id = {r["run_id"]: r for r in runs(db_path)}
    expected = [(r0, None), (r1, "broken"), (r2, "fixed"), (r3, None), (r4, "broken"), (r5, None)]
    assert {str(r["id"]): t for r, t in expected} == {k: v["transition"] for k, v in by_id.items()}
    await daemon.first_cycle("github")
    assert sorted(daemon.transitions) == sorted(
        [(str(r1["id"]), "broken"), (str(r2["id"]), "fixed"), (str(r4["id"]), "broken")]
    )
    # The failed runs' jobs were read, so that a notification can name them.
    failed_jobs = query(db_path, "SELECT run_id, name FROM jobs WHERE status = 'failed' ORDER BY run_id")
    assert failed_jobs == [
        {"run_id": str(r1["id"]), "name": "test (ubuntu-latest)"},
        {"run_id": str(r4["id"]), "name": "test (ubuntu-latest)"},
    ]
    # Another cycle, and another restart, record nothing twice.
    again = await daemon.poller.poll_once("github")
    assert (again.events, again.transitions, again.errors) == (0, [], [])
    await daemon.client.close()
    daemon = await start(source)
    await daemon.first_cycle("github")
    assert daemon.transitions == [] and len(query(db_path, "SELECT * FROM events WHERE kind = 'run'")) == 6


async def test_first_start_backfills_the_window_and_no_further(start, github, db_path):
    old = completed(github, "main", "failure", created=3 * 86400, ended=3 * 86400 - 600)  # before the window
    recent = [completed(github, "main", c, created=3600 - n) for n, c in enumerate(["success", "failure"])]
    daemon = await start({"github": github_source(github.server, [REPO], backfill="24h")})
    await daemon.first_cycle("github")
    assert [r["run_id"] for r in runs(db_path)] == [str(r["id"]) for r in recent]
    assert str(old["id"]) not in {r["run_id"] for r in runs(db_path)}
    # The failure after a success is a breakage; the run before the window told nothing.
    assert daemon.transitions == [(str(recent[1]["id"]), "broken")]


async def test_a_run_told_by_webhook_and_by_poll_is_one_run(start, github, db_path):
    github.add_repo(REPO)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    hook = daemon.client.make_url("/hooks/github")
    session = daemon.client.session

    run = github.add_run(REPO, CI, branch="main", status="in_progress")
    assert (await github.send_webhook(session, hook, run["id"], GITHUB_SECRET)).status == 202
    assert (await daemon.poller.poll_once("github")).events == 0  # the webhook told it already
    github.set_run_status(run["id"], "completed", "failure")
    cycle = await daemon.poller.poll_once("github")  # the poll is first this time
    assert (cycle.events, [t["transition"] for t in cycle.transitions]) == (1, ["broken"])
    delivery = await github.send_webhook(session, hook, run["id"], GITHUB_SECRET)
    assert delivery.status == 202  # a new delivery id, an old state

    [stored] = runs(db_path)
    assert (stored["status"], stored["transition"]) == ("failed", "broken")
    states = query(db_path, "SELECT status FROM events WHERE run_id = ? ORDER BY id", str(run["id"]))
    assert [s["status"] for s in states] == ["running", "failed"]
    assert daemon.transitions == [(str(run["id"]), "broken")]


async def test_a_quiet_cycle_over_fifty_repositories_is_all_free_304s(start, github, db_path):
    repos = [f"octo-org/repo-{n:02d}" for n in range(50)]
    for n, repo in enumerate(repos):
        github.add_run(repo, CI, status="completed", conclusion="success", created_at=ago(600 + n))
    github.add_run(repos[0], CI, status="in_progress")  # an unfinished run, on its first page
    daemon = await start({"github": github_source(github.server, ["org:octo-org"])})
    await daemon.first_cycle("github")
    assert count_runs(db_path) == 51

    github.requests.clear()
    used = github.used
    quiet = await daemon.poller.poll_once("github")
    assert len(github.requests) == 50 and quiet.requests["not_modified"] == 50
    assert all("If-None-Match" in r.headers and r.status == 304 for r in github.requests)
    assert github.used == used  # GitHub: a 304 costs nothing of the rate limit
    # After a restart the ETags are still there: the first cycle is as cheap.
    await daemon.client.close()
    github.requests.clear()
    daemon = await start({"github": github_source(github.server, ["org:octo-org"])})
    await daemon.first_cycle("github")
    listing = [r for r in github.requests if r.path.startswith("/orgs/")]
    assert len(listing) == 1 and "If-None-Match" not in listing[0].headers  # listed once per process
    runs_requests = [r for r in github.requests if r not in listing]
    assert len(runs_requests) == 50 and all(r.status == 304 for r in runs_requests)


async def test_a_spent_budget_sends_nothing_until_the_reset(aiohttp_server, db_path):
    clock = Clock(time.time())
    fake = FakeGitHub(token=GH_TOKEN, clock=clock)
    server = await aiohttp_server(fake.app)
    completed(fake, "main", "failure", created=600)
    # poll_interval 0: a client but no scheduled cycle; the test runs each one.
    source = github_source(server, [REPO], poll_interval=0)
    config = make_config(base_config(db_path, sources={"github": source}))
    async with standalone(config, clock) as poller:
        told: list[str] = []
        budgets: list[tuple] = []
        poller.on_request.append(lambda source, outcome: told.append(outcome))
        poller.on_budget.append(lambda *budget: budgets.append(budget))
        fake.exhaust(reset_in=900)
        first = await poller.poll_once("github")
        assert first.rate_limited and len(fake.requests) == 1  # the answer that says so
        assert poller.status()["github"]["rate_limited_until"] is not None
        for _ in range(3):
            clock.now += 250  # not yet
            assert (await poller.poll_once("github")).rate_limited
        assert len(fake.requests) == 1 and count_runs(db_path) == 0
        clock.now += 200  # past the reset
        resumed = await poller.poll_once("github")
        assert resumed.ok and count_runs(db_path) == 1
        status = poller.status()["github"]
        assert status["last_error"] is None and status["rate_limit_remaining"] == fake.remaining
        assert status["requests"]["rate_limited"] == 4
        # What a metrics module is told: each request by outcome, and the budget left.
        assert sorted(told) == sorted(o for o, n in status["requests"].items() for _ in range(n))
        assert budgets[0][:3] == ("github", 0, 5000)  # spent, as the 403 said
        assert budgets[-1] == ("github", fake.remaining, 5000, float(fake.reset_at))


async def test_a_page_read_but_never_ingested_is_read_again(start, github, db_path):
    """The client keeps an ETag as soon as a page arrives; a cycle cut short before its ingest (a
    shutdown, a store error) must not make the next 304 hide what that page said."""
    github.add_repo(REPO)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    failed = completed(github, "main", "failure", created=60)
    client = daemon.poller.clients["github"]
    params = {"per_page": github_remote.PAGE, "exclude_pull_requests": True}
    assert (await client.get(f"/repos/{REPO}/actions/runs", params=params, conditional=True)).status == 200
    github.requests.clear()
    cycle = await daemon.poller.poll_once("github")
    assert [t["run_id"] for t in cycle.transitions] == [str(failed["id"])]
    assert [r.status for r in github.requests if r.path.endswith("/runs")] == [304, 200]
    github.requests.clear()
    assert (await daemon.poller.poll_once("github")).requests["not_modified"] == 1
    assert [r.status for r in github.requests] == [304]


async def test_an_unfinished_run_pushed_off_the_first_page_is_still_followed(start, github, db_path):
    slow = github.add_run(REPO, CI, branch="main", status="in_progress", created_at=ago(5 * 3600))
    completed(github, "main", "success", created=2 * 3600)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    for n in range(35):
        completed(github, "dev", "success", created=3600 - n)
    github.set_run_status(slow["id"], "completed", "failure")
    await daemon.poller.poll_once("github")
    assert {r["run_id"]: r["status"] for r in runs(db_path)}[str(slow["id"])] == "failed"
    assert any(r.path.endswith(f"/runs/{slow['id']}") for r in github.requests)
    github.requests.clear()
    quiet = await daemon.poller.poll_once("github")
    assert quiet.requests == {"ok": 0, "not_modified": 1, "rate_limited": 0, "error": 0}


async def test_link_pagination_and_organizations_and_users(start, github, db_path):
    for n in range(130):
        github.add_run("octo-org/busy", CI, status="completed", conclusion="success", created_at=ago(3000 + n))
    github.add_repo("octo-org/attic", archived=True)
    github.add_run("octo-org/attic", CI, status="completed", conclusion="failure", created_at=ago(60))
    github.add_repo("octocat/dotfiles", owner_type="User")
    github.add_run("octocat/dotfiles", CI, status="completed", conclusion="success", created_at=ago(60))
    daemon = await start({"github": github_source(github.server, ["org:octo-org", "octocat/*"])})
    await daemon.first_cycle("github")
    assert daemon.poller.last_cycle("github").errors == []
    pipelines = {r["pipeline"] for r in runs(db_path)}
    assert pipelines == {f"octo-org/busy/{CI}", f"octocat/dotfiles/{CI}"}  # archived repos run nothing
    assert count_runs(db_path) == 131
    followed = [r for r in github.requests if r.path == "/repos/octo-org/busy/actions/runs" and "page" in r.query]
    assert followed, "the second page of the window was read through the Link header"


async def test_operations_reach_github_through_the_pollers_client(start, github):
    github.add_repo(REPO)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    provider = daemon.app[webhooks.INGEST].providers["github"]
    client = daemon.poller.clients["github"]
    github.add_workflow(REPO, CI)
    started = await provider.trigger(client, f"{REPO}/{CI}", "main", {"env": "prod"})
    assert started["workflow_run_id"] in github.runs
    run = {"pipeline": f"{REPO}/{CI}", "run_id": str(started["workflow_run_id"]), "attempt": 1}
    await provider.cancel(client, run, force=False)
    with pytest.raises(ProviderError) as caught:
        await provider.cancel(client, run, force=False)
    assert caught.value.status == 409 and "cannot be cancelled" in str(caught.value)
    await provider.rerun(client, run, failed_only=True)
    posts = [(r.method, r.path, r.json) for r in github.requests if r.method == "POST"]
    assert posts == [
        (
            "POST",
            f"/repos/{REPO}/actions/workflows/ci.yml/dispatches",
            {"ref": "main", "return_run_details": True, "inputs": {"env": "prod"}},
        ),
        ("POST", f"/repos/{REPO}/actions/runs/{run['run_id']}/cancel", None),
        ("POST", f"/repos/{REPO}/actions/runs/{run['run_id']}/cancel", None),
        ("POST", f"/repos/{REPO}/actions/runs/{run['run_id']}/rerun-failed-jobs", None),
    ]
    assert daemon.poller.status()["github"]["requests"]["error"] == 1  # one budget, one count


async def test_a_rerun_through_the_api_is_followed_off_the_first_page(start, github, db_path):
    old = completed(github, "main", "failure", created=20 * 3600, ended=20 * 3600 - 300, jobs=True)
    for n in range(35):
        completed(github, "dev", "success", created=3600 - n, ended=3000 - n)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    [row] = [r for r in runs(db_path) if r["run_id"] == str(old["id"])]
    operations = ProviderOperations(daemon.poller)
    await operations.rerun(row, failed_only=True)
    assert old["run_attempt"] == 2
    github.set_run_status(old["id"], "completed", "success")  # the page it is on has not changed
    cycle = await daemon.poller.poll_once("github")
    assert [(t["run_id"], t["attempt"], t["transition"]) for t in cycle.transitions] == [(str(old["id"]), 2, "fixed")]
    assert daemon.poller.following["github"] == {}  # its new attempt has finished: no longer followed
    github.requests.clear()
    await daemon.poller.poll_once("github")
    assert [r.status for r in github.requests] == [304]


async def test_operations_name_what_is_missing(start, github):
    github.add_repo(REPO)
    daemon = await start(
        {"github": github_source(github.server, [REPO]), "hooks-only": {"type": "github", "webhook_secret": "s"}}
    )
    operations = ProviderOperations(daemon.poller)
    with pytest.raises(ProviderError) as caught:
        await operations.cancel({"source": "hooks-only", "pipeline": f"{REPO}/{CI}", "run_id": "1"}, force=False)
    assert (caught.value.status, caught.value.code) == (409, "no_api_token")
    assert "sources.hooks-only.token" in str(caught.value)
    with pytest.raises(ProviderError) as caught:
        await operations.trigger("nope", f"{REPO}/{CI}", "main", {})
    assert caught.value.status == 404
    assert set(operations.sources_status()) == {"github"}


async def test_readiness_and_status(start, github):
    github.add_repo(REPO)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    assert (await daemon.client.get("/readyz")).status == 200
    status = daemon.poller.status()["github"]
    assert status["polled"] and status["poll_interval"] == 3600
    assert status["last_ok_at"] and status["next_poll_at"] > status["last_poll_at"]
    assert set(status["requests"]) == {"ok", "not_modified", "rate_limited", "error"}
    await daemon.poller.stop()
    assert daemon.poller.problem() is not None
    assert (await daemon.client.get("/readyz")).status == 503


async def test_stop_ends_a_cycle_in_flight_quietly(start, github, db_path):
    """SIGTERM during a cycle: it ends at once, without an error; the next start resumes it."""
    completed(github, "main", "success", created=600)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    github.stall = asyncio.Event()
    completed(github, "main", "failure", created=300)
    cycle = asyncio.create_task(daemon.poller._job("github"))
    await eventually(lambda: github.requests and github.requests[-1].status is None)  # in flight
    await asyncio.wait_for(daemon.poller.stop(), 5)
    assert cycle.done() and not cycle.cancelled() and cycle.exception() is None
    github.stall.set()
    await daemon.client.close()
    daemon = await start({"github": github_source(github.server, [REPO])})
    await eventually(lambda: count_runs(db_path) == 2)


# --- GitLab --------------------------------------------------------------------------------------


async def test_gitlab_pipelines_missed_while_stopped_are_found(start, gitlab, db_path):
    project = "acme/platform/api"
    source = {"gitlab": gitlab_source(gitlab.server, [project])}
    gitlab.add_pipeline(project, ref="main", status="success")
    daemon = await start(source)
    await daemon.first_cycle("gitlab")
    assert count_runs(db_path) == 1
    await daemon.client.close()

    failed = gitlab.add_pipeline(project, ref="main", status="running")
    gitlab.add_job(failed["id"], "rspec 1/2", status="failed")
    gitlab.add_job(failed["id"], "rubocop", status="success")
    gitlab.set_pipeline_status(failed["id"], "failed")
    fixed = gitlab.add_pipeline(project, ref="main", status="success")
    running = gitlab.add_pipeline(project, ref="dev", status="running")

    daemon = await start(source)
    await eventually(lambda: count_runs(db_path) == 4)
    await daemon.first_cycle("gitlab")
    by_id = {r["run_id"]: r for r in runs(db_path)}
    assert by_id[str(failed["id"])]["transition"] == "broken"
    assert by_id[str(fixed["id"])]["transition"] == "fixed"
    assert by_id[str(running["id"])]["status"] == "running"
    full = by_id[str(failed["id"])]
    assert full["finished_at"] and full["duration_seconds"] is not None  # from the full form
    assert full["pipeline"] == project and full["url"].endswith(f"/-/pipelines/{failed['id']}")
    jobs = query(db_path, "SELECT name, status FROM jobs WHERE run_id = ?", str(failed["id"]))
    assert jobs == [{"name": "rspec 1/2", "status": "failed"}]
    assert (await daemon.poller.poll_once("gitlab")).events == 0
    await daemon.client.close()
    # `flowforged reindex` re-reads polled deliveries as it does webhooks: the same events, no error.
    assert reindex_all(daemon.app[app_module.CONFIG], db_path) == (0, 0)  # no new event, no parse error
    polled = query(db_path, "SELECT DISTINCT event FROM deliveries WHERE origin = 'poll'")
    assert {row["event"] for row in polled} == {"api:pipeline", "api:job"}


async def test_gitlab_group_with_subgroups_and_next_page(start, gitlab, db_path):
    for _ in range(130):
        gitlab.add_pipeline("acme/big", ref="main", status="success")
    gitlab.add_pipeline("acme/tools/sub/deep", ref="main", status="failed")
    gitlab.add_pipeline("other/outside", ref="main", status="failed")
    daemon = await start({"gitlab": gitlab_source(gitlab.server, ["group:acme"])})
    await daemon.first_cycle("gitlab")
    assert daemon.poller.last_cycle("gitlab").errors == []
    assert {r["pipeline"] for r in runs(db_path)} == {"acme/big", "acme/tools/sub/deep"}
    assert count_runs(db_path) == 131
    listed = [r for r in gitlab.requests if r.path == "/api/v4/projects/acme%2Fbig/pipelines"]
    assert [r.query.get("page") for r in listed] == [None, "2"]  # x-next-page followed
    group = [r for r in gitlab.requests if r.path.startswith("/api/v4/groups/")]
    assert group[0].query["include_subgroups"] == "true"


async def test_gitlab_pipeline_told_by_webhook_and_poll_is_one_run(start, gitlab, db_path):
    project = "acme/app"
    gitlab.add_project(project)
    daemon = await start({"gitlab": gitlab_source(gitlab.server, [project])})
    await daemon.first_cycle("gitlab")
    hook = daemon.client.make_url("/hooks/gitlab")
    pipeline = gitlab.add_pipeline(project, ref="main", status="running")
    gitlab.add_job(pipeline["id"], "test", status="failed")
    gitlab.set_pipeline_status(pipeline["id"], "failed")
    delivery = await gitlab.send_webhook(daemon.client.session, hook, pipeline["id"], GITLAB_TOKEN)
    assert delivery.status == 202
    cycle = await daemon.poller.poll_once("gitlab")
    assert cycle.transitions == []
    [stored] = runs(db_path)
    assert (stored["status"], stored["transition"]) == ("failed", "broken")
    states = query(db_path, "SELECT status FROM events WHERE kind = 'run'")
    assert [s["status"] for s in states] == ["failed"]
    assert daemon.transitions == [(str(pipeline["id"]), "broken")]


async def test_gitlab_operations_through_the_pollers_client(start, gitlab):
    project = "acme/app"
    gitlab.add_project(project)
    daemon = await start({"gitlab": gitlab_source(gitlab.server, [project])})
    await daemon.first_cycle("gitlab")
    provider = daemon.app[webhooks.INGEST].providers["gitlab"]
    client = daemon.poller.clients["gitlab"]
    created = await provider.trigger(client, project, "main", {"env": "prod"}, {"DEPLOY": "1"})
    assert created["ref"] == "main" and created["id"] in gitlab.pipelines
    assert gitlab.triggered == [
        {"project": project, "ref": "main", "variables": [{"key": "DEPLOY", "value": "1"}], "inputs": {"env": "prod"}}
    ]
    run = {"pipeline": project, "run_id": str(created["id"]), "attempt": 1}
    assert (await provider.cancel(client, run, force=False))["status"] == "canceled"
    assert (await provider.rerun(client, run, failed_only=True))["id"] == created["id"]


# --- a poller outside the app, with a clock of its own -------------------------------------------


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class standalone:  # noqa: N801 - used as `async with standalone(...)`
    """A Poller over a real store and a real ingest, without the web app: for tests that set the clock."""

    def __init__(self, config: Any, clock: Clock, **client_options: Any) -> None:
        self.config = config
        self.clock = clock
        self.client_options = client_options

    async def __aenter__(self) -> Poller:
        self.store = Store(self.config.storage.path).open()
        self.session = aiohttp.ClientSession()
        ingest = Ingest(self.store, app_module.make_providers(self.config), Bus())
        self.poller = Poller(
            self.store, ingest, ingest.providers, self.session, clock=self.clock, client_options=self.client_options
        )
        await self.poller.start()
        return self.poller

    async def __aexit__(self, *exc: Any) -> None:
        await self.poller.stop()
        await self.session.close()
        await asyncio.to_thread(self.store.close)


# --- what a real provider sends and answers: jobs that cannot be read, runs the store cannot hold --


@pytest.mark.parametrize("answer", [404, 500])
async def test_github_failed_run_whose_jobs_cannot_be_read_is_recorded_at_once(aiohttp_server, db_path, answer):
    clock = Clock(time.time())
    fake = FakeGitHub(token=GH_TOKEN, clock=clock)
    server = await aiohttp_server(fake.app)
    completed(fake, "main", "success", created=900)
    broken = completed(fake, "main", "failure", created=600, jobs=True)
    fake.jobs_fail[broken["id"]] = answer
    source = github_source(server, [REPO], poll_interval=0)
    config = make_config(base_config(db_path, sources={"github": source}))
    async with standalone(config, clock, max_retries=0) as poller:
        cycle = await poller.poll_once("github")
        assert cycle.errors == []
        by_id = {r["run_id"]: r for r in runs(db_path)}
        assert (by_id[str(broken["id"])]["status"], by_id[str(broken["id"])]["transition"]) == ("failed", "broken")
        assert query(db_path, "SELECT name FROM jobs") == []  # the run without its job names
        # The endpoint answers again: the job names are filled in by a later cycle, told once.
        del fake.jobs_fail[broken["id"]]
        clock.now += 60
        await poller.poll_once("github")
        names = [j["name"] for j in query(db_path, "SELECT name FROM jobs ORDER BY name")]
        assert names == (["lint", "test (ubuntu-latest)"] if answer >= 500 else [])
        assert (await poller.poll_once("github")).events == 0
        assert len(query(db_path, "SELECT * FROM events WHERE kind = 'run'")) == 2


@pytest.mark.parametrize("answer", [404, 500])
async def test_gitlab_failed_pipeline_whose_jobs_cannot_be_read_is_recorded_at_once(aiohttp_server, db_path, answer):
    from tests.fakes.gitlab_api import FakeGitLab

    clock = Clock(time.time())
    fake = FakeGitLab(token=GL_TOKEN, clock=clock)
    server = await aiohttp_server(fake.app)
    project = "acme/app"
    fake.add_pipeline(project, ref="main", status="success")
    failed = fake.add_pipeline(project, ref="main", status="running")
    fake.add_job(failed["id"], "rspec", status="failed")
    fake.set_pipeline_status(failed["id"], "failed")
    fake.jobs_fail[failed["id"]] = answer
    config = make_config(base_config(db_path, sources={"gitlab": gitlab_source(server, [project], poll_interval=0)}))
    async with standalone(config, clock, max_retries=0) as poller:
        cycle = await poller.poll_once("gitlab")
        assert cycle.errors == []
        by_id = {r["run_id"]: r for r in runs(db_path)}
        assert (by_id[str(failed["id"])]["status"], by_id[str(failed["id"])]["transition"]) == ("failed", "broken")
        del fake.jobs_fail[failed["id"]]
        clock.now += 60
        await poller.poll_once("gitlab")
        names = [j["name"] for j in query(db_path, "SELECT name FROM jobs")]
        assert names == (["rspec"] if answer >= 500 else [])
        assert len(query(db_path, "SELECT * FROM events WHERE kind = 'run'")) == 2


async def test_a_run_the_store_cannot_hold_does_not_stall_its_repository(start, github, db_path):
    before = completed(github, "main", "success", created=900)
    bad = {
        "head_branch": "main\ud800",  # a lone surrogate: JSON "\ud800"
        "run_attempt": 2**70,
        "head_sha": {"sha": "0" * 40},  # an object where text belongs
    }
    for field, value in bad.items():
        run = completed(github, "main", "failure", created=800)
        run[field] = value
    after = completed(github, "main", "failure", created=700)
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    assert daemon.poller.last_cycle("github").errors == []
    assert {r["run_id"] for r in runs(db_path)} == {str(before["id"]), str(after["id"])}
    assert daemon.transitions == [(str(after["id"]), "broken")]
    raw = query(db_path, "SELECT parse_error FROM deliveries WHERE parse_error IS NOT NULL ORDER BY id")
    assert len(raw) == len(bad)
    # The cursor moved past the page: the next run is ingested by the next cycle.
    fixed = completed(github, "main", "success", created=10)
    cycle = await daemon.poller.poll_once("github")
    assert cycle.errors == [] and str(fixed["id"]) in {r["run_id"] for r in runs(db_path)}
    assert daemon.transitions[-1] == (str(fixed["id"]), "fixed")


async def test_gitlab_pipeline_has_one_duration_by_webhook_and_by_poll(start, gitlab, db_path):
    project = "acme/app"
    gitlab.add_project(project)
    daemon = await start({"gitlab": gitlab_source(gitlab.server, [project])})
    await daemon.first_cycle("gitlab")
    hook = daemon.client.make_url("/hooks/gitlab")
    told, polled = [gitlab.add_pipeline(project, ref="main", status="pending", created_at=ago(900)) for _ in range(2)]
    for pipeline in (told, polled):
        gitlab.set_pipeline_status(pipeline["id"], "running", at=ago(880))
        gitlab.set_pipeline_status(pipeline["id"], "success", at=ago(580))
    assert (await gitlab.send_webhook(daemon.client.session, hook, told["id"], GITLAB_TOKEN)).status == 202
    await daemon.poller.poll_once("gitlab")
    by_id = {r["run_id"]: r for r in runs(db_path)}
    for pipeline in (told, polled):
        run = by_id[str(pipeline["id"])]
        assert (run["duration_seconds"], run["queue_seconds"]) == (300.0, 20.0)
    assert len(query(db_path, "SELECT * FROM events WHERE kind = 'run'")) == 2  # one state each


async def test_polled_pull_request_runs_leave_the_base_branch_alone(start, github, db_path):
    completed(github, "main", "success", created=900)
    pull = github.add_run(REPO, CI, branch="feature/login", event="pull_request", created_at=ago(800))
    github.set_run_status(pull["id"], "completed", "failure")
    fork = github.add_run(REPO, CI, branch="main", event="pull_request", created_at=ago(700))
    fork["head_repository"] = {**fork["head_repository"], "full_name": "someone/octo-repo"}
    github.set_run_status(fork["id"], "completed", "failure")
    daemon = await start({"github": github_source(github.server, [REPO])})
    await daemon.first_cycle("github")
    state = query(db_path, "SELECT branch, status FROM pipeline_state ORDER BY branch")
    assert state == [
        {"branch": "main", "status": "success"},
        {"branch": f"{REPO}:feature/login", "status": "failed"},
        {"branch": "someone/octo-repo:main", "status": "failed"},
    ]
    by_id = {r["run_id"]: r for r in runs(db_path)}
    assert (by_id[str(fork["id"])]["branch"], by_id[str(fork["id"])]["head_repo"]) == ("main", "someone/octo-repo")
