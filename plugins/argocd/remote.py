"""Argo CD over its REST API (assets/swagger.json of argoproj/argo-cd): what the poller reads, and
sync and terminate.

A cycle asks each target (a project, or `*` for every application the token may `get`) for
`GET /api/v1/applications`. Argo CD answers every application at once (no `limit`/`continue`: the
server lists its informer's cache), with no ETag; the list's `metadata.resourceVersion` is the
informer's last resource version, so an unchanged one means no application changed since the last
cycle and nothing is read further. Of each application two things are runs: its current sync
operation (`status.operationState`), and each successful sync recorded in `status.history` that
the store does not hold (a sync that finished, and was followed by another, while nobody was told).
A sync that failed while FlowForge was down and was followed by another leaves no trace: Argo CD
keeps only the last operation, and records only successful syncs in its history.

Argo CD documents no rate limit for its API and sends no rate-limit headers: only a 429 would be one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.model import RunEvent, Status, parse_time
from flowforged.pagination import Single
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import epoch, operate, text
from flowforged.ratelimits import RateLimits

APP_EVENT = "api:application"  # {the Application, cut as the webhook template cuts it}
HISTORY_EVENT = "api:history"  # {"application": ..., "history": a RevisionHistory}
APPLICATIONS = "/api/v1/applications"
# AppProject names are Kubernetes object names (RFC 1123 subdomains).
_PROJECT = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Argo CD answers gRPC codes through grpc-gateway: FailedPrecondition and InvalidArgument are 400s,
# which these messages (server/application/application.go, util/argo/argo.go) make conflicts.
_CONFLICTS = ("another operation is already in progress", "No operation is in progress", "auto-sync currently set")

# https://argo-cd.readthedocs.io/en/stable/developer-guide/api-docs/: a Bearer token (an account's API
# key). The source's api_url is the Argo CD server (https://argocd.example.com); paths carry /api/v1.
REMOTE = RemoteAPI(default_url=None, pagination=Single(), rate_limits=RateLimits())


def check_projects(entries: list[str]) -> None:
    for entry in entries:
        if entry != "*" and not _PROJECT.fullmatch(entry):
            raise ValueError(f"{entry!r}: expected an Argo CD project name, or * for every project")


def targets(entries: list[str]) -> list[str]:
    """One list for all of them when `*` is among them, else one per project."""
    return ["*"] if "*" in entries else list(dict.fromkeys(entries))


def cut(app: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an Application a run is read from: what the README's webhook template sends."""
    meta, spec, status = app.get("metadata") or {}, app.get("spec") or {}, app.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": {"project": spec.get("project"), "source": spec.get("source"), "sources": spec.get("sources")},
        "status": {
            "operationState": status.get("operationState"),
            "history": status.get("history"),
            "controllerNamespace": status.get("controllerNamespace"),
        },
    }


# --- polling -------------------------------------------------------------------------------------


async def poll_target(provider: Provider, client: ProviderClient, ctx: PollContext, target: str) -> None:
    params: dict[str, Any] = {} if target == "*" else {"projects": target}
    if selector := getattr(provider.config, "selector", None):
        params["selector"] = selector
    data = (await client.get(APPLICATIONS, params=params)).data or {}
    version = (data.get("metadata") or {}).get("resourceVersion")
    remembered = f"resourceVersion:{target}"
    if version and ctx.memory.get(remembered) == version:
        return  # no application changed since the last cycle read them all
    found = [item for app in data.get("items") or [] for item in _runs(provider, ctx, app)]
    known = await ctx.known([(event.run_id, 1) for _, _, event in found if event is not None])
    for name, payload, event in sorted(found, key=lambda item: (item[2].started_at or "") if item[2] else ""):
        if event is None or not _told(name, event, known.get((event.run_id, 1))):
            await ctx.emit(name, payload)
    if version:
        ctx.memory[remembered] = version


def _told(name: str, event: RunEvent, told: tuple[str, str] | None) -> bool:
    """Whether the store holds this state of the run already, or a finished state that says as much:
    a history entry of a run it holds finished, or an operation whose end a history entry told."""
    if told is None:
        return False
    if told == (event.status.value, event.updated_at):
        return True
    return Status(told[0]).terminal and (name == HISTORY_EVENT or told[0] == event.status.value)


def _runs(provider: Provider, ctx: PollContext, app: Mapping[str, Any]) -> list[tuple[str, Any, RunEvent | None]]:
    """(event name, payload, the run it is) of the application's operation and of each history entry
    within the backfill; the run is None when the payload cannot be read (stored raw with its error)."""
    payload = cut(app)
    try:
        events = provider.normalize(APP_EVENT, payload)
    except Exception:  # ingest stores it raw with the error, as a webhook it cannot read
        return [(APP_EVENT, payload, None)]
    found: list[tuple[str, Any, RunEvent | None]] = []
    current = events[-1] if events else None
    if isinstance(current, RunEvent) and not _before(current.finished_at, ctx.since):
        found.append((APP_EVENT, payload, current))
    summary = {**payload, "status": {"controllerNamespace": payload["status"]["controllerNamespace"]}}
    for entry in payload["status"]["history"] or []:
        started = parse_time(entry.get("deployStartedAt"))
        if started is None or (current is not None and current.started_at == started):
            continue  # an entry of an older Argo CD, without deployStartedAt; or the operation above
        if _before(parse_time(entry.get("deployedAt")), ctx.since):
            continue
        item = {"application": summary, "history": entry}
        try:
            [event] = provider.normalize(HISTORY_EVENT, item)
        except Exception:  # stored raw with its error
            event = None
        found.append((HISTORY_EVENT, item, event if isinstance(event, RunEvent) else None))
    return found


