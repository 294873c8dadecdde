"""An option a provider cannot honour is refused with 422 naming it, before anything reaches the
provider; one it can honour reaches the provider's API. The real daemon, its real provider operations,
and the fake provider APIs (tests/fakes/), one world per provider."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flowforged import app as app_module
from flowforged import plugin
from flowforged.poller import POLLER
from tests import test_buildkite_world as buildkite_world
from tests import test_jenkins_world as jenkins_world
from tests.api.client import start
from tests.conftest import API_TOKEN, base_config, make_config
from tests.test_notify import until
from tests.test_poller import CI, REPO, completed, gitlab_source
from tests.test_world import start_daemon

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def _post(client: Any, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post(f"/api/v1{path}", headers=AUTH, json=body)
    return response.status, await response.json()


async def _only(client: Any, kind: str) -> dict[str, Any]:
    [item] = (await (await client.get(f"/api/v1/{kind}", headers=AUTH)).json())[kind]
    return item


async def _refused(client: Any, fake: Any, path: str, body: dict[str, Any], option: str) -> None:
    fake.requests.clear()
    status, answer = await _post(client, path, body)
    assert (status, answer["error"]["code"]) == (422, "not_supported"), answer
    assert answer["error"]["message"].startswith(f"{option}: ")
    assert fake.requests == []  # refused here, not sent for the provider to ignore


async def test_github_has_no_variables(aiohttp_client, aiohttp_server, db_path, github):
    github.add_repo(REPO)
    github.add_workflow(REPO, CI)
    failed = completed(github, "main", "failure", created=600, jobs=True)
    client, _ = await start_daemon(aiohttp_client, aiohttp_server, db_path, github)
    await _wait_cycle(client, "github")
    pipeline, run = await _only(client, "pipelines"), await _only(client, "runs")
    trigger = f"/pipelines/{pipeline['id']}/trigger"
    await _refused(client, github, trigger, {"ref": "main", "variables": {"DEPLOY": "1"}}, "variables")
    github.requests.clear()
    assert (await _post(client, f"/runs/{run['id']}/rerun", {"failed_only": False}))[0] == 202
    posts = [r.path for r in github.requests if r.method == "POST"]
    assert posts == [f"/repos/{REPO}/actions/runs/{failed['id']}/rerun"]


async def test_gitlab_retries_failed_jobs_only_and_has_no_forced_cancel(aiohttp_client, gitlab, db_path):
    project = "acme/app"
    gitlab.add_project(project)
    failed = gitlab.add_pipeline(project, ref="main", status="running")
    gitlab.add_job(failed["id"], "rspec", status="failed")
    gitlab.set_pipeline_status(failed["id"], "failed")
    data = base_config(db_path, sources={"gitlab": gitlab_source(gitlab.server, [project])})
    client = await aiohttp_client(app_module.build(make_config(data)))
    await _wait_cycle(client, "gitlab")
    pipeline, run = await _only(client, "pipelines"), await _only(client, "runs")

    await _refused(client, gitlab, f"/runs/{run['id']}/cancel", {"force": True}, "force")
    await _refused(client, gitlab, f"/runs/{run['id']}/rerun", {"failed_only": False}, "failed_only")
    for body in ({}, {"failed_only": True}):  # GitLab's retry: the failed and cancelled jobs
        gitlab.requests.clear()
        assert (await _post(client, f"/runs/{run['id']}/rerun", body))[0] == 202
        assert [r.path for r in gitlab.requests if r.method == "POST"] == [
            f"/api/v4/projects/acme%2Fapp/pipelines/{failed['id']}/retry"
        ]
    body = {"ref": "main", "inputs": {"env": "prod"}, "variables": {"DEPLOY": "1"}}
    assert (await _post(client, f"/pipelines/{pipeline['id']}/trigger", body))[0] == 202
    assert gitlab.triggered[-1] == {
        "project": project,
        "ref": "main",
        "variables": [{"key": "DEPLOY", "value": "1"}],
        "inputs": {"env": "prod"},
    }


async def test_buildkite_has_no_forced_cancel_and_takes_variables_as_env(aiohttp_client, aiohttp_server, db_path):
    fake = await buildkite_world.fake_buildkite(aiohttp_server)
    fake.add_build("acme/web", state="running", created_at=buildkite_world.ago(600))
    client, _ = await buildkite_world.start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    pipeline, run = await _only(client, "pipelines"), await _only(client, "runs")
    await _refused(client, fake, f"/runs/{run['id']}/cancel", {"force": True}, "force")
    fake.requests.clear()
    body = {"ref": "main", "inputs": {"message": "Deploy"}, "variables": {"DEPLOY_ENV": "staging"}}
    assert (await _post(client, f"/pipelines/{pipeline['id']}/trigger", body))[0] == 202
    [sent] = [r.json for r in fake.requests if r.method == "POST"]
    assert (sent["message"], sent["env"]) == ("Deploy", {"DEPLOY_ENV": "staging"})


async def test_jenkins_has_parameters_but_no_variables_and_no_failed_only(aiohttp_client, aiohttp_server, db_path):
    fake = await jenkins_world.fake_jenkins(aiohttp_server)
    fake.add_job("platform/api", parameters={"BRANCH": "main"})
    fake.add_build("platform/api", result="FAILURE", started=time.time() - 600, duration=60)
    client, _ = await jenkins_world.start(aiohttp_client, aiohttp_server, db_path, fake, ["platform/api"])
    pipeline, run = await _only(client, "pipelines"), await _only(client, "runs")
    trigger = f"/pipelines/{pipeline['id']}/trigger"
    await _refused(client, fake, trigger, {"ref": "main", "variables": {"BRANCH": "dev"}}, "variables")
    await _refused(client, fake, f"/runs/{run['id']}/rerun", {"failed_only": True}, "failed_only")


async def test_sources_show_what_their_provider_can_do(aiohttp_client, db_path):
    api = await start(aiohttp_client, db_path)
    sources = {s["name"]: s["capabilities"] for s in (await api.get("/sources")).body["sources"]}
    assert sources["github"]["force_cancel"] and not sources["github"]["variables"]
    assert sources["gitlab"]["rerun_failed"] and not sources["gitlab"]["rerun"]
    assert not sources["gitlab"]["force_cancel"]


@pytest.mark.parametrize(
    ("provider", "action", "options", "refused"),
    [
        ("github", "trigger", {"inputs": {"a": 1}, "variables": {}}, None),
        ("github", "trigger", {"inputs": {}, "variables": {"A": "1"}}, "variables"),
        ("github", "rerun", {"failed_only": True}, None),
        ("github", "cancel", {"force": True}, None),
        ("gitlab", "trigger", {"inputs": {"a": 1}, "variables": {"A": "1"}}, None),
        ("gitlab", "rerun", {"failed_only": None}, None),
        ("gitlab", "rerun", {"failed_only": False}, "failed_only"),
        ("gitlab", "cancel", {"force": True}, "force"),
        ("buildkite", "rerun", {"failed_only": True}, None),
        ("buildkite", "rerun", {"failed_only": False}, None),
        ("buildkite", "cancel", {"force": True}, "force"),
        ("jenkins", "trigger", {"inputs": {}, "variables": {"A": "1"}}, "variables"),
        ("jenkins", "rerun", {"failed_only": True}, "failed_only"),
        ("jenkins", "cancel", {"force": True}, None),
    ],
)
def test_each_provider_declares_what_it_can_honour(provider, action, options, refused):
    capabilities = plugin.providers()[provider].capabilities
    refusal = capabilities.refusal(provider, action, options)
    assert (refusal[0] if refusal else None) == refused


async def _wait_cycle(client: Any, source: str) -> None:
    await until(lambda: client.app[POLLER].last_cycle(source) is not None)


@pytest.mark.parametrize(("action", "options"), [("trigger", {}), ("rerun", {}), ("cancel", {"force": False})])
def test_a_provider_without_an_api_refuses_each_operation_by_name(action, options):
    assert plugin.Capabilities().refusal("webhooks-only", action, options)[0] == action
