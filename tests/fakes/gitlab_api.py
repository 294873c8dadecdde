"""A fake GitLab REST API (v4: pipelines, jobs, group projects) as an aiohttp app, following GitLab's
documentation (https://docs.gitlab.com/ee/api/pipelines.html, /api/jobs.html, /api/groups.html).

    fake = FakeGitLab(token="glpat-test")
    pipeline = fake.add_pipeline("group/sub/project", ref="main", status="running")
    server = await aiohttp_server(fake.app)
    ... ProviderClient(base_url=str(server.make_url("/api/v4")), auth=("PRIVATE-TOKEN", token), ...)
    fake.set_pipeline_status(pipeline["id"], "failed")

As the real API does, the pipeline list answers the short form of a pipeline (no user, duration or
finished_at); `GET .../pipelines/{id}` answers the full one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from flowforged.fakeapi import Delivery, FakeProviderAPI, int_param, json_body, page_of
from flowforged_plugins.gitlab import sign

WEB = "https://gitlab.example.com"
TERMINAL = frozenset({"success", "failed", "canceled", "skipped"})
# The pipeline's `detailed_status.text` in hooks: what the UI shows.
DETAILED = {"success": "passed", "manual": "blocked", "scheduled": "delayed"}
# https://docs.gitlab.com/ee/api/pipelines.html#list-project-pipelines: fields of the short form.
SHORT_FIELDS = (
    "id",
    "iid",
    "project_id",
    "sha",
    "ref",
    "status",
    "source",
    "created_at",
    "updated_at",
    "web_url",
    "name",
)
ORDER_BY = ("id", "status", "ref", "updated_at", "user_id")


def gitlab_time(epoch: float) -> str:
    """API timestamps: "2026-11-27T09:01:13.000Z"."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hook_time(iso: str | None) -> str | None:
    """Hook timestamps: "2016-08-12 15:23:28 UTC"."""
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class FakeGitLab(FakeProviderAPI):
    """Groups, projects, pipelines and jobs in memory, served as GitLab's REST API v4 does."""

    credential_headers = ("Authorization", "PRIVATE-TOKEN")
    # GitLab's throttles (Rack::Attack) count every request, a 304 included.
    not_modified_counts = True

    def __init__(
        self,
        token: str = "glpat-fake",  # noqa: S107 (a fake's test token)
        *,
        rate_limit: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # GitLab.com: 2000 authenticated API requests a minute
        # (https://docs.gitlab.com/ee/user/gitlab_com/index.html#gitlabcom-specific-rate-limits).
        super().__init__(token, rate_limit=rate_limit, window=60, clock=clock)
        self.groups: dict[int, dict[str, Any]] = {}
        self.projects: dict[int, dict[str, Any]] = {}
        self.pipelines: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, list[dict[str, Any]]] = {}  # pipeline id -> jobs, retried ones included
        self.jobs_fail: dict[int, int] = {}  # pipeline id -> the status its jobs endpoint answers instead
        self.triggered: list[dict[str, Any]] = []  # bodies of POST .../pipeline
        self._ids = iter(range(1000, 10**12))

    # --- the world ---

    def now(self) -> str:
        return gitlab_time(self.clock())

    def add_group(self, full_path: str) -> dict[str, Any]:
        """A group and, when missing, its parents."""
        for group in self.groups.values():
            if group["full_path"] == full_path:
                return group
        parent_path, _, path = full_path.rpartition("/")
        parent = self.add_group(parent_path) if parent_path else None
        group_id = next(self._ids)
        group = {
            "id": group_id,
            "name": path,
            "path": path,
            "full_name": full_path.replace("/", " / "),
            "full_path": full_path,
            "parent_id": parent["id"] if parent else None,
            "web_url": f"{WEB}/groups/{full_path}",
        }
        self.groups[group_id] = group
        return group

    def add_project(self, path_with_namespace: str, default_branch: str = "main") -> dict[str, Any]:
        found = self.find_project(path_with_namespace)
        if found:
            return found
        namespace, _, path = path_with_namespace.rpartition("/")
        group = self.add_group(namespace)
        project_id = next(self._ids)
        project = {
            "id": project_id,
            "name": path,
            "path": path,
            "path_with_namespace": path_with_namespace,
            "name_with_namespace": f"{group['full_name']} / {path}",
            "description": None,
            "default_branch": default_branch,
            "web_url": f"{WEB}/{path_with_namespace}",
            "http_url_to_repo": f"{WEB}/{path_with_namespace}.git",
            "created_at": self.now(),
            "last_activity_at": self.now(),
            "namespace": {
                "id": group["id"],
                "name": group["name"],
                "path": group["path"],
                "kind": "group",
                "full_path": group["full_path"],
                "parent_id": group["parent_id"],
            },
        }
        self.projects[project_id] = project
        return project

    def find_project(self, key: str | int) -> dict[str, Any] | None:
        """By id or by path (the API takes either, the path URL-encoded)."""
        if str(key).isdigit():
            return self.projects.get(int(key))
        return next((p for p in self.projects.values() if p["path_with_namespace"] == key), None)

    def add_pipeline(
        self,
        project: str | int,
        *,
        ref: str = "main",
        status: str = "created",
        source: str = "push",
        sha: str | None = None,
        created_at: str | None = None,
        user: str = "root",
        tag: bool = False,
        message: str = "Update README.md",
    ) -> dict[str, Any]:
        """A new pipeline (the project is created when a path names one that does not exist)."""
        proj = self.find_project(project) or self.add_project(str(project))
        pipeline_id = next(self._ids)
        created = created_at or self.now()
        pipeline = {
            "id": pipeline_id,
            "iid": 1 + sum(1 for p in self.pipelines.values() if p["project_id"] == proj["id"]),
            "project_id": proj["id"],
            "sha": sha or hashlib.sha1(f"{pipeline_id}".encode(), usedforsecurity=False).hexdigest(),
            "ref": ref,
            "status": "created",
            "source": source,
            "name": None,
            "created_at": created,
            "updated_at": created,
            "web_url": f"{proj['web_url']}/-/pipelines/{pipeline_id}",
            "before_sha": "0" * 40,
            "tag": tag,
            "yaml_errors": None,
            "user": {
                "id": 1,
                "name": user.title(),
                "username": user,
                "state": "active",
                "avatar_url": None,
                "web_url": f"{WEB}/{user}",
            },
            "started_at": None,
            "finished_at": None,
            "committed_at": None,
            "duration": None,
            "queued_duration": None,
            "coverage": None,
            "detailed_status": None,
            "_message": message,  # the commit message, for hooks; never served
        }
        self.pipelines[pipeline_id] = pipeline
        self.jobs[pipeline_id] = []
        self.set_pipeline_status(pipeline_id, status, at=created)
        return pipeline

    def set_pipeline_status(self, pipeline_id: int, status: str, *, at: str | None = None) -> dict[str, Any]:
        """Move a pipeline on as GitLab does: updated_at, started_at, finished_at and duration follow."""
        pipeline = self.pipelines[pipeline_id]
        now = at or self.now()
        pipeline.update(status=status, updated_at=now)
        if status == "running" and not pipeline["started_at"]:
            pipeline["started_at"] = now
            pipeline["queued_duration"] = round(_epoch(now) - _epoch(pipeline["created_at"]), 1)
        if status in TERMINAL:
            pipeline["finished_at"] = now
            started = pipeline["started_at"] or pipeline["created_at"]
            pipeline["duration"] = int(_epoch(now) - _epoch(started))
        else:
            pipeline.update(finished_at=None, duration=None)
        text = DETAILED.get(status, status)
        pipeline["detailed_status"] = {
            "icon": f"status_{status}",
            "text": text,
            "label": text,
            "group": status,
            "has_details": True,
            "details_path": pipeline["web_url"],
        }
        return pipeline

    def add_job(self, pipeline_id: int, name: str, *, stage: str = "test", status: str = "created") -> dict[str, Any]:
        pipeline = self.pipelines[pipeline_id]
        project = self.projects[pipeline["project_id"]]
        job_id = next(self._ids)
        job = {
            "id": job_id,
            "name": name,
            "stage": stage,
            "status": status,
            "ref": pipeline["ref"],
            "tag": pipeline["tag"],
            "allow_failure": False,
            "created_at": self.now(),
            "started_at": self.now() if status not in ("created", "pending", "manual") else None,
            "finished_at": self.now() if status in TERMINAL else None,
            "duration": 0.0 if status in TERMINAL else None,
            "queued_duration": None,
            "failure_reason": "script_failure" if status == "failed" else None,
            "web_url": f"{project['web_url']}/-/jobs/{job_id}",
            "user": pipeline["user"],
            "commit": {"id": pipeline["sha"], "short_id": pipeline["sha"][:8], "title": pipeline["_message"]},
            "pipeline": {k: pipeline[k] for k in ("id", "project_id", "ref", "sha", "status")},
            "retried": False,
        }
        self.jobs[pipeline_id].append(job)
        return job

    def rate_limit_next(self, n: int = 1, retry_after: int = 60) -> None:
        self.fail_next(n, 429, "Retry later\n", {"Retry-After": str(retry_after)})

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        # https://docs.gitlab.com/ee/api/rest/authentication.html: PRIVATE-TOKEN or a Bearer token
        if request.headers.get("PRIVATE-TOKEN") == self.token:
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and value == self.token

    def unauthorized(self) -> web.Response:
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    def limit_exceeded(self) -> web.Response:
        # https://docs.gitlab.com/ee/administration/settings/user_and_ip_rate_limits.html#response-headers
        wait = max(self.reset_at - int(self.clock()), 0)
        response = web.Response(status=429, text="Retry later\n", headers={"Retry-After": str(wait)})
        response.headers.update(self.rate_headers())
        return response

    def rate_headers(self) -> dict[str, str]:
        reset_time = datetime.fromtimestamp(self.reset_at, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
        return {
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": str(self.rate_limit),
            "RateLimit-Observed": str(self.used),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_at),
            "RateLimit-ResetTime": reset_time,
        }

    def listing(self, request: web.Request, items: list[Any]) -> web.Response:
        """A page of `items` with GitLab's offset-pagination headers
        (https://docs.gitlab.com/ee/api/rest/index.html#pagination-link-header)."""
        per_page = int_param(request, "per_page", 20, 100)
        page = int_param(request, "page", 1)
        chunk, last = page_of(items, page, per_page)
        headers = {
            "x-page": str(page),
            "x-per-page": str(per_page),
            "x-next-page": str(page + 1) if page < last else "",
            "x-prev-page": str(page - 1) if page > 1 else "",
            "x-total": str(len(items)),
            "x-total-pages": str(last),
        }
        headers["Link"] = self.links(request, page, last, always_first_last=True) or ""
        return self.body(request, chunk, headers=headers)

    @staticmethod
    def served(pipeline: dict[str, Any], short: bool = False) -> dict[str, Any]:
        if short:
            return {k: pipeline[k] for k in SHORT_FIELDS}
        return {k: copy.deepcopy(v) for k, v in pipeline.items() if not k.startswith("_")}

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        base = "/api/v4/projects/{project}"
        router.add_get(base + "/pipelines", self.list_pipelines)
        router.add_get(base + "/pipelines/{pipeline_id:\\d+}", self.get_pipeline)
        router.add_get(base + "/pipelines/{pipeline_id:\\d+}/jobs", self.list_jobs)
        router.add_post(base + "/pipeline", self.create_pipeline)
        router.add_post(base + "/pipelines/{pipeline_id:\\d+}/retry", self.retry)
        router.add_post(base + "/pipelines/{pipeline_id:\\d+}/cancel", self.cancel)
        router.add_get("/api/v4/groups/{group}/projects", self.group_projects)
        router.add_get(base, self.get_project)

    def _project(self, request: web.Request) -> dict[str, Any] | None:
        return self.find_project(request.match_info["project"])  # aiohttp decodes group%2Fproject

    def _pipeline(self, request: web.Request) -> dict[str, Any] | None:
        project = self._project(request)
        pipeline = self.pipelines.get(int(request.match_info["pipeline_id"]))
        return pipeline if project and pipeline and pipeline["project_id"] == project["id"] else None

    async def get_project(self, request: web.Request) -> web.Response:
        # https://docs.gitlab.com/ee/api/projects.html#get-a-single-project
        project = self._project(request)
        return self.body(request, project) if project else self.error(404, "404 Project Not Found")

    async def list_pipelines(self, request: web.Request) -> web.Response:
        project = self._project(request)
        if project is None:
            return self.error(404, "404 Project Not Found")
        q = request.query
        items = [p for p in self.pipelines.values() if p["project_id"] == project["id"]]
        for field in ("ref", "status", "source", "sha"):
            if field in q:
                items = [p for p in items if p[field] == q[field]]
        if "username" in q:
            items = [p for p in items if p["user"]["username"] == q["username"]]
        scope = q.get("scope")
        if scope in ("running", "pending"):
            items = [p for p in items if p["status"] == scope]
        elif scope == "finished":
            items = [p for p in items if p["status"] in TERMINAL]
        elif scope in ("branches", "tags"):
            items = [p for p in items if p["tag"] == (scope == "tags")]
        try:
            if "updated_after" in q:
                items = [p for p in items if _epoch(p["updated_at"]) > _epoch(q["updated_after"])]
            if "updated_before" in q:
                items = [p for p in items if _epoch(p["updated_at"]) < _epoch(q["updated_before"])]
        except ValueError:
            return web.json_response({"error": "updated_after is invalid"}, status=400)
        order_by = q.get("order_by", "id")
        if order_by not in ORDER_BY:
            return web.json_response({"error": "order_by does not have a valid value"}, status=400)
        sort_key = {"user_id": lambda p: p["user"]["id"]}.get(order_by, lambda p: p[order_by])
        items.sort(key=lambda p: (sort_key(p), p["id"]), reverse=q.get("sort", "desc") == "desc")
        return self.listing(request, [self.served(p, short=True) for p in items])

    async def get_pipeline(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        return self.body(request, self.served(pipeline)) if pipeline else self.error(404, "404 Not found")

    async def list_jobs(self, request: web.Request) -> web.Response:
        # https://docs.gitlab.com/ee/api/jobs.html#list-pipeline-jobs: scope[] and include_retried
        pipeline = self._pipeline(request)
        if pipeline is None:
            return self.error(404, "404 Not found")
        if pipeline["id"] in self.jobs_fail:
            status = self.jobs_fail[pipeline["id"]]
            return self.error(status, "404 Not found" if status == 404 else "500 Internal Server Error")
        jobs = self.jobs[pipeline["id"]]
        if request.query.get("include_retried") != "true":
            jobs = [j for j in jobs if not j["retried"]]
        scopes = request.query.getall("scope[]", []) + request.query.getall("scope", [])
        if scopes:
            jobs = [j for j in jobs if j["status"] in scopes]
        served = [
            {
                **{k: v for k, v in j.items() if k != "retried"},
                "pipeline": {**j["pipeline"], "status": pipeline["status"]},
            }
            for j in jobs
        ]
        return self.listing(request, served)

    async def group_projects(self, request: web.Request) -> web.Response:
        key = request.match_info["group"]
        group = (
            self.groups.get(int(key))
            if key.isdigit()
            else next((g for g in self.groups.values() if g["full_path"] == key), None)
        )
        if group is None:
            return self.error(404, "404 Group Not Found")
        path = group["full_path"]
        subgroups = request.query.get("include_subgroups") == "true"
        items = [
            p
            for p in self.projects.values()
            if p["namespace"]["full_path"] == path or subgroups and p["namespace"]["full_path"].startswith(path + "/")
        ]
        items.sort(key=lambda p: p["id"], reverse=True)  # the default order is created_at, newest first
        return self.listing(request, items)

    async def create_pipeline(self, request: web.Request) -> web.Response:
        # https://docs.gitlab.com/ee/api/pipelines.html#create-a-new-pipeline
        project = self._project(request)
        if project is None:
            return self.error(404, "404 Project Not Found")
        payload = await json_body(request) or {}
        ref = payload.get("ref") or request.query.get("ref")
        if not ref:
            return web.json_response({"error": "ref is missing"}, status=400)
        self.triggered.append({"project": project["path_with_namespace"], **payload, "ref": ref})
        pipeline = self.add_pipeline(project["id"], ref=ref, source="api")
        return self.body(request, self.served(pipeline), status=201)

    async def retry(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        if pipeline is None:
            return self.error(404, "404 Not found")
        retried = [j for j in self.jobs[pipeline["id"]] if not j["retried"] and j["status"] in ("failed", "canceled")]
        for job in retried:
            job["retried"] = True
            self.add_job(pipeline["id"], job["name"], stage=job["stage"], status="pending")
        if retried:
            self.set_pipeline_status(pipeline["id"], "pending")
        return self.body(request, self.served(pipeline), status=201)

    async def cancel(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        if pipeline is None:
            return self.error(404, "404 Not found")
        if pipeline["status"] not in TERMINAL:
            for job in self.jobs[pipeline["id"]]:
                if job["status"] not in TERMINAL:
                    job["status"] = "canceled"
            self.set_pipeline_status(pipeline["id"], "canceled")
        return self.body(request, self.served(pipeline))

    # --- webhooks ---

    def webhook_payload(self, pipeline_id: int) -> dict[str, Any]:
        """A Pipeline Hook for a pipeline as it is now
        (https://docs.gitlab.com/ee/user/project/integrations/webhook_events.html#pipeline-events)."""
        p = self.pipelines[pipeline_id]
        project = self.projects[p["project_id"]]
        jobs = [j for j in self.jobs[pipeline_id] if not j["retried"]]
        return {
            "object_kind": "pipeline",
            "object_attributes": {
                "id": p["id"],
                "iid": p["iid"],
                "name": p["name"],
                "ref": p["ref"],
                "tag": p["tag"],
                "sha": p["sha"],
                "before_sha": p["before_sha"],
                "source": p["source"],
                "status": p["status"],
                # Hooks send the detailed status' label; the API its text, label and group.
                "detailed_status": p["detailed_status"]["label"],
                "stages": list(dict.fromkeys(j["stage"] for j in jobs)),
                "created_at": hook_time(p["created_at"]),
                "finished_at": hook_time(p["finished_at"]),
                "duration": p["duration"],
                "queued_duration": p["queued_duration"],
                "variables": [],
                "url": p["web_url"],
            },
            "merge_request": None,
            "user": {
                "id": p["user"]["id"],
                "name": p["user"]["name"],
                "username": p["user"]["username"],
                "avatar_url": None,
                "email": "[REDACTED]",
            },
            "project": {
                "id": project["id"],
                "name": project["name"],
                "description": None,
                "web_url": project["web_url"],
                "avatar_url": None,
                "namespace": project["namespace"]["name"],
                "path_with_namespace": project["path_with_namespace"],
                "default_branch": project["default_branch"],
            },
            "commit": {
                "id": p["sha"],
                "message": p["_message"] + "\n",
                "title": p["_message"].split("\n")[0],
                "timestamp": p["created_at"],
                "url": f"{project['web_url']}/-/commit/{p['sha']}",
                "author": {"name": p["user"]["name"], "email": f"{p['user']['username']}@example.com"},
            },
            "source_pipeline": None,
            "builds": [
                {
                    "id": j["id"],
                    "stage": j["stage"],
                    "name": j["name"],
                    "status": j["status"],
                    "created_at": hook_time(j["created_at"]),
                    "started_at": hook_time(j["started_at"]),
                    "finished_at": hook_time(j["finished_at"]),
                    "duration": j["duration"],
                    "failure_reason": j["failure_reason"],
                    "allow_failure": j["allow_failure"],
                    "manual": False,
                    "when": "on_success",
                    "user": p["user"],
                }
                for j in jobs
            ],
        }

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        url: str | URL,
        pipeline_id: int,
        token: str | None = None,
        *,
        signing_token: str | None = None,
        payload: dict[str, Any] | None = None,
        event: str = "Pipeline Hook",
    ) -> Delivery:
        """POST a delivery to the daemon with X-Gitlab-Token `token` and, given a signing token, the
        webhook-id/-timestamp/-signature headers. `payload` replaces the built one (a Job Hook, say)."""
        body = json.dumps(payload or self.webhook_payload(pipeline_id)).encode()
        delivery_id = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitLab/17.6.0",
            "X-Gitlab-Event": event,
            "X-Gitlab-Instance": WEB,
            "X-Gitlab-Webhook-UUID": "0f2e6e1a-7b0e-4c1d-9d1e-5e7b3f9a2c11",
            "X-Gitlab-Event-UUID": delivery_id,
            # https://docs.gitlab.com/ee/user/project/integrations/webhooks.html#delivery-headers:
            # the same Idempotency-Key for every retry of one delivery.
            "Idempotency-Key": delivery_id,
        }
        if token is not None:
            headers["X-Gitlab-Token"] = token
        if signing_token is not None:
            timestamp = str(int(self.clock()))
            headers.update(
                {
                    "webhook-id": delivery_id,
                    "webhook-timestamp": timestamp,
                    "webhook-signature": sign(signing_token, delivery_id, timestamp, body),
                }
            )
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(delivery_id, response.status, await response.read())