def _before(moment: str | None, since: float) -> bool:
    return moment is not None and epoch(moment) < since


# --- operations ----------------------------------------------------------------------------------


def split_pipeline(pipeline: str) -> tuple[str, str | None, str]:
    """(project, namespace or None, application) of `project/app` or `project/namespace/app`."""
    parts = pipeline.split("/")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise ProviderError(f"{pipeline!r} is not an Argo CD application (project/app)", status=404, code="not_found")


def _app_path(name: str, suffix: str = "") -> str:
    return f"{APPLICATIONS}/{quote(name, safe='')}{suffix}"


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if text(value).lower() in ("true", "false"):
        return text(value).lower() == "true"
    raise ProviderError(f"input {name}: expected true or false, got {value!r}", status=422, code="invalid_input")


async def trigger(
    source: str, client: ProviderClient, pipeline: str, ref: str, inputs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """ApplicationService_Sync: `POST /api/v1/applications/{name}/sync` with the revision and `prune`
    (the only input). `project` makes Argo CD refuse an application of the same name in another
    project. Argo CD answers the Application with its operation set; the controller starts it."""
    if unknown := sorted(set(inputs) - {"prune"}):
        raise ProviderError(
            f"input {unknown[0]}: an Argo CD sync takes only the input prune", status=422, code="not_supported"
        )
    return await _sync(source, client, pipeline, ref, _flag("prune", inputs.get("prune", False)), "trigger")


async def rerun(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A sync of the same revision again: the commit the run synced, else its target revision. Argo CD
    keeps no other settings of the old sync that FlowForge holds: `prune` is false."""
    return await _sync(source, client, run["pipeline"], run.get("sha") or run.get("branch") or "", False, "re-run")


async def _sync(
    source: str, client: ProviderClient, pipeline: str, revision: str, prune: bool, action: str
) -> dict[str, Any] | None:
    project, namespace, name = split_pipeline(pipeline)
    body: dict[str, Any] = {"revision": revision, "prune": prune, "project": project}
    if namespace:
        body["appNamespace"] = namespace
    subject = f"application {name} of project {project}"
    explain_it = functools.partial(explain, source, action=action, subject=subject)
    app = (await operate(client, "POST", _app_path(name, "/sync"), explain_it, json=body)).data
    operation = ((app or {}).get("operation") or {}).get("sync") or {}
    return {"pipeline": pipeline, "branch": revision, "sha": operation.get("revision"), "provider_status": "Requested"}


async def cancel(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """ApplicationService_TerminateOperation (`DELETE /api/v1/applications/{name}/operation`) stops
    whatever operation is running: the application is read first, so that a run that has ended is not
    taken for the one that followed it."""
    project, namespace, name = split_pipeline(run["pipeline"])
    subject = f"the sync of {name} started at {run_started(run)}"
    explain_it = functools.partial(explain, source, action="cancel", subject=subject)
    where = {"appNamespace": namespace} if namespace else None
    app = (await operate(client, "GET", _app_path(name), explain_it, params=where)).data or {}
    state = (app.get("status") or {}).get("operationState") or {}
    if parse_time(state.get("startedAt")) != run_started(run) or state.get("phase") != "Running":
        said = state.get("phase") or "no operation"
        raise ProviderError(
            f"{source}: {subject} cannot be cancelled (Argo CD says: {said})", status=409, code="conflict"
        )
    params = {"project": project, **(where or {})}
    await operate(client, "DELETE", _app_path(name, "/operation"), explain_it, params=params)
    return {"run_id": run["run_id"], "provider_status": "Terminating"}


def run_started(run: Mapping[str, Any]) -> str:
    """The operation's startedAt, from the run id `{namespace}/{name}@{startedAt}`."""
    return str(run["run_id"]).rpartition("@")[2]


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    """Argo CD's refusals in words that say what to do. https://argo-cd.readthedocs.io/en/stable/operator-manual/rbac/:
    sync and terminate both need the `sync` action on the application (terminate is checked as sync
    in server/application/application.go); a revision other than the target one also needs
    `override` when application.sync.requireOverridePrivilegeForRevisionSync is true."""
    message = str(error)
    if error.status == 502 and "answered 400" in message and any(c in message for c in _CONFLICTS):
        detail = message.split(": ", 2)[-1]
        return ProviderError(
            f"{source}: {subject} cannot be {_DONE.get(action, action)} (Argo CD says: {detail})",
            status=409,
            code="conflict",
        )
    return operation_error(error, source, action, subject, "the RBAC policy `applications, sync, PROJECT/APP`")


_DONE = {"trigger": "synced now", "re-run": "synced again now", "cancel": "cancelled"}
