"""Argo CD: an application's sync operation is a run.

This module is the pure half; `remote` holds the remote half (polling `GET /api/v1/applications`, sync,
terminate), which ArgoCDProvider delegates to. Webhooks come from Argo CD Notifications' webhook
service (https://argo-cd.readthedocs.io/en/stable/operator-manual/notifications/services/webhook/)
with the body of the template the README gives: a part of the Application (`metadata.name` and
`namespace`, `spec.project`, `spec.source(s)`, `status.operationState`, `status.history`,
`status.controllerNamespace`) in the Application's own shape, so that a webhook and a polled
Application are read by the same function.

A pipeline is `{project}/{application}` (`{project}/{namespace}/{application}` for an application
outside the control plane's namespace, as Argo CD's RBAC names it); the branch is the target revision.
A run's id is `{namespace}/{application}@{operationState.startedAt}`: a running operation has no
history id yet, and Argo CD records a successful sync in `status.history` with `deployStartedAt` set
to the operation's `startedAt` (controller/sync.go, persistRevisionHistory), so a webhook, a polled
operation and a history entry of one sync give the same id. The history id is kept as the run's
`number` once it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowforged.config import SourceConfig
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged.signatures import same_secret
from flowforged_plugins.argocd import remote

TOKEN_HEADER = "X-FlowForge-Token"  # noqa: S105 (a header name; README "Argo CD": the webhook service sends it)
WEBHOOK_EVENT = "application"  # every delivery is the state of one application

# OperationPhase (gitops-engine/pkg/sync/common/types.go): Running, Terminating, Failed, Error, Succeeded.
_PHASES = {
    "Running": Status.RUNNING,
    "Terminating": Status.RUNNING,  # being stopped: not over yet
    "Succeeded": Status.SUCCESS,
    "Failed": Status.FAILED,
    "Error": Status.FAILED,
}
# A terminated sync ends Failed "Operation terminated", or Error "Operation termination had errors"
# (gitops-engine/pkg/sync/sync_context.go, Terminate).
_TERMINATED = ("Operation terminated", "Operation termination had errors")
# ResourceResult.status (ResultCode): Synced, SyncFailed, Pruned, PruneSkipped; always empty for hooks,
# whose outcome is their hookPhase.
_FAILED_HOOK = frozenset({"Failed", "Error"})


def app_name(app: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an Application."""
    meta = app["metadata"]
    return meta.get("namespace") or "", meta["name"]


def pipeline_of(app: Mapping[str, Any]) -> str:
    """`{project}/{name}`, or `{project}/{namespace}/{name}` for an application in another namespace
    than the control plane's (https://argo-cd.readthedocs.io/en/stable/operator-manual/rbac/,
    "Application in Any Namespaces"). An empty project is `default` (ApplicationSpec.project)."""
    namespace, name = app_name(app)
    spec, status = app.get("spec") or {}, app.get("status") or {}
    home = status.get("controllerNamespace")
    qualified = f"{namespace}/{name}" if namespace and home and namespace != home else name
    return f"{spec.get('project') or 'default'}/{qualified}"


