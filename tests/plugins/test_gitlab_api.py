"""The GitLab plugin's REST half: REST pipelines and jobs normalized as their hooks are, the pure
helpers, then make_client and the operations against the fake GitLab (127.0.0.1 only)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from flowforged.errors import ConfigError, ProviderError
from flowforged.http import MemoryEtags
from flowforged.model import Status, parse_time
from flowforged.secrets import Secret
from flowforged.store.ingest import event_key
from flowforged_plugins.gitlab import GitLabProvider, GitLabSourceConfig, normalize_api_pipeline, remote
from tests.conftest import GITLAB_TOKEN, base_config, fixture, make_config
from tests.fakes.gitlab_api import FakeGitLab

TOKEN = "glpat-api0test0token0001"
PROJECT = "acme/platform/api"


def provider(**config: Any) -> GitLabProvider:
    return GitLabProvider("gitlab", GitLabSourceConfig(type="gitlab", **config))


# --- pure half -----------------------------------------------------------------------------------


def test_gitlab_api_times_with_milliseconds() -> None:
    assert parse_time("2026-11-27T09:01:13.000Z") == "2026-11-27T09:01:13Z"
    assert parse_time("2026-11-27T09:01:13.999+01:00") == "2026-11-27T08:01:13Z"


def test_project_entries_and_base_url() -> None:
    assert remote.parse_projects(["acme/app", "group:acme/platform", "/acme/sub/deep/"]) == (
        ["acme/app", "acme/sub/deep"],
        ["acme/platform"],
    )
    for bad in ["app", "group:", "acme//app", "https://gitlab.com/acme/app"]:
        with pytest.raises(ValueError, match="expected a project path"):
            remote.parse_projects([bad])
    assert remote.base_url(None) == "https://gitlab.com/api/v4"
    assert remote.base_url("https://gitlab.example.com/") == "https://gitlab.example.com/api/v4"
    assert remote.base_url("https://example.com/gitlab/api/v4") == "https://example.com/gitlab/api/v4"
    assert remote.project_id("acme/platform/api") == "acme%2Fplatform%2Fapi"


def test_config_needs_a_token_to_poll(db_path: Any) -> None:
    source = {"type": "gitlab", "webhook_secret": GITLAB_TOKEN, "repos": ["app"], "poll_interval": 60}
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"gitlab": source}))
    problems = dict(caught.value.problems)
    assert "expected a project path" in problems["sources.gitlab.repos"]
    assert problems["sources.gitlab.token"].startswith("missing: polling")


def test_a_polled_pipeline_and_job_have_the_keys_of_their_hooks() -> None:
    fake = FakeGitLab()
    pipeline = fake.add_pipeline(PROJECT, status="running")
    job = fake.add_job(pipeline["id"], "rspec", status="failed")
    fake.set_pipeline_status(pipeline["id"], "failed")
    gl = provider()
    project = remote.project_info(fake.find_project(PROJECT))
    [hooked] = gl.normalize("Pipeline Hook", fake.webhook_payload(pipeline["id"]))
    full = {"project": project, "pipeline": fake.served(pipeline)}
    [polled] = gl.normalize(remote.PIPELINE_EVENT, full)
    assert event_key(polled) == event_key(hooked)
    assert (polled.pipeline, polled.status, polled.provider_status) == (PROJECT, Status.FAILED, "failed")
    assert polled.finished_at and polled.started_at and polled.default_branch == "main"
    # A Job Hook of the same job: the fixture's shape with this job's fields.
    hook = fixture("gitlab/webhooks/job_hook.json")
    hook.update(
        build_id=job["id"],
        pipeline_id=pipeline["id"],
        build_status="failed",
        build_name="rspec",
        build_started_at=job["started_at"],
        build_finished_at=job["finished_at"],
        repository={**hook["repository"], "homepage": project["web_url"]},
    )
    [job_hook] = gl.normalize("Job Hook", hook)
    [job_polled] = gl.normalize(remote.JOB_EVENT, {"project": project, "job": job})
    assert event_key(job_polled) == event_key(job_hook)
    assert (job_polled.pipeline, job_polled.stage, job_polled.sha) == (PROJECT, "test", pipeline["sha"])


def test_the_short_form_and_newer_gitlabs_capitalized_status() -> None:
    fake = FakeGitLab()
    pipeline = fake.add_pipeline(PROJECT, status="running", ref="feature/x")
    project = remote.project_info(fake.find_project(PROJECT))
    short = fake.served(pipeline, short=True)
    [event] = provider().normalize(remote.PIPELINE_EVENT, {"project": project, "pipeline": short})
    assert (event.status, event.branch, event.provider_status) == (Status.RUNNING, "feature/x", "running")
    fake.set_pipeline_status(pipeline["id"], "success")
    full = fake.served(pipeline)
    full["detailed_status"]["text"] = "Passed"
    commit = {"title": "Fix the flaky test", "author_name": "Ada"}
    done = normalize_api_pipeline("gitlab", {"project": project, "pipeline": full, "commit": commit})
    assert (done.provider_status, done.commit_message, done.author) == ("success", "Fix the flaky test", "Ada")
    assert done.updated_at == parse_time(full["finished_at"])


def test_hook_label_and_api_text_of_one_state_have_one_key() -> None:
    """GitLab's hook sends the detailed status' label, the API its text: for a pipeline that passed
    with allowed failures, "passed with warnings" and "warning". One state, one key."""
    fake = FakeGitLab()
    pipeline = fake.add_pipeline(PROJECT, status="running")
    fake.set_pipeline_status(pipeline["id"], "success")
    pipeline["detailed_status"].update(text="Warning", label="passed with warnings", group="success-with-warnings")
    project = remote.project_info(fake.find_project(PROJECT))
    [hooked] = provider().normalize("Pipeline Hook", fake.webhook_payload(pipeline["id"]))
    [polled] = provider().normalize(remote.PIPELINE_EVENT, {"project": project, "pipeline": fake.served(pipeline)})
    assert fake.webhook_payload(pipeline["id"])["object_attributes"]["detailed_status"] == "passed with warnings"
    assert event_key(hooked) == event_key(polled)


def test_a_pipeline_hook_carries_its_duration_and_queue_time() -> None:
    """A Pipeline Hook has no started_at: GitLab's own duration and queued_duration are the figures."""
    [event] = provider().normalize("Pipeline Hook", fixture("gitlab/webhooks/pipeline_hook.success.json"))
    assert (event.started_at, event.duration_seconds, event.queue_seconds) == (None, 63.0, 12.0)
    fake = FakeGitLab()
    pipeline = fake.add_pipeline(PROJECT, status="pending", created_at="2026-11-27T09:00:00.000Z")
    fake.set_pipeline_status(pipeline["id"], "running", at="2026-11-27T09:00:20.000Z")
    fake.set_pipeline_status(pipeline["id"], "failed", at="2026-11-27T09:05:20.000Z")
    project = remote.project_info(fake.find_project(PROJECT))
    [hooked] = provider().normalize("Pipeline Hook", fake.webhook_payload(pipeline["id"]))
    [polled] = provider().normalize(remote.PIPELINE_EVENT, {"project": project, "pipeline": fake.served(pipeline)})
    assert (hooked.duration_seconds, hooked.queue_seconds) == (polled.duration_seconds, polled.queue_seconds)
    assert (polled.duration_seconds, polled.queue_seconds) == (300.0, 20.0)


