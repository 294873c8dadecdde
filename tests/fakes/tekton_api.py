"""A fake Kubernetes API server holding Tekton PipelineRuns and TaskRuns, as an aiohttp app, following
Tekton's documentation (https://tekton.dev/docs/pipelines/pipelineruns/, docs/events.md) and the
Kubernetes API conventions (https://kubernetes.io/docs/reference/using-api/api-concepts/: lists in
name order cut by `limit` with a `continue` token, `labelSelector`, merge patches, `Status` errors,
429 with Retry-After from API Priority and Fairness); and the Tekton controller as a CloudEvents
sender (binary mode, Basic authorization from the sink URL's user information, as Go sends it).

    fake = FakeTekton(token="sa-token")
    run = fake.add_run("ci", "build-web", params={"revision": "main"})
    server = await aiohttp_server(fake.app)
    fake.set_state(run, "Failed", failed=("test",))
"""

from __future__ import annotations

import copy
import json
import random
import string
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from flowforged.fakeapi import Delivery, FakeProviderAPI, continue_offset, continue_token, int_param, json_body
from flowforged_plugins.tekton import basic_credentials

API = "/apis/tekton.dev/v1"
# The Succeeded condition's status for each reason the fake plays (docs/pipelineruns.md).
_CONDITION = {
    "Started": "Unknown",
    "Running": "Unknown",
    "PipelineRunPending": "Unknown",
    "Succeeded": "True",
    "Completed": "True",
    "Failed": "False",
    "Cancelled": "False",
    "PipelineRunTimeout": "False",
    "TaskRunCancelled": "False",
}
# What the TaskRuns of a run that did not fail on its own end with: cancelled, for a cancelled and a
# timed-out PipelineRun alike (TaskRunCancelledByPipelineTimeoutMsg, pkg/apis/pipeline/v1/taskrun_types.go).
_TASK_REASON = {"Cancelled": "TaskRunCancelled", "PipelineRunTimeout": "TaskRunCancelled"}


def k8s_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes `Status` (meta/v1), what every error answer carries."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def event_type(kind: str, resource: dict[str, Any]) -> str:
    """pkg/reconciler/events/cloudevent/cloudevent.go getEventType."""
    condition = next((c for c in resource.get("status", {}).get("conditions", []) if c["type"] == "Succeeded"), None)
    if condition is None:
        word = "queued"
    elif condition["status"] == "True":
        word = "successful"
    elif condition["status"] == "False":
        word = "failed"
    else:
        word = {"Started": "started", "Running": "running"}.get(condition.get("reason"), "unknown")
    return f"dev.tekton.event.{kind.lower()}.{word}.v1"


