"""A fake Argo CD API server as an aiohttp app, following Argo CD's published API (assets/swagger.json
of argoproj/argo-cd: ApplicationService_List, _Get, _Sync, _TerminateOperation) and the server's
behaviour (server/application/application.go), and the sender of Argo CD Notifications' webhook
service with the README's template.

    fake = FakeArgoCD(token="argocd-token")
    fake.add_app("guestbook", project="default", target_revision="main")
    fake.sync("guestbook", at=..., phase="Failed", failed=("Deployment/guestbook-ui",))
    server = await aiohttp_server(fake.app)

What Argo CD does, the fake does: the list is answered whole (no limit/continue) and sorted by name,
with the informer's resourceVersion in its metadata; errors are grpc-gateway's
`{"error", "code", "message"}` (FailedPrecondition and InvalidArgument as 400, PermissionDenied as
403); a sync sets the operation and clears `status.operationState` (util/argo.SetAppOperation), the
controller then runs it (`start`, `finish` here); a successful sync is appended to `status.history`
with `deployStartedAt` equal to the operation's `startedAt`; a terminated sync ends Failed
"Operation terminated". Argo CD sends no rate-limit headers and no ETag (the base class adds ETags
to every GET; the plugin never asks conditionally).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from flowforged.fakeapi import Delivery, FakeProviderAPI, json_body

NAMESPACE = "argocd"
TOKEN_HEADER = "X-FlowForge-Token"
# The body of the README's `template.flowforge-sync` (README: "Argo CD"), as Argo CD Notifications
# renders it with Go's text/template and Sprig's toJson.
TEMPLATE = """\
{
  "metadata": {"name": {{toJson .app.metadata.name}}, "namespace": {{toJson .app.metadata.namespace}}},
  "spec": {"project": {{toJson .app.spec.project}}, "source": {{toJson .app.spec.source}},
           "sources": {{toJson .app.spec.sources}}},
  "status": {"operationState": {{toJson .app.status.operationState}},
             "history": {{toJson .app.status.history}},
             "controllerNamespace": {{toJson .app.status.controllerNamespace}}}
}
"""
_TO_JSON = re.compile(r"\{\{\s*toJson\s+\.app((?:\.[A-Za-z]+)+)\s*\}\}")


def argo_time(epoch: float) -> str:
    """metav1.Time: RFC 3339 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def render(app: dict[str, Any], template: str = TEMPLATE) -> bytes:
    """The template with each `{{toJson .app.PATH}}` replaced as text/template and Sprig do it: a
    missing map key is nil, and toJson of nil is `null`."""

    def value(match: re.Match[str]) -> str:
        found: Any = app
        for key in match.group(1).strip(".").split("."):
            found = found.get(key) if isinstance(found, dict) else None
        return json.dumps(found)

    rendered = _TO_JSON.sub(value, template)
    if "{{" in rendered:
        raise ValueError("the template uses more than {{toJson .app.PATH}}")
    return rendered.encode()


def _error(status: int, code: int, message: str) -> web.Response:
    # grpc-gateway's error body, as Argo CD sends it.
    return web.json_response({"error": message, "code": code, "message": message}, status=status)