def test_merge_request_pipelines_name_their_merge_request() -> None:
    hook = fixture("gitlab/webhooks/pipeline_hook.success.json")  # GitLab's example is one, on master
    [event] = provider().normalize("Pipeline Hook", hook)
    assert (event.branch, event.trigger, event.pull_request, event.proposed) == (
        "master",
        "merge_request_event",
        1,
        True,
    )
    fake = FakeGitLab()
    pipeline = fake.add_pipeline(PROJECT, ref="refs/merge-requests/7/head", source="merge_request_event")
    project = remote.project_info(fake.find_project(PROJECT))
    [polled] = provider().normalize(remote.PIPELINE_EVENT, {"project": project, "pipeline": fake.served(pipeline)})
    assert (polled.pull_request, polled.proposed) == (7, True)
    pushed = fake.add_pipeline(PROJECT, ref="main")
    [push] = provider().normalize(remote.PIPELINE_EVENT, {"project": project, "pipeline": fake.served(pushed)})
    assert (push.pull_request, push.proposed) == (None, False)


def test_which_listed_pipelines_need_ingest() -> None:
    listed = {"updated_at": "2026-11-27T09:00:10.000Z"}
    assert remote.needs_ingest(listed, Status.RUNNING, None)
    assert remote.needs_ingest(listed, Status.RUNNING, ("pending", "2026-11-27T08:00:00Z"))
    assert not remote.needs_ingest(listed, Status.RUNNING, ("running", "2026-11-27T08:00:00Z"))
    assert not remote.needs_ingest(listed, Status.FAILED, ("failed", "2026-11-27T09:00:09Z"))  # that finish
    assert remote.needs_ingest(listed, Status.FAILED, ("failed", "2026-11-27T08:00:00Z"))  # retried, failed again


