"""Tekton over the Kubernetes API (https://tekton.dev/docs/pipelines/pipelineruns/,
https://kubernetes.io/docs/reference/using-api/api-concepts/): what the poller reads, and create,
re-run and cancel of PipelineRuns.

A cycle lists the PipelineRuns of each namespace (or of one Pipeline in it, by Tekton's
`tekton.dev/pipeline` label), 100 at a time, following the list's `continue` token. The Kubernetes API
has no "changed since" filter for custom resources: the list is the state, so no cursor is kept. What
is unfinished, or was created or finished within the backfill, and is not already held in that state
by the store, is ingested, oldest first; a failed PipelineRun's failed TaskRuns (its
`status.childReferences`, read with one list by the `tekton.dev/pipelineRun` label) before it, so that
a notification can name them.

The API server announces no budget: API Priority and Fairness answers 429 with Retry-After when this
user's priority level is full (https://kubernetes.io/docs/concepts/cluster-administration/flow-control/),
which the core client honours; requests are paced to the source's `max_rps` (5 a second, client-go's
default) besides.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.model import Status
from flowforged.pagination import ContinueToken
from flowforged.plugin import PollContext, RemoteAPI, operation_error
from flowforged.polling import answer, epoch, operate, state_of, text, untold
from flowforged.ratelimits import RateLimits

if TYPE_CHECKING:
    from flowforged_plugins.tekton import TektonProvider

API = "/apis/tekton.dev/v1"
PIPELINERUN_EVENT = "api:pipelinerun"
TASKRUN_EVENT = "api:taskrun"
PAGE = 100  # `limit` of a list call; the server may answer fewer, with a `continue` token
IN_CLUSTER_URL = "https://kubernetes.default.svc"  # the API server's name inside every cluster
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# Annotations a copy of a PipelineRun must not carry: kubectl's record of what was applied, and what
# Tekton Results and Chains wrote about the original run.
_NOT_COPIED = ("kubectl.kubernetes.io/", "results.tekton.dev/", "chains.tekton.dev/", "tekton.dev/")
# RFC 1123 labels (namespaces) and subdomains (object names): what Kubernetes accepts as names.
_NAMESPACE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TARGET = re.compile(rf"({_NAMESPACE})(?:/({_NAME}))?")

# https://kubernetes.io/docs/reference/access-authn-authz/authentication/#service-account-tokens: a
# Bearer token; the CA bundle is the source's `ca_bundle` (the pod's ca.crt by default).
REMOTE = RemoteAPI(
    default_url=IN_CLUSTER_URL,
    pagination=ContinueToken(("metadata", "continue"), "continue"),
    rate_limits=RateLimits(),
    headers={"Accept": "application/json"},
)


# --- pure half ---------------------------------------------------------------------------------


def parse_repos(entries: list[str]) -> list[tuple[str, str | None]]:
    """`repos` entries as (namespace, pipeline or None): `namespace` or `namespace/pipeline`."""
    found = []
    for entry in entries:
        match = _TARGET.fullmatch(entry.strip())
        if match is None:
            raise ValueError(f"{entry!r}: expected a namespace or namespace/pipeline (Kubernetes names)")
        found.append((match.group(1), match.group(3)))
    return found


def targets(entries: list[str]) -> list[str]:
    """Each namespace polled whole, and each pipeline whose namespace is not."""
    parsed = parse_repos(entries)
    whole = {namespace for namespace, pipeline in parsed if pipeline is None}
    return list(
        dict.fromkeys(
            namespace if pipeline is None else f"{namespace}/{pipeline}"
            for namespace, pipeline in parsed
            if pipeline is None or namespace not in whole
        )
    )


def split(key: str, what: str) -> tuple[str, str]:
    """`{namespace}/{name}` (a pipeline, or a run's id) as its two parts."""
    namespace, _, name = key.partition("/")
    if not re.fullmatch(_NAMESPACE, namespace) or not re.fullmatch(_NAME, name):
        raise ProviderError(f"{key!r} is not a Tekton {what} (namespace/name)", status=404, code="not_found")
    return namespace, name


def runs_path(namespace: str, name: str | None = None) -> str:
    path = f"{API}/namespaces/{quote(namespace, safe='')}/pipelineruns"
    return f"{path}/{quote(name, safe='')}" if name else path


def in_window(run: Mapping[str, Any], since: float) -> bool:
    """Whether a PipelineRun is worth a look: unfinished, or created or finished since `since`."""
    status = run.get("status") or {}
    finished = status.get("completionTime")
    created = (run.get("metadata") or {}).get("creationTimestamp")
    return not finished or epoch(finished) >= since or (bool(created) and epoch(created) >= since)


def rerun_body(run: Mapping[str, Any]) -> dict[str, Any]:
    """A new PipelineRun from an old one: its spec (pipeline, params, workspaces, timeouts, templates)
    without `status` (a cancelled run's Cancelled would cancel the copy) and under a generated name."""
    meta = run.get("metadata") or {}
    spec = {key: value for key, value in (run.get("spec") or {}).items() if key not in ("status", "statusMessage")}
    copied: dict[str, Any] = {"generateName": meta.get("generateName") or f"{meta['name']}-"}
    for field in ("labels", "annotations"):
        kept = {k: v for k, v in (meta.get(field) or {}).items() if not k.startswith(_NOT_COPIED)}
        if kept:
            copied[field] = kept
    return {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": copied, "spec": spec}


def trigger_body(pipeline: str, params: Mapping[str, str]) -> dict[str, Any]:
    """A PipelineRun of a Pipeline (named as `tkn pipeline start` names them: {pipeline}-run-xxxxx)."""
    spec: dict[str, Any] = {"pipelineRef": {"name": pipeline}}
    if params:
        spec["params"] = [{"name": name, "value": value} for name, value in params.items()]
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": f"{pipeline}-run-"},
        "spec": spec,
    }


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    # https://kubernetes.io/docs/reference/access-authn-authz/rbac/: verbs on the tekton.dev resources.
    return operation_error(
        error, source, action, subject, "the create, get and patch verbs on pipelineruns (tekton.dev) in its namespace"
    )


# --- polling -------------------------------------------------------------------------------------


async def poll_target(provider: TektonProvider, client: ProviderClient, ctx: PollContext, target: str) -> None:
    namespace, _, pipeline = target.partition("/")
    params: dict[str, Any] = {"limit": PAGE}
    if pipeline:
        params["labelSelector"] = f"tekton.dev/pipeline={pipeline}"
    runs = await _list(client, runs_path(namespace), params)
    fresh = sorted(
        (run for run in runs if in_window(run, ctx.since)),
        key=lambda r: (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"]),
    )
    payloads = [{"pipelineRun": run} for run in fresh]
    for payload, state in await untold(ctx, provider, PIPELINERUN_EVENT, payloads):
        if state is not None and state.status is Status.FAILED:
            for task_run in await failed_task_runs(provider, client, payload["pipelineRun"]):
                await ctx.emit(TASKRUN_EVENT, {"taskRun": task_run})
        await ctx.emit(PIPELINERUN_EVENT, payload)


async def _list(client: ProviderClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async for page in client.pages(path, params=params):
        items += (page.data or {}).get("items") or []
    return items


async def failed_task_runs(
    provider: TektonProvider, client: ProviderClient, run: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The failed TaskRuns among a PipelineRun's children: one list by Tekton's label rather than a
    GET per child."""
    children = {
        child.get("name")
        for child in (run.get("status") or {}).get("childReferences") or []
        if isinstance(child, dict) and child.get("kind") == "TaskRun"
    }
    if not children:
        return []
    meta = run["metadata"]
    path = f"{API}/namespaces/{quote(meta['namespace'], safe='')}/taskruns"
    selector = {"labelSelector": f"tekton.dev/pipelineRun={meta['name']}", "limit": PAGE}
    found = []
    for task_run in await _list(client, path, selector):
        if task_run["metadata"]["name"] not in children:
            continue
        event = state_of(provider, TASKRUN_EVENT, {"taskRun": task_run})
        if event is not None and event.status is Status.FAILED:
            found.append(task_run)
    return found


# --- operations ----------------------------------------------------------------------------------


async def trigger(
    provider: TektonProvider, client: ProviderClient, pipeline: str, ref: str, inputs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """POST a PipelineRun of the Pipeline with the inputs as its params; the ref goes into the
    `branch_param` parameter unless the inputs give it."""
    namespace, name = split(pipeline, "pipeline")
    params = {key: text(value) for key, value in inputs.items()}
    if provider.config.branch_param and ref and provider.config.branch_param not in params:
        params = {provider.config.branch_param: ref, **params}
    body = trigger_body(name, params)
    created = await _operate(provider, client, "POST", runs_path(namespace), body, "trigger", f"a run of {pipeline}")
    return run_info(provider, created)


async def rerun(provider: TektonProvider, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """Tekton runs nothing again in place: a new PipelineRun with the old one's spec."""
    namespace, name = split(str(run["run_id"]), "run")
    subject = f"run {run['run_id']}"
    old = await _operate(provider, client, "GET", runs_path(namespace, name), None, "re-run", subject)
    body = rerun_body(old or {"metadata": {"name": name}})
    created = await _operate(provider, client, "POST", runs_path(namespace), body, "re-run", subject)
    return run_info(provider, created)


async def cancel(provider: TektonProvider, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """https://tekton.dev/docs/pipelines/pipelineruns/#cancelling-a-pipelinerun: `spec.status:
    Cancelled`, as a JSON merge patch (RFC 7386). A finished run is refused here: Kubernetes would
    accept the patch and Tekton ignore it."""
    namespace, name = split(str(run["run_id"]), "run")
    subject = f"run {run['run_id']}"
    current = await _operate(provider, client, "GET", runs_path(namespace, name), None, "cancel", subject)
    status, reason = provider_state(provider, current)
    if status is not None and status.terminal:
        raise ProviderError(
            f"{provider.name}: {subject} cannot be cancelled: it has finished ({reason})", status=409, code="conflict"
        )
    patch = {"spec": {"status": "Cancelled"}}
    try:  # flowforged.polling.operate() sends no headers of its own: the merge patch's type is one
        response = await client.request("PATCH", runs_path(namespace, name), json=patch, headers=MERGE_PATCH)
    except ProviderError as exc:
        raise explain(provider.name, exc, action="cancel", subject=subject) from None
    return run_info(provider, answer(response))


def provider_state(provider: TektonProvider, run: Mapping[str, Any] | None) -> tuple[Status | None, str]:
    event = state_of(provider, PIPELINERUN_EVENT, {"pipelineRun": run}) if run else None
    return (event.status, event.provider_status) if event is not None else (None, "unknown")


def run_info(provider: TektonProvider, run: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the control API answers about a PipelineRun an operation made or changed."""
    event = state_of(provider, PIPELINERUN_EVENT, {"pipelineRun": run}) if run else None
    if event is None:
        return None
    return {"run_id": event.run_id, "url": event.url, "branch": event.branch, "provider_status": event.provider_status}


async def _operate(
    provider: TektonProvider, client: ProviderClient, method: str, path: str, body: Any, action: str, subject: str
) -> dict[str, Any] | None:
    explain_it = functools.partial(explain, provider.name, action=action, subject=subject)
    return answer(await operate(client, method, path, explain_it, json=body))