def first_source(app: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = app.get("spec") or {}
    return spec.get("source") or next(iter(spec.get("sources") or []), None) or {}


def target_revision(app: Mapping[str, Any]) -> str:
    """ApplicationSource.targetRevision: "If omitted, will equal to HEAD"."""
    return first_source(app).get("targetRevision") or "HEAD"


def run_id(app: Mapping[str, Any], started_at: str) -> str:
    namespace, name = app_name(app)
    return f"{namespace}/{name}@{started_at}"


def _revision(result: Mapping[str, Any] | None) -> str | None:
    result = result or {}
    return result.get("revision") or next(iter(result.get("revisions") or []), None) or None


def operation_status(state: Mapping[str, Any]) -> tuple[Status, str]:
    phase = state.get("phase") or "Unknown"
    if phase in ("Failed", "Error") and (state.get("message") or "").startswith(_TERMINATED):
        return Status.CANCELLED, "Terminated"
    return _PHASES.get(phase, Status.PENDING), phase


def _history_number(app: Mapping[str, Any], started_at: str) -> int | None:
    for entry in (app.get("status") or {}).get("history") or []:
        if parse_time(entry.get("deployStartedAt")) == started_at:
            return entry.get("id")
    return None


def _web_url(web: str | None, app: Mapping[str, Any]) -> str | None:
    namespace, name = app_name(app)
    return f"{web.rstrip('/')}/applications/{namespace}/{name}" if web else None


def _common(source: str, app: Mapping[str, Any], web: str | None) -> dict[str, Any]:
    branch = target_revision(app)
    return {
        "source": source,
        "pipeline": pipeline_of(app),
        "pipeline_name": app_name(app)[1],
        "branch": branch,
        # The target revision is what an application deploys: it is its "default branch".
        "default_branch": branch,
        "repo": first_source(app).get("repoURL"),
        "url": _web_url(web, app),
    }


def normalize_operation(source: str, app: Mapping[str, Any], web: str | None = None) -> list[Event]:
    """The sync operation of an Application (`status.operationState`), with the resources that failed
    in it first when it failed; [] when it has none yet (an operation the controller has not started)."""
    state = (app.get("status") or {}).get("operationState")
    if not state:
        return []
    started = parse_time(state["startedAt"])
    if started is None:
        raise ValueError("status.operationState has no startedAt")
    status, phase = operation_status(state)
    finished = parse_time(state.get("finishedAt")) if status.terminal else None
    initiator = (state.get("operation") or {}).get("initiatedBy") or {}
    sync = (state.get("operation") or {}).get("sync") or {}
    run = RunEvent(
        **_common(source, app, web),
        run_id=run_id(app, started),
        attempt=1,
        status=status,
        provider_status=phase,
        updated_at=finished or started,
        sha=_revision(state.get("syncResult")) or _revision(sync),
        created_at=started,
        started_at=started,
        finished_at=finished,
        author=initiator.get("username") or None,
        trigger="automated" if initiator.get("automated") else "user",
        number=_history_number(app, started),
    )
    jobs = failed_resources(run, state) if status is Status.FAILED else []
    return [*jobs, run]


def failed_resources(run: RunEvent, state: Mapping[str, Any]) -> list[JobEvent]:
    """The resources of a failed sync (syncResult.resources): those whose apply failed (`SyncFailed`)
    and the hooks that failed or errored, named `Kind/name` as Argo CD's UI shows them."""
    jobs = []
    for resource in (state.get("syncResult") or {}).get("resources") or []:
        hook = bool(resource.get("hookType"))
        word = resource.get("hookPhase") if hook else resource.get("status")
        if not (word in _FAILED_HOOK if hook else word == "SyncFailed"):
            continue
        parts = (resource.get("syncPhase"), resource.get("group"), resource["kind"], resource.get("namespace"))
        jobs.append(
            JobEvent(
                source=run.source,
                run_id=run.run_id,
                attempt=1,
                job_id="/".join(p or "" for p in (*parts, resource["name"])),
                name=f"{resource['kind']}/{resource['name']}",
                status=Status.FAILED,
                provider_status=word,
                updated_at=run.updated_at,
                pipeline=run.pipeline,
                url=run.url,
                stage=resource.get("syncPhase"),
                finished_at=run.finished_at,
                branch=run.branch,
                sha=run.sha,
            )
        )
    return jobs


def normalize_history(
    source: str, app: Mapping[str, Any], entry: Mapping[str, Any], web: str | None = None
) -> RunEvent:
    """A successful sync recorded in `status.history` (RevisionHistory): Argo CD records only syncs
    that succeeded (controller/sync.go), so one found there that nobody told is a success."""
    started = parse_time(entry.get("deployStartedAt"))
    if started is None:
        raise ValueError("the history entry has no deployStartedAt")
    finished = parse_time(entry["deployedAt"])
    initiator = entry.get("initiatedBy") or {}
    return RunEvent(
        **_common(source, app, web),
        run_id=run_id(app, started),
        attempt=1,
        status=Status.SUCCESS,
        provider_status="Succeeded",
        updated_at=finished or started,
        sha=_revision(entry),
        created_at=started,
        started_at=started,
        finished_at=finished,
        author=initiator.get("username") or None,
        trigger="automated" if initiator.get("automated") else "user",
        number=entry.get("id"),
    )


# A delivery of the README's template, cut to what normalize() reads: a failed sync of guestbook.
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "metadata": {"name": "guestbook", "namespace": "argocd"},
    "spec": {
        "project": "default",
        "source": {"repoURL": "https://github.com/argoproj/argocd-example-apps.git", "targetRevision": "HEAD"},
    },
    "status": {
        "controllerNamespace": "argocd",
        "operationState": {
            "phase": "Failed",
            "message": "one or more objects failed to apply",
            "startedAt": "2026-01-05T10:00:00Z",
            "finishedAt": "2026-01-05T10:04:00Z",
            "operation": {"initiatedBy": {"username": "admin"}, "sync": {"revision": "53e28ff"}},
            "syncResult": {
                "revision": "53e28ff20cc530b9ada2173fbbd64d48338583ba",
                "resources": [
                    {
                        "kind": "Deployment",
                        "name": "guestbook-ui",
                        "namespace": "default",
                        "group": "apps",
                        "status": "SyncFailed",
                        "syncPhase": "Sync",
                        "message": "admission webhook denied",
                    },
                ],
            },
        },
        "history": [],
    },
}


