"""The GitHub plugin's REST half: the pure helpers, then make_client and the operations against the
fake GitHub (127.0.0.1 only), asserting what reaches it: method, path, headers and body."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from flowforged.errors import ConfigError, ProviderError
from flowforged.http import MemoryEtags
from flowforged.secrets import Secret
from flowforged.store.ingest import event_key
from flowforged_plugins.github import GitHubProvider, GitHubSourceConfig, remote
from tests.conftest import GITHUB_SECRET, base_config, make_config
from tests.fakes.github_api import FakeGitHub

TOKEN = "ghp_api0test0token00000000000000000000001"
REPO = "octo-org/octo-repo"
CI = ".github/workflows/ci.yml"
PIPELINE = f"{REPO}/{CI}"


# --- pure half -----------------------------------------------------------------------------------


def test_repository_entries() -> None:
    assert remote.parse_repos(["octo-org/octo-repo", "org:octo-org", "octocat/*"]) == (
        ["octo-org/octo-repo"],
        ["octo-org", "octocat"],
    )
    assert remote.parse_repos(["installation", "octo-org/octo-repo"]) == (["octo-org/octo-repo"], [])  # an App's
    for bad in ["octo-repo", "octo-org/", "a/b/c", "org:", "org:a/b", "*/*", "octo-org/octo-*"]:
        with pytest.raises(ValueError, match="expected owner/repo, owner/\\*, org:NAME or installation"):
            remote.parse_repos([bad])


def test_config_names_the_bad_entry_and_a_missing_token(db_path: Any) -> None:
    source = {"type": "github", "webhook_secret": GITHUB_SECRET, "repos": ["octo-repo"], "poll_interval": "1m"}
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"github": source}))
    problems = dict(caught.value.problems)
    assert problems["sources.github.repos"] == "'octo-repo': expected owner/repo, owner/*, org:NAME or installation"
    assert problems["sources.github.token"].startswith("missing: polling")
    webhooks_only = {"type": "github", "webhook_secret": GITHUB_SECRET}
    assert make_config(base_config(db_path, sources={"github": webhooks_only}))


def test_pipeline_keys_and_workflow_ids() -> None:
    assert remote.split_pipeline(PIPELINE) == (REPO, CI)
    assert remote.workflow_id(CI) == "ci.yml"
    assert remote.workflow_id("161335") == "161335"
    with pytest.raises(ProviderError) as caught:
        remote.split_pipeline("octo-org/octo-repo")
    assert caught.value.status == 404


def test_cursor_round_trip() -> None:
    cursor = remote.Cursor("2026-11-27T09:00:00Z", "2026-11-27T08:00:00Z")
    assert remote.Cursor.load(cursor.dump()) == cursor
    assert remote.Cursor.load(None) == remote.Cursor()


def test_runs_are_taken_once_latest_state_oldest_first() -> None:
    a1 = {"id": 1, "run_attempt": 1, "created_at": "2026-11-27T08:00:00Z", "updated_at": "2026-11-27T08:05:00Z"}
    a2 = {**a1, "run_attempt": 2, "updated_at": "2026-11-27T09:00:00Z"}
    b = {"id": 2, "run_attempt": 1, "created_at": "2026-11-27T07:00:00Z", "updated_at": "2026-11-27T07:01:00Z"}
    assert remote.unique_runs([a2, b, a1]) == [b, a2]


def test_a_polled_run_has_the_key_of_the_webhook_of_the_same_state() -> None:
    fake = FakeGitHub()
    run = fake.add_run(REPO, CI, status="completed", conclusion="failure")
    provider = GitHubProvider("github", GitHubSourceConfig(type="github"))
    [hooked] = provider.normalize("workflow_run", fake.webhook_payload(run["id"]))
    [polled] = provider.normalize("workflow_run", remote.run_payload(run, "main"))
    assert event_key(polled) == event_key(hooked) and polled.pipeline == PIPELINE
    assert polled.default_branch == "main"


# --- against the fake ----------------------------------------------------------------------------


@pytest.fixture
async def gh(aiohttp_server: Any) -> Any:
    fake = FakeGitHub(token=TOKEN)
    server = await aiohttp_server(fake.app)
    config = GitHubSourceConfig(type="github", token=Secret(TOKEN, "inline"), api_url=str(server.make_url("")))
    provider = GitHubProvider("github", config)
    async with aiohttp.ClientSession() as session:
        fake.client = provider.make_client(session, MemoryEtags())
        fake.provider = provider
        yield fake


def posts(fake: FakeGitHub) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.json) for r in fake.requests if r.method != "GET"]


async def test_client_defaults_and_headers(gh: FakeGitHub) -> None:
    async with aiohttp.ClientSession() as session:
        default = GitHubProvider("github", GitHubSourceConfig(type="github", token=Secret(TOKEN, "inline")))
        assert default.make_client(session, MemoryEtags()).base_url == "https://api.github.com"
        webhooks_only = GitHubProvider("github", GitHubSourceConfig(type="github"))
        with pytest.raises(NotImplementedError):
            webhooks_only.make_client(session, MemoryEtags())
    gh.add_repo(REPO)
    await gh.client.get(f"/repos/{REPO}/actions/runs")  # the fake answers 401 to a wrong token
    headers = gh.requests[-1].headers
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert headers["User-Agent"].startswith("flowforged/")


async def test_trigger_returns_the_run_or_none(gh: FakeGitHub) -> None:
    gh.add_workflow(REPO, CI)
    started = await gh.provider.trigger(gh.client, PIPELINE, "main", {"env": "prod", "dry_run": True})
    assert set(started) == {"workflow_run_id", "run_url", "html_url"}
    assert gh.runs[started["workflow_run_id"]]["event"] == "workflow_dispatch"
    gh.return_run_details = False  # GitHub Enterprise Server before return_run_details: 204
    assert await gh.provider.trigger(gh.client, PIPELINE, "release", {}) is None
    assert posts(gh) == [
        (
            "POST",
            f"/repos/{REPO}/actions/workflows/ci.yml/dispatches",
            {"ref": "main", "return_run_details": True, "inputs": {"env": "prod", "dry_run": True}},
        ),
        ("POST", f"/repos/{REPO}/actions/workflows/ci.yml/dispatches", {"ref": "release", "return_run_details": True}),
    ]


async def test_trigger_errors_say_what_failed(gh: FakeGitHub) -> None:
    gh.add_repo(REPO)
    with pytest.raises(ProviderError) as caught:
        await gh.provider.trigger(gh.client, f"{REPO}/.github/workflows/missing.yml", "main", {})
    assert caught.value.status == 404
    assert str(caught.value).startswith("github: workflow octo-org/octo-repo/.github/workflows/missing.yml on main")
    with pytest.raises(ProviderError) as caught:
        await gh.provider.trigger(gh.client, PIPELINE, "main", {}, {"A": "1"})
    assert caught.value.status == 400 and "inputs, not variables" in str(caught.value)


async def test_rerun_whole_and_failed_only(gh: FakeGitHub) -> None:
    run = gh.add_run(REPO, CI, status="completed", conclusion="failure")
    gh.add_job(run["id"], "lint", status="completed", conclusion="success")
    gh.add_job(run["id"], "test", status="completed", conclusion="failure")
    row = {"pipeline": PIPELINE, "run_id": str(run["id"]), "attempt": 1}
    assert await gh.provider.rerun(gh.client, row, failed_only=True) is None
    assert run["run_attempt"] == 2 and [j["status"] for j in gh.jobs[run["id"]][2:]] == ["completed", "queued"]
    gh.set_run_status(run["id"], "completed", "failure")
    await gh.provider.rerun(gh.client, row, failed_only=False)
    assert run["run_attempt"] == 3
    assert posts(gh) == [
        ("POST", f"/repos/{REPO}/actions/runs/{run['id']}/rerun-failed-jobs", None),
        ("POST", f"/repos/{REPO}/actions/runs/{run['id']}/rerun", None),
    ]
    with pytest.raises(ProviderError) as caught:  # GitHub's 403 "already running" is a conflict
        await gh.provider.rerun(gh.client, row, failed_only=False)
    assert caught.value.status == 409 and "still running" in str(caught.value)


async def test_cancel_and_force_cancel(gh: FakeGitHub) -> None:
    running = gh.add_run(REPO, CI, status="in_progress")
    stuck = gh.add_run(REPO, CI, status="in_progress")
    await gh.provider.cancel(gh.client, {"pipeline": PIPELINE, "run_id": str(running["id"])}, force=False)
    await gh.provider.cancel(gh.client, {"pipeline": PIPELINE, "run_id": str(stuck["id"])}, force=True)
    assert running["conclusion"] == stuck["conclusion"] == "cancelled"
    assert posts(gh) == [
        ("POST", f"/repos/{REPO}/actions/runs/{running['id']}/cancel", None),
        ("POST", f"/repos/{REPO}/actions/runs/{stuck['id']}/force-cancel", None),
    ]


async def test_cancel_errors_are_409_404_403_in_words_for_people(gh: FakeGitHub) -> None:
    done = gh.add_run(REPO, CI, status="completed", conclusion="success")
    row = {"pipeline": PIPELINE, "run_id": str(done["id"])}
    with pytest.raises(ProviderError) as caught:
        await gh.provider.cancel(gh.client, row, force=False)
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert str(caught.value) == (
        f"github: run {done['id']} of {PIPELINE} cannot be cancelled "
        "(the provider said: Cannot cancel a workflow run that is completed.)"
    )
    with pytest.raises(ProviderError) as caught:
        await gh.provider.cancel(gh.client, {**row, "run_id": "999"}, force=False)
    assert caught.value.status == 404 and "was not found" in str(caught.value)
    gh.forbid_next()
    with pytest.raises(ProviderError) as caught:
        await gh.provider.cancel(gh.client, row, force=False)
    assert caught.value.status == 403
    assert "may not cancel" in str(caught.value) and "Actions read and write" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_runs_of_pull_requests_are_told_apart_from_pushes() -> None:
    from flowforged.store.ingest import state_branch
    from flowforged_plugins.github import normalize_run
    from tests.conftest import fixture

    example = fixture("github/webhooks/workflow_run.completed.with-pull-requests.json")
    run, repository = example["workflow_run"], example["repository"]
    # GitHub lists the open pull requests of a pushed branch too: a push run stays a push run.
    pushed = normalize_run("github", run, repository)
    assert (pushed.proposed, pushed.pull_request, state_branch(pushed)) == (False, None, "master")
    same_repo = normalize_run("github", {**run, "event": "pull_request"}, repository)
    assert (same_repo.pull_request, same_repo.head_repo) == (2, "octo-org/octo-repo")
    assert state_branch(same_repo) == "octo-org/octo-repo:master"
    fork_head = {**run["head_repository"], "full_name": "someone/octo-repo"}
    fork = normalize_run("github", {**run, "event": "pull_request", "pull_requests": [], "head_repository": fork_head})
    assert (fork.proposed, fork.pull_request, state_branch(fork)) == (True, None, "someone/octo-repo:master")
    # A fork's run is a pull request's whatever its event says (pull_request_target, a re-run, ...).
    odd = normalize_run("github", {**run, "event": "workflow_dispatch", "head_repository": fork_head}, repository)
    assert odd.proposed and state_branch(odd) == "someone/octo-repo:master"