class FakeArgoCD(FakeProviderAPI):
    """Applications in memory, served as Argo CD's API server does; a controller moved by the test."""

    def __init__(self, token: str = "argocd-fake-token", *, clock: Callable[[], float] = time.time) -> None:  # noqa: S107
        super().__init__(token, rate_limit=10**9, window=3600, clock=clock)
        self.apps: dict[str, dict[str, Any]] = {}
        self.version = 1000
        self.allowed = {"get", "sync"}  # the RBAC actions the token's account has on applications
        self.heads: dict[str, str] = {}  # branch -> the commit it resolves to

    # --- the world ---

    def changed(self) -> None:
        self.version += 1

    def head(self, branch: str) -> str:
        return self.heads.setdefault(branch, hashlib.sha1(branch.encode(), usedforsecurity=False).hexdigest())

    def add_app(
        self,
        name: str,
        *,
        project: str = "default",
        target_revision: str = "main",
        auto_sync: bool = False,
        labels: dict[str, str] | None = None,
        namespace: str = NAMESPACE,
    ) -> dict[str, Any]:
        source = {
            "repoURL": "https://github.com/argoproj/argocd-example-apps.git",
            "path": name,
            "targetRevision": target_revision,
        }
        spec: dict[str, Any] = {
            "project": project,
            "source": source,
            "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
        }
        if auto_sync:
            spec["syncPolicy"] = {"automated": {"prune": True, "selfHeal": True}}
        app = {
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}), "uid": name + "-uid"},
            "spec": spec,
            "status": {
                "controllerNamespace": NAMESPACE,
                "health": {"status": "Healthy"},
                "sync": {"status": "OutOfSync", "revision": self.head(target_revision)},
                "resources": [{"kind": "Deployment", "name": name, "namespace": name, "status": "OutOfSync"}],
            },
        }
        self.apps[name] = app
        self.changed()
        return app

    def request_sync(self, name: str, revision: str, prune: bool = False, user: str | None = "admin") -> None:
        """What the API server does for a sync: the operation is set, the last operation's state cleared."""
        app = self.apps[name]
        resolved = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else self.head(revision)
        initiated = {"username": user} if user else {"automated": True}
        app["operation"] = {"sync": {"revision": resolved, "prune": prune}, "initiatedBy": initiated}
        app["status"]["operationState"] = None
        self.changed()

    def start(self, name: str, at: float | None = None) -> dict[str, Any]:
        """The controller takes the operation up: phase Running."""
        app = self.apps[name]
        state = {
            "operation": copy.deepcopy(app["operation"]),
            "phase": "Running",
            "message": "one or more tasks are running",
            "startedAt": argo_time(self.clock() if at is None else at),
        }
        app["status"]["operationState"] = state
        self.changed()
        return state

    def finish(self, name: str, phase: str, at: float | None = None, failed: tuple[str, ...] = ()) -> dict[str, Any]:
        """The operation ends. `failed`: `Kind/name` of resources whose apply failed, or
        `hook:Kind/name` of hooks that failed."""
        app = self.apps[name]
        state = app["status"]["operationState"]
        revision = state["operation"]["sync"]["revision"]
        resources = [self._result(app, "Deployment/" + name, ok=True)]
        resources += [self._result(app, item, ok=False) for item in failed]
        state.update(
            phase=phase,
            message={"Succeeded": "successfully synced (all tasks run)"}.get(
                phase, "one or more objects failed to apply"
            ),
            finishedAt=argo_time(self.clock() if at is None else at),
            syncResult={"resources": resources, "revision": revision, "source": app["spec"]["source"]},
        )
        app.pop("operation", None)
        if phase == "Succeeded":  # controller/sync.go: only a successful sync is recorded
            history = app["status"].setdefault("history", [])
            history.append(
                {
                    "id": history[-1]["id"] + 1 if history else 0,
                    "revision": revision,
                    "deployStartedAt": state["startedAt"],
                    "deployedAt": state["finishedAt"],
                    "source": app["spec"]["source"],
                    "initiatedBy": state["operation"]["initiatedBy"],
                }
            )
            app["status"]["sync"] = {"status": "Synced", "revision": revision}
        self.changed()
        return state

    def sync(
        self, name: str, *, at: float, took: float = 30, phase: str = "Succeeded", **options: Any
    ) -> dict[str, Any]:
        """A whole sync of the target revision, started at `at`."""
        app = self.apps[name]
        self.request_sync(name, app["spec"]["source"]["targetRevision"], user=options.pop("user", "admin"))
        self.start(name, at)
        return self.finish(name, phase, at + took, **options)

    def terminated(self, name: str, at: float | None = None) -> None:
        """The controller ends a terminating operation (gitops-engine sync_context.Terminate)."""
        state = self.apps[name]["status"]["operationState"]
        state.update(
            phase="Failed", message="Operation terminated", finishedAt=argo_time(self.clock() if at is None else at)
        )
        self.apps[name].pop("operation", None)
        self.changed()

    @staticmethod
    def _result(app: dict[str, Any], item: str, ok: bool) -> dict[str, Any]:
        hook, _, resource = item.rpartition(":")
        kind, _, name = resource.partition("/")
        result = {
            "group": "apps" if kind == "Deployment" else "",
            "version": "v1",
            "kind": kind,
            "name": name,
            "namespace": app["metadata"]["name"],
            "syncPhase": "PreSync" if hook else "Sync",
            "message": f"{kind.lower()}/{name} {'created' if ok else 'failed: admission webhook denied'}",
        }
        if hook:
            result.update(hookType="PreSync", hookPhase="Succeeded" if ok else "Failed", status="")
        else:
            result.update(hookPhase="Running", status="Synced" if ok else "SyncFailed")
        return result

    # --- webhooks (Argo CD Notifications' webhook service) ---

    async def send_webhook(self, session: aiohttp.ClientSession, url: Any, name: str, token: str | None) -> Delivery:
        headers = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
        if token is not None:
            headers[TOKEN_HEADER] = token
        async with session.post(url, data=render(self.apps[name]), headers=headers) as response:
            return Delivery("", response.status, await response.read())

    # --- the API ---

    def rate_headers(self) -> dict[str, str]:
        return {}  # Argo CD sends none

    def unauthorized(self) -> web.Response:
        return _error(401, 16, "invalid session: token signature is invalid")

    def error(self, status: int, message: Any) -> web.Response:
        return _error(status, 5 if status == 404 else 2, str(message))

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/applications", self.list_apps)
        router.add_get("/api/v1/applications/{name}", self.get_app)
        router.add_post("/api/v1/applications/{name}/sync", self.sync_app)
        router.add_delete("/api/v1/applications/{name}/operation", self.terminate)

    def _denied(self, action: str, app: dict[str, Any]) -> web.Response | None:
        if action in self.allowed:
            return None
        obj = f"{app['spec']['project']}/{app['metadata']['name']}"
        return _error(403, 7, f"permission denied: applications, {action}, {obj}, sub: flowforge")

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        app = self.apps.get(request.match_info["name"])
        wanted = request.query.get("appNamespace")
        return app if app is not None and (not wanted or app["metadata"]["namespace"] == wanted) else None

    async def list_apps(self, request: web.Request) -> web.Response:
        projects = request.query.getall("projects", []) + request.query.getall("project", [])
        selector = dict(p.split("=", 1) for p in request.query.get("selector", "").split(",") if "=" in p)
        items = [
            app
            for _, app in sorted(self.apps.items())
            if (not projects or app["spec"]["project"] in projects)
            and all(app["metadata"]["labels"].get(k) == v for k, v in selector.items())
            and "get" in self.allowed
        ]
        return self.body(request, {"metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def get_app(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _error(404, 5, f'applications.argoproj.io "{request.match_info["name"]}" not found')
        return self._denied("get", app) or self.body(request, app)

    async def sync_app(self, request: web.Request) -> web.Response:
        body = await json_body(request) or {}
        app = self.apps.get(request.match_info["name"])
        if app is None or (body.get("appNamespace") or NAMESPACE) != app["metadata"]["namespace"]:
            return _error(404, 5, f'applications.argoproj.io "{request.match_info["name"]}" not found')
        if body.get("project") and body["project"] != app["spec"]["project"]:
            return _error(403, 7, "permission denied")  # Argo CD does not tell another project's apps apart
        if denied := self._denied("sync", app):
            return denied
        target = app["spec"]["source"]["targetRevision"]
        revision = body.get("revision") or target
        if revision != target and "syncPolicy" in app["spec"]:
            return _error(400, 9, f"Cannot sync to {revision}: auto-sync currently set to {target}")
        if app.get("operation"):
            return _error(400, 9, "another operation is already in progress")
        self.request_sync(app["metadata"]["name"], revision, bool(body.get("prune")), user="flowforge")
        return self.body(request, app)

    async def terminate(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _error(404, 5, f'applications.argoproj.io "{request.match_info["name"]}" not found')
        if request.query.get("project") and request.query["project"] != app["spec"]["project"]:
            return _error(403, 7, "permission denied")
        if denied := self._denied("sync", app):  # terminate is checked as `sync`
            return denied
        state = app["status"].get("operationState")
        if not app.get("operation") or not state:
            return _error(400, 3, "Unable to terminate operation. No operation is in progress")
        state["phase"] = "Terminating"
        self.changed()
        return self.body(request, {})
