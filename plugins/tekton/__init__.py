"""Tekton Pipelines: CloudEvents from the Tekton controller, and PipelineRuns read from the Kubernetes API.

This module is the pure half; `remote` holds the remote half (polling PipelineRuns and the TaskRuns of
failed ones, create a PipelineRun, re-run one as a new PipelineRun, cancel), which TektonProvider
delegates to.

Tekton sends CloudEvents to the sink set in the `config-events` ConfigMap (`sink`; the older
`default-cloud-events-sink` of `config-defaults` is deprecated but still read) in binary mode: the
context attributes are `Ce-Id`, `Ce-Type`, `Ce-Source`, `Ce-Subject`, `Ce-Time` headers and the body is
`{"pipelineRun": {...}}` or `{"taskRun": {...}}`, the whole resource converted to tekton.dev/v1beta1
(https://github.com/tektoncd/pipeline/blob/main/docs/events.md, pkg/reconciler/events/cloudevent).
The controller cannot add a header or sign a body, but it sends with Go's net/http, which turns the
user information of the sink's URL into Basic authorization: the sink
`https://flowforge:<webhook_secret>@flowforge.example.com/hooks/tekton` authenticates (the user name
is not checked).

Polled resources are ingested under `api:pipelinerun` and `api:taskrun` with the CloudEvent's body
shape, so that a webhook and a poll of the same state give the same event. A pipeline is
`{namespace}/{pipeline}`; a run's id is `{namespace}/{PipelineRun name}`, what `kubectl` and `tkn`
name it by. A re-run is a new PipelineRun, so a new run.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import pydantic

from flowforged.config import SourceConfig
from flowforged.credentials import Auth, FileToken, bearer
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged.signatures import same_secret
from flowforged_plugins.tekton import remote

# https://github.com/tektoncd/pipeline/blob/main/docs/pipelineruns.md#monitoring-execution-status and
# pkg/apis/pipeline/v1/{pipelinerun,taskrun}_types.go: the reasons of the `Succeeded` condition.
_CANCELLED = frozenset({"Cancelled", "PipelineRunCancelled", "TaskRunCancelled"})
# Unknown with these reasons: picked up but not executing yet (Pending is a TaskRun's pod being scheduled).
_WAITING = frozenset(
    {"Started", "Pending", "PipelineRunPending", "TaskRunPending", "ResolvingPipelineRef", "ResolvingTaskRef"}
)
# A TaskRun whose failure its PipelineTask ignores (onError: continue) did not fail its PipelineRun.
_IGNORED = "FailureIgnored"
QUEUED = "Queued"  # no condition yet: created, not yet picked up (the `queued` CloudEvent)
PIPELINE_LABEL = "tekton.dev/pipeline"
PIPELINE_RUN_LABEL = "tekton.dev/pipelineRun"
PIPELINE_TASK_LABEL = "tekton.dev/pipelineTask"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
CE_PREFIX = "dev.tekton.event."


def succeeded(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `Succeeded` condition of a PipelineRun or TaskRun; None before the controller sets one."""
    for condition in (resource.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Succeeded":
            return condition
    return None


def run_status(resource: Mapping[str, Any]) -> tuple[Status, str]:
    """A PipelineRun's or TaskRun's normalized status and its condition's reason. A timed-out run
    (PipelineRunTimeout, TaskRunTimeout) is failed; a cancelled one, whichever way it was asked
    (Cancelled, CancelledRunFinally, StoppedRunFinally all end with the reason Cancelled), cancelled."""
    condition = succeeded(resource)
    if condition is None:
        return Status.PENDING, QUEUED
    reason = condition.get("reason") or condition.get("status") or "Unknown"
    state = condition.get("status")
    if state == "True":
        return Status.SUCCESS, reason
    if state == "False":
        if reason in _CANCELLED:
            return Status.CANCELLED, reason
        return (Status.SUCCESS if reason == _IGNORED else Status.FAILED), reason
    # Unknown: still going (Running, and the finally phase of a stopped or cancelled run)
    return (Status.PENDING if reason in _WAITING else Status.RUNNING), reason


def _updated(resource: Mapping[str, Any], status: Status) -> str:
    """When the resource last changed state: the condition's last transition (the same in a
    CloudEvent and in the API), else its creation."""
    status_block = resource.get("status") or {}
    condition = succeeded(resource) or {}
    moment = status_block.get("completionTime") if status.terminal else None
    moment = moment or condition.get("lastTransitionTime") or status_block.get("startTime")
    return parse_time(moment or (resource.get("metadata") or {}).get("creationTimestamp")) or ""


def pipeline_name(run: Mapping[str, Any]) -> str:
    """The Pipeline a PipelineRun runs: its pipelineRef, else Tekton's `tekton.dev/pipeline` label. A
    PipelineRun with an embedded pipelineSpec is labelled with its own name: its generateName stands
    for the pipeline then, so that its runs are one pipeline."""
    meta = run.get("metadata") or {}
    ref = ((run.get("spec") or {}).get("pipelineRef") or {}).get("name")
    if ref:
        return str(ref)
    label = (meta.get("labels") or {}).get(PIPELINE_LABEL)
    if label and label != meta.get("name"):
        return str(label)
    return str(meta.get("generateName") or "").rstrip("-") or str(label or meta["name"])


def _params(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        p["name"]: p.get("value")
        for p in (run.get("spec") or {}).get("params") or []
        if isinstance(p, dict) and p.get("name")
    }


def _branch_ref(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    for prefix in ("refs/heads/", "refs/tags/"):
        if value.startswith(prefix):
            return value[len(prefix) :] or None
    return value


class TektonSourceConfig(SourceConfig):
    repos_hint = "the namespaces to poll (namespace, or namespace/pipeline)"
    # Where the branch of a run is read: a parameter of the PipelineRun (the git-clone Task's
    # `revision`), else a label or annotation (Pipelines-as-Code: pipelinesascode.tekton.dev/branch).
    # A parameter value that is a commit SHA is the run's sha, not its branch.
    branch_param: str | None = "revision"
    branch_label: str | None = None
    sha_param: str | None = None
    # The Tekton Dashboard, for links in notifications (https://tekton.example.com).
    dashboard_url: str | None = None
    # Without `token`: the pod's service account (its token re-read when the kubelet rotates it, its
    # CA for the API server's certificate), https://kubernetes.io/docs/tasks/run-application/access-api-from-pod/
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    # client-go's default: 5 requests a second (k8s.io/client-go/rest DefaultQPS); the API server's
    # Priority and Fairness answers 429 with Retry-After beyond what it lets this user do.
    max_rps: float | None = pydantic.Field(default=5.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _in_cluster_ca(self) -> TektonSourceConfig:
        ca = f"{self.service_account_dir}/ca.crt"
        if self.token is None and self.ca_bundle is None and self.api_url is None and _readable(ca):
            self.ca_bundle = ca
        return self

    @property
    def token_file(self) -> str | None:
        """The service account's token file, when no `token` is given and the file is there."""
        path = f"{self.service_account_dir}/token"
        return path if self.token is None and _readable(path) else None

    def polling_problems(self) -> list[tuple[str, str]]:
        # The pod's own service account stands in for a token.
        found = [(key, message) for key, message in super().polling_problems() if key != "token"]
        if self.poll_interval > 0 and self.token is None and self.token_file is None:
            found.append(
                (
                    "token",
                    f"missing: polling needs an API token, or a service account token in {self.service_account_dir}",
                )
            )
        return found

    def check_repos(self) -> None:
        remote.parse_repos(self.repos)


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


def normalize_pipelinerun(source: str, config: TektonSourceConfig, run: Mapping[str, Any]) -> RunEvent:
    """A PipelineRun (v1 from the API, v1beta1 from a CloudEvent: the fields read are the same)."""
    meta = run["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status, reason = run_status(run)
    params = _params(run)
    tags = {**(meta.get("annotations") or {}), **(meta.get("labels") or {})}
    found = params.get(config.branch_param) if config.branch_param else None
    if found is None and config.branch_label:
        found = tags.get(config.branch_label)
    branch = _branch_ref(found)
    sha = params.get(config.sha_param) if config.sha_param else None
    if branch is not None and _SHA.fullmatch(branch):
        branch, sha = None, sha or branch
    pipeline = f"{namespace}/{pipeline_name(run)}"
    times = run.get("status") or {}
    return RunEvent(
        source=source,
        pipeline=pipeline,
        pipeline_name=pipeline,
        run_id=f"{namespace}/{name}",
        attempt=1,
        status=status,
        provider_status=reason,
        updated_at=_updated(run, status),
        branch=branch,
        sha=sha if isinstance(sha, str) and sha else None,
        url=dashboard_link(config, namespace, "pipelineruns", name),
        created_at=parse_time(meta.get("creationTimestamp")),
        started_at=parse_time(times.get("startTime")),
        finished_at=parse_time(times.get("completionTime")) if status.terminal else None,
    )


def normalize_taskrun(source: str, config: TektonSourceConfig, task_run: Mapping[str, Any]) -> JobEvent | None:
    """A TaskRun of a PipelineRun, as a job of its run; None for a TaskRun run on its own."""
    meta = task_run["metadata"]
    labels = meta.get("labels") or {}
    owner = labels.get(PIPELINE_RUN_LABEL)
    if not owner:
        return None
    namespace = meta["namespace"]
    status, reason = run_status(task_run)
    ref = ((task_run.get("spec") or {}).get("taskRef") or {}).get("name")
    times = task_run.get("status") or {}
    return JobEvent(
        source=source,
        run_id=f"{namespace}/{owner}",
        attempt=1,
        job_id=f"{namespace}/{meta['name']}",
        name=labels.get(PIPELINE_TASK_LABEL) or ref or meta["name"],
        status=status,
        provider_status=reason,
        updated_at=_updated(task_run, status),
        pipeline=f"{namespace}/{labels[PIPELINE_LABEL]}" if labels.get(PIPELINE_LABEL) else None,
        url=dashboard_link(config, namespace, "taskruns", meta["name"]),
        started_at=parse_time(times.get("startTime")),
        finished_at=parse_time(times.get("completionTime")) if status.terminal else None,
    )


def dashboard_link(config: TektonSourceConfig, namespace: str, kind: str, name: str) -> str | None:
    """The Tekton Dashboard's page of a run (its routes: /#/namespaces/{ns}/pipelineruns/{name})."""
    if not config.dashboard_url:
        return None
    return f"{config.dashboard_url.rstrip('/')}/#/namespaces/{namespace}/{kind}/{name}"


# A pipelinerun.failed.v1 CloudEvent's body, cut to what normalize() reads (docs/events.md).
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "pipelineRun": {
        "apiVersion": "tekton.dev/v1beta1",
        "kind": "PipelineRun",
        "metadata": {
            "name": "build-web-7xk2p",
            "generateName": "build-web-",
            "namespace": "ci",
            "creationTimestamp": "2026-01-05T10:00:00Z",
            "labels": {PIPELINE_LABEL: "build-web"},
        },
        "spec": {"pipelineRef": {"name": "build-web"}, "params": [{"name": "revision", "value": "main"}]},
        "status": {
            "startTime": "2026-01-05T10:00:01Z",
            "completionTime": "2026-01-05T10:04:00Z",
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "False",
                    "reason": "Failed",
                    "message": "Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 0",
                    "lastTransitionTime": "2026-01-05T10:04:00Z",
                }
            ],
            "childReferences": [
                {
                    "apiVersion": "tekton.dev/v1",
                    "kind": "TaskRun",
                    "name": "build-web-7xk2p-test",
                    "pipelineTaskName": "test",
                }
            ],
        },
    }
}


def basic_credentials(user: str, password: str) -> str:
    """What Go's net/http sends for a URL's user information (RFC 7617)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TektonProvider(Provider):
    type = "tekton"
    capabilities = Capabilities(trigger=True, inputs=True, rerun=True, cancel=True)
    remote = remote.REMOTE
    config_model = TektonSourceConfig
    # Never Authorization: it carries the secret.
    stored_headers = ("Ce-Id", "Ce-Type", "Ce-Source", "Ce-Subject", "Ce-Time", "Ce-Specversion", "Content-Type")

    config: TektonSourceConfig

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            raise WebhookRejected("no Basic authorization was sent (put flowforge:<secret>@ in the sink's URL)")
        try:
            _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise WebhookRejected("the Basic authorization cannot be decoded") from None
        # Go decodes the URL's percent-encoding before it encodes the password: it arrives as the secret.
        if not same_secret(password, secret.get()):
            raise WebhookRejected("the password of the Basic authorization does not match")

    def delivery_id(self, headers: Headers) -> str | None:
        # A new UUID per event; a retry of the same send keeps it (cloudevents sdk-go WithUUIDs).
        return headers.get("Ce-Id")

    def event_name(self, headers: Headers, payload: Any) -> str:
        return headers.get("Ce-Type") or "unknown"

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event == remote.PIPELINERUN_EVENT or event.startswith(CE_PREFIX + "pipelinerun."):
            return [normalize_pipelinerun(self.name, self.config, payload["pipelineRun"])]
        if event == remote.TASKRUN_EVENT or event.startswith(CE_PREFIX + "taskrun."):
            job = normalize_taskrun(self.name, self.config, payload["taskRun"])
            return [job] if job is not None else []
        return []  # customrun.*: a custom task's run, no job FlowForge can name

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "tekton", "webhook_secret": "example-secret"},
            event="dev.tekton.event.pipelinerun.failed.v1",
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                "Ce-Id": "77f78ae7-ff6d-4e39-9d05-b9a0b7850527",
                "Ce-Type": "dev.tekton.event.pipelinerun.failed.v1",
                "Ce-Specversion": "1.0",
                "Authorization": basic_credentials("flowforge", config["webhook_secret"]),
            },
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
    def auth(self, session: Any) -> Auth:
        if self.config.token is not None:
            return bearer(self.config.token.get())
        if self.config.token_file is not None:
            return FileToken(self.config.token_file)
        raise NotImplementedError(f"source {self.name} has no token and runs outside a pod")

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        return remote.targets(self.config.repos)

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        await remote.poll_target(self, client, ctx, target)

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        return await remote.trigger(self, client, pipeline, ref, inputs)

    async def rerun(
        self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool | None
    ) -> dict[str, Any] | None:
        return await remote.rerun(self, client, run)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self, client, run)