class FakeTekton(FakeProviderAPI):
    """PipelineRuns and TaskRuns in memory, served as the Kubernetes API serves tekton.dev/v1."""

    def __init__(self, token: str = "sa-token-fake", *, clock: Callable[[], float] = time.time) -> None:  # noqa: S107
        # The API server announces no budget: a large one the fake never runs out of by itself.
        super().__init__(token, rate_limit=1_000_000, window=3600, clock=clock)
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.task_runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.rng = random.Random(7)

    # --- the world ---

    def _name(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(5))

    def _meta(self, namespace: str, name: str, created: float, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(len(self.runs) + len(self.task_runs) + 1000),
            "generation": 1,
            "creationTimestamp": k8s_time(created),
            "labels": labels,
        }

    def add_run(
        self,
        namespace: str,
        pipeline: str,
        *,
        params: dict[str, Any] | None = None,
        created: float | None = None,
        state: str | None = None,
        failed: tuple[str, ...] = ("test",),
    ) -> dict[str, Any]:
        """A PipelineRun of `pipeline` made as `tkn pipeline start` makes one, moved on to `state`."""
        name = self._name(f"{pipeline}-run-")
        run = {
            "apiVersion": "tekton.dev/v1",
            "kind": "PipelineRun",
            "metadata": {
                **self._meta(namespace, name, created or self.clock(), {}),
                "generateName": f"{pipeline}-run-",
            },
            "spec": {
                "pipelineRef": {"name": pipeline},
                "params": [{"name": k, "value": v} for k, v in (params or {}).items()],
                "taskRunTemplate": {"serviceAccountName": "default"},
                "timeouts": {"pipeline": "1h0m0s"},
            },
            "status": {},
        }
        self.runs[(namespace, name)] = run
        if state is not None:
            self.set_state(run, state, failed=failed, at=created)
        return run

    def set_state(
        self,
        run: dict[str, Any],
        reason: str,
        *,
        failed: tuple[str, ...] = ("test",),
        tasks: tuple[str, ...] = ("build", "test"),
        at: float | None = None,
    ) -> dict[str, Any]:
        """Move a PipelineRun on as the controller does: its label, condition, times and TaskRuns."""
        now = k8s_time(at if at is not None else self.clock())
        meta, status = run["metadata"], run["status"]
        meta["labels"]["tekton.dev/pipeline"] = run["spec"]["pipelineRef"]["name"]
        state = _CONDITION[reason]
        status["startTime"] = status.get("startTime") or now
        done = state != "Unknown"
        count = len(failed) if reason == "Failed" else 0
        message = f"Tasks Completed: 2 (Failed: {count}, Cancelled 0), Skipped: 0"
        status["conditions"] = [
            {"type": "Succeeded", "status": state, "reason": reason, "message": message, "lastTransitionTime": now}
        ]
        if done:
            status["completionTime"] = now
        status["childReferences"] = []
        for task in tasks:
            task_reason = ("Failed" if task in failed else "Succeeded") if reason == "Failed" else reason
            task_reason = _TASK_REASON.get(task_reason, task_reason)
            task_run = self._task_run(run, task, task_reason if task_reason in _CONDITION else "Running", now)
            status["childReferences"].append(
                {
                    "apiVersion": "tekton.dev/v1",
                    "kind": "TaskRun",
                    "name": task_run["metadata"]["name"],
                    "pipelineTaskName": task,
                }
            )
        return run

    def _task_run(self, run: dict[str, Any], task: str, reason: str, now: str) -> dict[str, Any]:
        namespace, owner = run["metadata"]["namespace"], run["metadata"]["name"]
        name = f"{owner}-{task}"
        labels = {
            "tekton.dev/pipeline": run["spec"]["pipelineRef"]["name"],
            "tekton.dev/pipelineRun": owner,
            "tekton.dev/pipelineTask": task,
            "tekton.dev/task": task,
            "app.kubernetes.io/managed-by": "tekton-pipelines",
        }
        existing = self.task_runs.get((namespace, name))
        task_run = existing or {
            "apiVersion": "tekton.dev/v1",
            "kind": "TaskRun",
            "metadata": self._meta(namespace, name, self.clock(), labels),
            "spec": {"taskRef": {"kind": "Task", "name": task}, "serviceAccountName": "default"},
            "status": {"podName": f"{name}-pod", "startTime": now},
        }
        state = _CONDITION.get(reason, "Unknown")
        task_run["status"]["conditions"] = [
            {"type": "Succeeded", "status": state, "reason": reason, "lastTransitionTime": now}
        ]
        if state != "Unknown":
            task_run["status"]["completionTime"] = now
        self.task_runs[(namespace, name)] = task_run
        return task_run

    # --- the provider's words ---

    def unauthorized(self) -> web.Response:
        return web.json_response(status_body(401, "Unauthorized", "Unauthorized"), status=401)

    def rate_headers(self) -> dict[str, str]:
        return {}  # no budget announced; only X-Kubernetes-PF-* diagnostics

    def limit_exceeded(self) -> web.Response:
        body = status_body(429, "TooManyRequests", "Too many requests, please try again later.")
        return web.json_response(body, status=429, headers={"Retry-After": "1"})

    def error(self, status: int, message: Any) -> web.Response:
        reasons = {404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 415: "UnsupportedMediaType"}
        return web.json_response(status_body(status, reasons.get(status, "BadRequest"), str(message)), status=status)

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        base = API + "/namespaces/{namespace}"
        router.add_get(base + "/pipelineruns", self.list_runs)
        router.add_post(base + "/pipelineruns", self.create_run)
        router.add_get(base + "/pipelineruns/{name}", self.get_run)
        router.add_patch(base + "/pipelineruns/{name}", self.patch_run)
        router.add_get(base + "/taskruns", self.list_task_runs)

    def _list(self, request: web.Request, store: dict[tuple[str, str], dict[str, Any]], kind: str) -> web.Response:
        namespace = request.match_info["namespace"]
        wanted = dict(part.split("=", 1) for part in request.query.get("labelSelector", "").split(",") if "=" in part)
        items = sorted(
            (
                item
                for (ns, _), item in store.items()
                if ns == namespace and all(item["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ),
            key=lambda item: item["metadata"]["name"],  # etcd keys: name order
        )
        try:
            start = continue_offset(request.query.get("continue"))
        except ValueError:
            return self.error(400, "continue key is not valid")
        limit = int_param(request, "limit", len(items) or 1)
        chunk = items[start : start + limit]
        body = {
            "apiVersion": "tekton.dev/v1",
            "kind": kind,
            "metadata": {"resourceVersion": "4242", "continue": continue_token(start + limit, len(items))},
            "items": copy.deepcopy(chunk),
        }
        if not body["metadata"]["continue"]:
            del body["metadata"]["continue"]
        return self.body(request, body)

    async def list_runs(self, request: web.Request) -> web.Response:
        return self._list(request, self.runs, "PipelineRunList")

    async def list_task_runs(self, request: web.Request) -> web.Response:
        return self._list(request, self.task_runs, "TaskRunList")

    def _run(self, request: web.Request) -> dict[str, Any] | None:
        return self.runs.get((request.match_info["namespace"], request.match_info["name"]))

    async def get_run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        if run is None:
            name = request.match_info["name"]
            return self.error(404, f'pipelineruns.tekton.dev "{name}" not found')
        return self.body(request, copy.deepcopy(run))

    async def create_run(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict) or body.get("kind") != "PipelineRun":
            return self.error(400, "the body is not a PipelineRun")
        namespace = request.match_info["namespace"]
        meta = body.get("metadata") or {}
        name = meta.get("name") or self._name(meta.get("generateName") or "")
        if (namespace, name) in self.runs:
            return self.error(409, f'pipelineruns.tekton.dev "{name}" already exists')
        run = copy.deepcopy(body)
        run["metadata"] = {**self._meta(namespace, name, self.clock(), dict(meta.get("labels") or {})), **meta}
        run["metadata"].update(name=name, namespace=namespace)
        run["status"] = {}
        self.runs[(namespace, name)] = run
        return self.body(request, copy.deepcopy(run), status=201)

    async def patch_run(self, request: web.Request) -> web.Response:
        if request.content_type != "application/merge-patch+json":
            accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            message = f"the body of the request was in an unknown format - accepted media types include: {accepted}"
            return self.error(415, message)
        run = self._run(request)
        if run is None:
            return self.error(404, f'pipelineruns.tekton.dev "{request.match_info["name"]}" not found')
        merge(run, await json_body(request) or {})
        return self.body(request, copy.deepcopy(run))

    # --- the controller's CloudEvents ---

    def cloud_event(self, kind: str, resource: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """Headers and body of the CloudEvent Tekton sends for a resource's state (binary mode); the
        resource converted to v1beta1 (spec.taskRunTemplate.serviceAccountName -> spec.serviceAccountName)."""
        converted = copy.deepcopy(resource)
        converted["apiVersion"] = "tekton.dev/v1beta1"
        template = converted.get("spec", {}).pop("taskRunTemplate", None)
        if template and template.get("serviceAccountName"):
            converted["spec"]["serviceAccountName"] = template["serviceAccountName"]
        meta = resource["metadata"]
        headers = {
            "Ce-Id": str(uuid.uuid4()),
            "Ce-Source": f"/apis/tekton.dev/v1beta1/namespaces/{meta['namespace']}/{kind}/{meta['name']}",
            "Ce-Specversion": "1.0",
            "Ce-Subject": meta["name"],
            "Ce-Time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "Ce-Type": event_type(kind, resource),
            "Content-Type": "application/json",
            "User-Agent": "Go-http-client/1.1",
        }
        field = "pipelineRun" if kind == "PipelineRun" else "taskRun"
        return headers, json.dumps({field: converted}).encode()

    async def send_event(
        self,
        session: aiohttp.ClientSession,
        url: Any,
        kind: str,
        resource: dict[str, Any],
        *,
        user: str = "flowforge",
        password: str | None = None,
        event_id: str | None = None,
    ) -> Delivery:
        """POST a CloudEvent to the sink; `password`: the sink URL's user information, which Go's
        net/http sends as Basic authorization."""
        headers, body = self.cloud_event(kind, resource)
        if event_id is not None:
            headers["Ce-Id"] = event_id
        if password is not None:
            headers["Authorization"] = basic_credentials(user, password)
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(headers["Ce-Id"], response.status, await response.read())