# --- against the fake ----------------------------------------------------------------------------


@pytest.fixture
async def gl(aiohttp_server: Any) -> Any:
    fake = FakeGitLab(token=TOKEN)
    server = await aiohttp_server(fake.app)
    fake.provider = provider(token=Secret(TOKEN, "inline"), api_url=str(server.make_url("")))
    async with aiohttp.ClientSession() as session:
        fake.client = fake.provider.make_client(session, MemoryEtags())
        yield fake


def posts(fake: FakeGitLab) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.json) for r in fake.requests if r.method != "GET"]


async def test_client_base_url_and_token_header(gl: FakeGitLab) -> None:
    assert gl.client.base_url.endswith("/api/v4")  # api_url named the instance only
    gl.add_project(PROJECT)
    await gl.client.get(f"/projects/{remote.project_id(PROJECT)}")  # the fake answers 401 to a wrong token
    async with aiohttp.ClientSession() as session:
        default = provider(token=Secret(TOKEN, "inline")).make_client(session, MemoryEtags())
        assert default.base_url == "https://gitlab.com/api/v4"


async def test_create_pipeline_with_variables_and_inputs(gl: FakeGitLab) -> None:
    gl.add_project(PROJECT)
    created = await gl.provider.trigger(gl.client, PROJECT, "main", {"environment": "staging"}, {"DEPLOY": "1"})
    assert created["ref"] == "main" and created["source"] == "api"
    assert await gl.provider.trigger(gl.client, PROJECT, "dev", {})
    assert posts(gl) == [
        (
            "POST",
            "/api/v4/projects/acme%2Fplatform%2Fapi/pipeline",
            {"ref": "main", "variables": [{"key": "DEPLOY", "value": "1"}], "inputs": {"environment": "staging"}},
        ),
        ("POST", "/api/v4/projects/acme%2Fplatform%2Fapi/pipeline", {"ref": "dev"}),
    ]


async def test_retry_and_cancel(gl: FakeGitLab) -> None:
    failed = gl.add_pipeline(PROJECT, status="running")
    gl.add_job(failed["id"], "rspec", status="failed")
    gl.set_pipeline_status(failed["id"], "failed")
    running = gl.add_pipeline(PROJECT, status="running")
    row = {"pipeline": PROJECT, "run_id": str(failed["id"]), "attempt": 1}
    retried = await gl.provider.rerun(gl.client, row, failed_only=True)
    assert retried["status"] == "pending"
    cancelled = await gl.provider.cancel(gl.client, {**row, "run_id": str(running["id"])}, force=True)
    assert cancelled["status"] == "canceled"
    assert posts(gl) == [
        ("POST", f"/api/v4/projects/acme%2Fplatform%2Fapi/pipelines/{failed['id']}/retry", None),
        ("POST", f"/api/v4/projects/acme%2Fplatform%2Fapi/pipelines/{running['id']}/cancel", None),
    ]


async def test_operation_errors(gl: FakeGitLab) -> None:
    done = gl.add_pipeline(PROJECT, status="success")
    row = {"pipeline": PROJECT, "run_id": str(done["id"]), "attempt": 1}
    with pytest.raises(ProviderError) as caught:  # GitLab answers 200: the pipeline is as it was
        await gl.provider.cancel(gl.client, row, force=False)
    assert caught.value.status == 409
    assert str(caught.value) == (
        f"gitlab: pipeline {done['id']} of {PROJECT} cannot be cancelled: it has already finished (success)"
    )
    with pytest.raises(ProviderError) as caught:
        await gl.provider.rerun(gl.client, {**row, "run_id": "1"}, failed_only=True)
    assert caught.value.status == 404 and "was not found" in str(caught.value)
    gl.fail_next(1, 403, {"message": "403 Forbidden"})
    with pytest.raises(ProviderError) as caught:
        await gl.provider.trigger(gl.client, PROJECT, "main", {})
    assert caught.value.status == 403 and "Developer role" in str(caught.value)
    with pytest.raises(ProviderError) as caught:
        await gl.provider.trigger(gl.client, "acme/missing", "main", {})
    assert caught.value.status == 404