class ArgoCDSourceConfig(SourceConfig):
    repos_hint = "the Argo CD projects whose applications to poll (* for every project)"
    # A label selector the application list is restricted to (`?selector=`), e.g. `team=web`.
    selector: str | None = None

    def check_repos(self) -> None:
        remote.check_projects(self.repos)

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        if (self.poll_interval > 0 or self.token is not None) and not self.api_url:
            found.append(("api_url", "missing: the Argo CD server's URL (https://argocd.example.com)"))
        return found


class ArgoCDProvider(Provider):
    type = "argocd"
    # Trigger takes one input, `prune`. There is no failed-only re-run (a sync is all of an
    # application's resources, or a list of them that FlowForge does not keep) and no forced
    # terminate.
    capabilities = Capabilities(trigger=True, inputs=True, rerun=True, cancel=True)
    remote = remote.REMOTE
    config_model = ArgoCDSourceConfig
    stored_headers = ("Content-Type", "User-Agent")  # never X-FlowForge-Token: it is the secret

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """The webhook service sends the headers of its config as they are: no signature, so the
        secret itself is compared, in constant time."""
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        token = headers.get(TOKEN_HEADER)
        if token is None:
            raise WebhookRejected(f"no {TOKEN_HEADER} was sent")
        if not same_secret(token, secret.get()):
            raise WebhookRejected(f"{TOKEN_HEADER} does not match")

    def delivery_id(self, headers: Headers) -> str | None:
        # The webhook service sends no delivery id, and only fixed headers; a retry sends the same body
        # (the operation's phase and times are in it), whose hash stands in.
        return None

    def event_name(self, headers: Headers, payload: Any) -> str:
        is_app = isinstance(payload, dict) and isinstance(payload.get("metadata"), dict)
        return WEBHOOK_EVENT if is_app else "unknown"

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event in (WEBHOOK_EVENT, remote.APP_EVENT):
            return normalize_operation(self.name, payload, self.config.api_url)
        if event == remote.HISTORY_EVENT:
            return [normalize_history(self.name, payload["application"], payload["history"], self.config.api_url)]
        return []

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "argocd", "webhook_secret": "example-token"},
            event=WEBHOOK_EVENT,
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {TOKEN_HEADER: config["webhook_secret"]},
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
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
        return await remote.trigger(self.name, client, pipeline, ref, inputs)

    async def rerun(
        self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool | None
    ) -> dict[str, Any] | None:
        return await remote.rerun(self.name, client, run)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self.name, client, run)
