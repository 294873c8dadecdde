"""The Tekton plugin's pure half on payloads Tekton publishes (tests/fixtures/tekton): the sink's Basic
authorization, the Succeeded condition's reasons, pipelines, branches, the keys that make a CloudEvent
and a poll of the same state one event; and the helpers of the remote half."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from flowforged.errors import WebhookRejected
from flowforged.model import Status
from flowforged.store.ingest import event_key
from flowforged.testkit import provider_problems
from flowforged_plugins.tekton import (
    TektonProvider,
    TektonSourceConfig,
    basic_credentials,
    pipeline_name,
    remote,
    run_status,
)
from tests.fakes.tekton_api import FakeTekton

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tekton"
SECRET = "s3cret:with/odd%chars"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def provider(**config: Any) -> TektonProvider:
    return TektonProvider(
        "tekton", TektonSourceConfig.model_validate({"type": "tekton", "webhook_secret": SECRET, **config})
    )


def test_contract() -> None:
    assert provider_problems(TektonProvider, "tekton") == []


# --- the sink's authentication -------------------------------------------------------------------


def test_the_sink_url_s_user_information_authenticates_as_go_sends_it() -> None:
    tekton = provider()
    tekton.verify(CIMultiDict({"Authorization": basic_credentials("flowforge", SECRET)}), b"{}", 0)
    tekton.verify(CIMultiDict({"Authorization": basic_credentials("anyone", SECRET)}), b"{}", 0)  # user not checked
    refused = [
        {},
        {"Authorization": basic_credentials("flowforge", "wrong")},
        {"Authorization": basic_credentials("flowforge", SECRET + "x")},
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
    ]
    for headers in refused:
        with pytest.raises(WebhookRejected):
            tekton.verify(CIMultiDict(headers), b"{}", 0)


def test_delivery_id_and_event_name_are_the_cloudevent_s() -> None:
    tekton = provider()
    headers = CIMultiDict({"ce-id": "77f78ae7", "ce-type": "dev.tekton.event.taskrun.unknown.v1"})
    assert tekton.delivery_id(headers) == "77f78ae7"
    assert tekton.event_name(headers, {}) == "dev.tekton.event.taskrun.unknown.v1"
    assert "Authorization" not in TektonProvider.stored_headers


# --- statuses -------------------------------------------------------------------------------------


def condition(status: str, reason: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Succeeded", "status": status, "reason": reason}]}}


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        ("Unknown", "Started", Status.PENDING),
        ("Unknown", "PipelineRunPending", Status.PENDING),
        ("Unknown", "Pending", Status.PENDING),  # a TaskRun's pod being scheduled (docs/events.md)
        ("Unknown", "ResolvingPipelineRef", Status.PENDING),
        ("Unknown", "Running", Status.RUNNING),
        ("Unknown", "Cancelled", Status.RUNNING),  # asked, not yet done
        ("Unknown", "CancelledRunningFinally", Status.RUNNING),
        ("Unknown", "StoppedRunningFinally", Status.RUNNING),
        ("Unknown", "ToBeRetried", Status.RUNNING),
        ("True", "Succeeded", Status.SUCCESS),
        ("True", "Completed", Status.SUCCESS),  # some tasks were skipped
        ("False", "Failed", Status.FAILED),
        ("False", "PipelineRunTimeout", Status.FAILED),
        ("False", "TaskRunTimeout", Status.FAILED),
        ("False", "CreateRunFailed", Status.FAILED),
        ("False", "PipelineValidationFailed", Status.FAILED),
        ("False", "Cancelled", Status.CANCELLED),  # however asked: Cancelled, CancelledRunFinally, StoppedRunFinally
        ("False", "TaskRunCancelled", Status.CANCELLED),
        ("False", "FailureIgnored", Status.SUCCESS),  # onError: continue
    ],
)
def test_the_succeeded_condition_s_reason_decides_the_status(status: str, reason: str, expected: Status) -> None:
    assert run_status(condition(status, reason)) == (expected, reason)


def test_a_run_without_a_condition_is_queued() -> None:
    assert run_status({"status": {}}) == (Status.PENDING, "Queued")


# --- real payloads --------------------------------------------------------------------------------


def test_a_failed_pipelinerun_of_the_dashboard_s_examples() -> None:
    [event] = provider().normalize(remote.PIPELINERUN_EVENT, {"pipelineRun": load("dashboard.pipelinerun.failed.json")})
    assert (event.pipeline, event.run_id, event.status, event.provider_status) == (
        "default/demo-pipeline",
        "default/demo-pipeline-run-6",
        Status.FAILED,
        "Failed",
    )
    assert (event.created_at, event.started_at, event.finished_at) == (
        "2019-09-06T13:50:58Z",
        "2019-09-06T13:50:58Z",
        "2019-09-06T13:53:50Z",
    )
    assert event.updated_at == "2019-09-06T13:53:50Z" and event.branch is None and event.url is None


def test_the_taskrun_of_the_events_documentation_is_a_job_only_inside_a_pipelinerun() -> None:
    body = load("cloudevent.taskrun.unknown.json")
    tekton = provider(dashboard_url="https://tekton.example.com/")
    assert tekton.normalize("dev.tekton.event.taskrun.unknown.v1", body) == []  # a TaskRun run on its own
    inside = copy.deepcopy(body)
    inside["taskRun"]["metadata"]["labels"].update(
        {"tekton.dev/pipelineRun": "curl-pr-x1", "tekton.dev/pipeline": "fetch"}
    )
    [job] = tekton.normalize("dev.tekton.event.taskrun.unknown.v1", inside)
    assert (job.run_id, job.job_id, job.name, job.pipeline) == (
        "default/curl-pr-x1",
        "default/curl-run-6gplk",
        "curl",
        "default/fetch",
    )
    assert (job.status, job.provider_status, job.updated_at) == (Status.PENDING, "Pending", "2021-01-29T14:47:58Z")
    assert job.url == "https://tekton.example.com/#/namespaces/default/taskruns/curl-run-6gplk"


def test_a_cloudevent_and_a_poll_of_the_same_state_are_one_event() -> None:
    fake = FakeTekton()
    run = fake.add_run("ci", "build-web", params={"revision": "main"}, state="Failed")
    headers, body = fake.cloud_event("PipelineRun", run)
    tekton = provider()
    payload = tekton.decode(CIMultiDict(headers), body)
    assert payload["pipelineRun"]["apiVersion"] == "tekton.dev/v1beta1"
    [told] = tekton.normalize(headers["Ce-Type"], payload)
    [polled] = tekton.normalize(remote.PIPELINERUN_EVENT, {"pipelineRun": run})
    assert headers["Ce-Type"] == "dev.tekton.event.pipelinerun.failed.v1"
    assert event_key(told) == event_key(polled) and told == polled


# --- pipelines and branches -----------------------------------------------------------------------


def test_branch_and_sha_from_a_parameter_or_a_label() -> None:
    run = FakeTekton().add_run("ci", "build", params={"revision": "refs/heads/feature/x", "commit": "ab" * 20})
    [event] = provider(sha_param="commit").normalize(remote.PIPELINERUN_EVENT, {"pipelineRun": run})
    assert (event.branch, event.sha) == ("feature/x", "ab" * 20)
    run["spec"]["params"] = [{"name": "revision", "value": "cd" * 20}]  # a commit, not a branch
    [event] = provider().normalize(remote.PIPELINERUN_EVENT, {"pipelineRun": run})
    assert (event.branch, event.sha) == (None, "cd" * 20)
    run["spec"]["params"] = []
    run["metadata"]["annotations"] = {"pipelinesascode.tekton.dev/branch": "main"}
    tekton = provider(branch_param=None, branch_label="pipelinesascode.tekton.dev/branch")
    [event] = tekton.normalize(remote.PIPELINERUN_EVENT, {"pipelineRun": run})
    assert event.branch == "main"


def test_an_embedded_pipeline_spec_is_named_by_its_generate_name() -> None:
    run = {
        "metadata": {
            "name": "guarded-pr-7x2kq",
            "generateName": "guarded-pr-",
            "labels": {"tekton.dev/pipeline": "guarded-pr-7x2kq"},
        },
        "spec": {"pipelineSpec": {}},
    }
    assert pipeline_name(run) == "guarded-pr"
    run["metadata"]["labels"]["tekton.dev/pipeline"] = "release"
    assert pipeline_name(run) == "release"


# --- configuration --------------------------------------------------------------------------------


def test_polling_needs_a_token_or_the_pod_s_service_account(tmp_path: Path) -> None:
    outside = TektonSourceConfig.model_validate(
        {
            "type": "tekton",
            "webhook_secret": "x",
            "repos": ["ci"],
            "poll_interval": 60,
            "service_account_dir": str(tmp_path),
        }
    )
    assert [key for key, _ in outside.problems()] == ["token"]
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    inside = TektonSourceConfig.model_validate(
        {
            "type": "tekton",
            "webhook_secret": "x",
            "repos": ["ci"],
            "poll_interval": 60,
            "service_account_dir": str(tmp_path),
        }
    )
    assert inside.problems() == [] and inside.token_file == str(tmp_path / "token")
    assert inside.ca_bundle == str(tmp_path / "ca.crt")  # the pod's CA for the API server
    bad = TektonSourceConfig.model_validate({"type": "tekton", "webhook_secret": "x", "repos": ["CI/Build"]})
    assert [key for key, _ in bad.problems()] == ["repos"]


def test_targets_drop_pipelines_of_namespaces_polled_whole() -> None:
    assert remote.targets(["ci/build", "ci", "apps/deploy", "apps/deploy"]) == ["ci", "apps/deploy"]


# --- re-run ---------------------------------------------------------------------------------------


def test_a_rerun_copies_the_spec_without_the_status_or_what_others_wrote() -> None:
    old = load("dashboard.pipelinerun.failed.json")
    old["metadata"]["labels"]["team"] = "web"
    old["metadata"]["annotations"]["chains.tekton.dev/signed"] = "true"
    old["spec"]["status"] = "Cancelled"
    body = remote.rerun_body(old)
    assert body["metadata"] == {"generateName": "demo-pipeline-run-6-", "labels": {"team": "web"}}
    assert body["spec"] == {k: v for k, v in old["spec"].items() if k != "status"}
    assert "status" not in body and body["apiVersion"] == "tekton.dev/v1"
