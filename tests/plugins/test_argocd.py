"""The Argo CD provider's pure half on a real Application (tests/fixtures/argocd/) and on the body of
the README's Notifications template."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict

from flowforged.errors import WebhookRejected
from flowforged.model import JobEvent, RunEvent, Status
from flowforged.testkit import provider_problems
from flowforged_plugins.argocd import ArgoCDProvider, ArgoCDSourceConfig, remote
from tests.fakes.argocd_api import TEMPLATE, render

FIXTURES = Path(__file__).parent.parent / "fixtures" / "argocd"
README = Path(__file__).parent.parent.parent / "README.md"
WEB = "https://argocd.example.com"


def application() -> dict[str, Any]:
    """argoproj/argo-cd controller/testdata/diff-cache.yaml: a Succeeded sync and its history."""
    return yaml.safe_load((FIXTURES / "application.succeeded.yaml").read_text())


def provider(**config: Any) -> ArgoCDProvider:
    values = {"type": "argocd", "webhook_secret": "s3cret", "api_url": WEB, **config}
    return ArgoCDProvider("argocd", ArgoCDSourceConfig.model_validate(values))


def webhook(app: dict[str, Any]) -> Any:
    """What the webhook service sends for this application: the template, rendered."""
    return json.loads(render(app))


def test_the_provider_passes_the_contract() -> None:
    assert provider_problems(ArgoCDProvider, "argocd") == []


def test_a_real_succeeded_sync_is_a_run_named_by_its_start() -> None:
    [run] = provider().normalize("application", webhook(application()))
    assert isinstance(run, RunEvent)
    assert (run.pipeline, run.pipeline_name, run.branch, run.default_branch) == (
        "sre/velero-test",
        "velero-test",
        "test-lla",
        "test-lla",
    )
    assert run.run_id == "argo-cd/velero-test@2024-03-05T07:33:03Z"
    assert (run.status, run.provider_status, run.number) == (Status.SUCCESS, "Succeeded", 23)  # its history id
    assert (run.started_at, run.finished_at, run.updated_at) == (
        "2024-03-05T07:33:03Z",
        "2024-03-05T07:33:04Z",
        "2024-03-05T07:33:04Z",
    )
    assert run.sha == "ea8759964626a583667a2bfd08f334ec2070040a"
    assert (run.author, run.trigger) == ("foo@example.com", "user")
    assert run.repo == "https://github.com/foo/manifests-velero.git"
    assert run.url == f"{WEB}/applications/argo-cd/velero-test"


def test_a_webhook_a_polled_application_and_its_history_entry_give_one_run_id() -> None:
    app = application()
    argocd = provider()
    [told] = argocd.normalize("application", webhook(app))
    [polled] = argocd.normalize(remote.APP_EVENT, remote.cut(app))
    entry = app["status"]["history"][-1]
    [history] = argocd.normalize(remote.HISTORY_EVENT, {"application": remote.cut(app), "history": entry})
    assert told == polled
    assert history.run_id == told.run_id and history.number == told.number == 23
    assert (history.status, history.finished_at) == (Status.SUCCESS, "2024-03-05T07:33:04Z")  # deployedAt


def test_a_running_sync_has_no_history_id_yet_and_the_same_run_id() -> None:
    app = application()
    state = app["status"]["operationState"]
    state.update(phase="Running", message="one or more tasks are running")
    del state["finishedAt"], state["syncResult"]
    app["status"]["history"] = app["status"]["history"][:-1]  # recorded only once it has succeeded
    [run] = provider().normalize("application", webhook(app))
    assert (run.status, run.number, run.finished_at, run.updated_at) == (
        Status.RUNNING,
        None,
        None,
        "2024-03-05T07:33:03Z",
    )
    assert run.run_id == "argo-cd/velero-test@2024-03-05T07:33:03Z"
    assert run.sha == "ea8759964626a583667a2bfd08f334ec2070040a"  # operation.sync.revision
    state["phase"] = "Terminating"
    assert provider().normalize("application", webhook(app))[0].status is Status.RUNNING


def failed(app: dict[str, Any], resources: list[dict[str, Any]], message: str = "one or more objects failed") -> None:
    state = app["status"]["operationState"]
    state.update(phase="Failed", message=message)
    state["syncResult"]["resources"] += resources
    app["status"]["history"] = app["status"]["history"][:-1]


def test_a_failed_sync_names_the_resources_and_hooks_that_failed() -> None:
    app = application()
    failed(
        app,
        [
            {
                "group": "apps",
                "kind": "Deployment",
                "name": "web",
                "namespace": "test-lla",
                "status": "SyncFailed",
                "syncPhase": "Sync",
                "hookPhase": "Running",
                "message": "admission webhook denied",
            },
            {
                "group": "batch",
                "kind": "Job",
                "name": "migrate",
                "namespace": "test-lla",
                "status": "",
                "hookType": "PreSync",
                "hookPhase": "Failed",
                "syncPhase": "PreSync",
            },
            {
                "group": "batch",
                "kind": "Job",
                "name": "smoke",
                "namespace": "test-lla",
                "status": "",
                "hookType": "PostSync",
                "hookPhase": "Succeeded",
                "syncPhase": "PostSync",
            },
        ],
    )
    *jobs, run = provider().normalize("application", webhook(app))
    assert (run.status, run.provider_status, run.number) == (Status.FAILED, "Failed", None)
    # The fixture's Service and Deployment are Synced, with hookPhase Running as every non-hook
    # resource has it: not failures.
    assert [(j.name, j.stage, j.provider_status) for j in jobs] == [
        ("Deployment/web", "Sync", "SyncFailed"),
        ("Job/migrate", "PreSync", "Failed"),
    ]
    assert all(isinstance(j, JobEvent) and j.run_id == run.run_id and j.status is Status.FAILED for j in jobs)
    assert jobs[1].job_id == "PreSync/batch/Job/test-lla/migrate"


@pytest.mark.parametrize(
    ("phase", "message"), [("Failed", "Operation terminated"), ("Error", "Operation termination had errors")]
)
def test_a_terminated_sync_is_cancelled(phase: str, message: str) -> None:
    app = application()
    failed(app, [])
    app["status"]["operationState"].update(phase=phase, message=message)
    [run] = provider().normalize("application", webhook(app))
    assert (run.status, run.provider_status) == (Status.CANCELLED, "Terminated")


def test_an_error_is_a_failure() -> None:
    app = application()
    failed(app, [], message="ComparisonError: rpc error")
    app["status"]["operationState"]["phase"] = "Error"
    assert provider().normalize("application", webhook(app))[-1].status is Status.FAILED


def test_an_application_without_an_operation_tells_nothing() -> None:
    app = application()
    del app["status"]["operationState"]
    body = webhook(app)
    assert body["status"]["operationState"] is None  # toJson of a missing key
    assert provider().normalize("application", body) == []


def test_an_application_outside_the_control_planes_namespace_is_named_with_it() -> None:
    app = application()
    app["metadata"]["namespace"] = "team-web"
    [run] = provider().normalize("application", webhook(app))
    assert run.pipeline == "sre/team-web/velero-test" and run.run_id.startswith("team-web/velero-test@")
    assert remote.split_pipeline(run.pipeline) == ("sre", "team-web", "velero-test")
    assert remote.split_pipeline("sre/velero-test") == ("sre", None, "velero-test")


def test_a_multi_source_application_reads_its_first_source() -> None:
    app = application()
    app["spec"]["sources"] = [app["spec"].pop("source")]
    state = app["status"]["operationState"]
    state["syncResult"]["revisions"] = [state["syncResult"].pop("revision")]
    [run] = provider().normalize("application", webhook(app))
    assert (run.branch, run.sha) == ("test-lla", "ea8759964626a583667a2bfd08f334ec2070040a")


def test_the_token_header_is_checked_in_constant_time() -> None:
    argocd = provider()
    body = render(application())
    argocd.verify(CIMultiDict({"X-FlowForge-Token": "s3cret"}), body, 0)
    for headers in ({}, {"X-FlowForge-Token": "s3cre"}, {"Authorization": "Bearer s3cret"}):
        with pytest.raises(WebhookRejected):
            argocd.verify(CIMultiDict(headers), body, 0)
    assert argocd.delivery_id(CIMultiDict()) is None  # the body's hash stands in
    assert argocd.event_name(CIMultiDict(), {"metadata": {}}) == "application"
    assert argocd.event_name(CIMultiDict(), ["not", "an", "app"]) == "unknown"


def test_the_config_names_what_is_wrong() -> None:
    problems = ArgoCDSourceConfig.model_validate(
        {"type": "argocd", "webhook_secret": "x", "token": "t", "repos": ["Default Project"], "poll_interval": "1m"}
    ).problems()
    assert [key for key, _ in problems] == ["repos", "api_url"]
    good = ArgoCDSourceConfig.model_validate(
        {"type": "argocd", "webhook_secret": "x", "token": "t", "api_url": WEB, "repos": ["*"], "selector": "team=web"}
    )
    assert good.problems() == [] and remote.targets(["web", "*"]) == ["*"]


def test_the_readme_gives_the_template_the_fake_renders() -> None:
    readme = README.read_text()
    assert "template.flowforge-sync" in readme
    lines = [line.strip() for line in TEMPLATE.strip().splitlines()]
    shown = [line.strip() for line in readme.splitlines()]
    start = shown.index(lines[0], shown.index("template.flowforge-sync: |"))
    assert shown[start : start + len(lines)] == lines


def test_a_cut_application_keeps_only_what_a_run_is_read_from() -> None:
    app = application()
    cut = remote.cut(copy.deepcopy(app))
    assert set(cut["status"]) == {"operationState", "history", "controllerNamespace"}
    assert webhook(app) == json.loads(json.dumps(cut))  # the webhook sends the same parts
