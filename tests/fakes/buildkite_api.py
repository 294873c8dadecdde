"""A fake Buildkite REST API (builds) as an aiohttp app, following Buildkite's documentation
(https://buildkite.com/docs/apis/rest-api/builds, .../rest-api/rate-limits, .../rest-api#pagination),
and the sender of Buildkite's build and job webhooks (https://buildkite.com/docs/apis/webhooks/pipelines).

    fake = FakeBuildkite(token="bkua_test")
    build = fake.add_build("acme/web", branch="main", state="running")
    server = await aiohttp_server(fake.app)
    ... ProviderClient(base_url=str(server.make_url("/v2")), auth=("Authorization", "Bearer bkua_test"), ...)
    fake.set_state(build["id"], "failed")

Builds and jobs have the fields of the documented examples. URLs in bodies name
`https://api.buildkite.com`; the fake rewrites them to its own address. A build waiting on a block
step is served as the API serves it: its last state (`passed`) with `blocked: true`.
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
from flowforged.signatures import signature_header

API = "https://api.buildkite.com"
WEB = "https://buildkite.com"
FINISHED = frozenset({"passed", "failed", "canceled", "skipped", "not_run"})
CANCELABLE = frozenset({"scheduled", "running", "failing"})  # #cancel-a-build
JOB_STATE = {"scheduled": "scheduled", "running": "running", "failing": "running", "canceling": "canceling"}


def bk_time(epoch: float) -> str:
    """Buildkite's timestamps: "2015-05-09T21:05:59.874Z"."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class FakeBuildkite(FakeProviderAPI):
    """Pipelines, builds and their jobs in memory, served as Buildkite's REST API v2 does."""

    def __init__(
        self,
        token: str = "bkua_fake",  # noqa: S107 (a fake's test token)
        *,
        rate_limit: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # https://buildkite.com/docs/apis/rest-api/rate-limits: 200 requests a minute per organization.
        super().__init__(token, rate_limit=rate_limit, window=60, clock=clock)
        self.pipelines: dict[str, dict[str, Any]] = {}  # "org/slug" -> pipeline
        self.builds: dict[str, dict[str, Any]] = {}  # build id -> build (with its jobs)
        self.created: list[dict[str, Any]] = []  # bodies of POST .../builds

    # --- the world ---

    def now(self) -> str:
        return bk_time(self.clock())

    def add_pipeline(self, key: str, *, name: str | None = None, default_branch: str = "main") -> dict[str, Any]:
        if key in self.pipelines:
            return self.pipelines[key]
        org, slug = key.split("/", 1)
        url = f"{API}/v2/organizations/{org}/pipelines/{slug}"
        pipeline = {
            "id": str(uuid.uuid4()),
            "graphql_id": "UGlwZWxpbmUtLS0" + slug,
            "url": url,
            "web_url": f"{WEB}/{org}/{slug}",
            "name": name or slug.replace("-", " ").title(),
            "slug": slug,
            "repository": f"git@github.com:{org}/{slug}.git",
            "branch_configuration": None,
            "default_branch": default_branch,
            "provider": {"id": "github", "webhook_url": "", "settings": {"repository": f"{org}/{slug}"}},
            "skip_queued_branch_builds": False,
            "cancel_running_branch_builds": False,
            "builds_url": f"{url}/builds",
            "badge_url": f"https://badge.buildkite.com/{slug}.svg",
            "created_at": self.now(),
            "scheduled_builds_count": 0,
            "running_builds_count": 0,
            "scheduled_jobs_count": 0,
            "running_jobs_count": 0,
            "waiting_jobs_count": 0,
        }
        self.pipelines[key] = pipeline
        return pipeline

    def add_build(
        self,
        key: str,
        *,
        branch: str = "main",
        state: str = "scheduled",
        commit: str | None = None,
        message: str = "Bumping to version 0.2-beta.6",
        created_at: str | None = None,
        jobs: tuple[str, ...] = ("RSpec", "Lint"),
        source: str = "webhook",
        env: dict[str, str] | None = None,
        rebuilt_from: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new build of the pipeline (created when missing), with one script job per name, a
        waiter between them as a `wait` step makes."""
        self.add_pipeline(key)
        org, slug = key.split("/", 1)
        number = 1 + sum(1 for b in self.builds.values() if b["_pipeline"] == key)
        build_id = str(uuid.uuid4())
        created = created_at or self.now()
        url = f"{API}/v2/organizations/{org}/pipelines/{slug}/builds/{number}"
        web_url = f"{WEB}/{org}/{slug}/builds/{number}"
        build: dict[str, Any] = {
            "id": build_id,
            "graphql_id": "QnVpbGQtLS0" + build_id[:8],
            "url": url,
            "web_url": web_url,
            "number": number,
            "state": "scheduled",
            "cancel_reason": None,
            "blocked": False,
            "message": message,
            "commit": commit or hashlib.sha1(build_id.encode(), usedforsecurity=False).hexdigest(),
            "branch": branch,
            "env": dict(env or {}),
            "source": source,
            "creator": {
                "id": "3d3c3bf0-7d58-4afe-8fe7-b3017d5504de",
                "name": "Keith Pitt",
                "email": "keith@buildkite.com",
                "avatar_url": "https://www.gravatar.com/avatar/e14f55d3f939977cecbf51b64ff6f861",
                "created_at": "2015-05-22T12:36:45.309Z",
            },
            "jobs": [],
            "created_at": created,
            "scheduled_at": created,
            "started_at": None,
            "failing_at": None,
            "finished_at": None,
            "meta_data": {},
            "pull_request": None,
            "rebuilt_from": rebuilt_from,
            "_pipeline": key,  # never served
        }
        for index, name in enumerate(jobs):
            if index:
                build["jobs"].append(self._job(build, "waiter", None))
            build["jobs"].append(self._job(build, "script", name))
        self.builds[build_id] = build
        if state != "scheduled":
            self.set_state(build_id, state, at=created if state in ("running", "failing") else None)
        return build

    def _job(self, build: dict[str, Any], kind: str, name: str | None) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        job: dict[str, Any] = {"id": job_id, "graphql_id": "Sm9iLS0t" + job_id[:8], "type": kind}
        if kind == "waiter":
            job.update(state="waiting")
            return job
        job.update(
            name=name,
            step_key=(name or "").lower().replace(" ", "-"),
            state="scheduled",
            agent_query_rules=["queue=default"],
            web_url=f"{build['web_url']}#{job_id}",
            log_url=f"{build['url']}/jobs/{job_id}/log",
            raw_log_url=f"{build['url']}/jobs/{job_id}/log.txt",
            command=f"bin/{(name or 'step').lower()}",
            soft_failed=False,
            exit_status=None,
            artifact_paths="",
            agent=None,
            created_at=build["created_at"],
            scheduled_at=build["created_at"],
            runnable_at=build["created_at"],
            started_at=None,
            finished_at=None,
            retried=False,
            retried_in_job_id=None,
            retries_count=None,
            parallel_group_index=None,
            parallel_group_total=None,
        )
        return job

    def set_state(
        self, build_id: str, state: str, *, at: str | None = None, failed_jobs: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Move a build on as Buildkite does: its times and its script jobs follow. A failed build
        fails its last job unless `failed_jobs` names the ones that failed; `blocked` is served as
        `passed` with blocked: true."""
        build = self.builds[build_id]
        now = at or self.now()
        blocked = state == "blocked"
        build.update(state="passed" if blocked else state, blocked=blocked)
        if state in ("running", "failing", "canceling") and not build["started_at"]:
            build["started_at"] = now
        if state == "failing" and not build["failing_at"]:
            build["failing_at"] = now
        if state in FINISHED or blocked:
            build["started_at"] = build["started_at"] or now
            build["finished_at"] = now
        else:
            build["finished_at"] = None
        scripts = [j for j in build["jobs"] if j["type"] == "script" and not j["retried"]]
        failing = failed_jobs if failed_jobs is not None else tuple(j["name"] for j in scripts[-1:])
        for job in scripts:
            if state in JOB_STATE:
                job["state"] = JOB_STATE[state]
                job["started_at"] = job["started_at"] or (now if state != "scheduled" else None)
            elif state in FINISHED or blocked:
                job["state"] = {"failed": "failed" if job["name"] in failing else "passed"}.get(
                    state, "passed" if blocked else state
                )
                job["started_at"] = job["started_at"] or build["started_at"]
                job["finished_at"] = now
                job["exit_status"] = 1 if job["state"] == "failed" else 0 if job["state"] == "passed" else None
        return build

    def find(self, key: str, number: int) -> dict[str, Any] | None:
        return next((b for b in self.builds.values() if b["_pipeline"] == key and b["number"] == number), None)

    def served(self, build: dict[str, Any]) -> dict[str, Any]:
        """The build as the REST API serves it: with its pipeline, without the fake's own fields."""
        out = {k: copy.deepcopy(v) for k, v in build.items() if not k.startswith("_")}
        out["pipeline"] = copy.deepcopy(self.pipelines[build["_pipeline"]])
        return out

    def rate_limit_next(self, n: int = 1) -> None:
        self.fail_next(n, 429, self._exceeded())

    def _exceeded(self) -> dict[str, Any]:
        # https://buildkite.com/docs/apis/rest-api/rate-limits#exceeding-the-rate-limit
        wait = max(self.reset_at - int(self.clock()), 0)
        return {
            "message": f"You have exceeded your API rate limit. Please wait {wait} seconds before making more "
            "requests.",
            "scope": "rest",
            "limit": self.rate_limit,
            "current": self.rate_limit + 1,
            "reset": wait,
        }

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and value == self.token

    def unauthorized(self) -> web.Response:
        return web.json_response(
            {
                "message": "Authentication required. Please supply a valid API Access Token: "
                "https://buildkite.com/docs/apis/rest-api#authentication"
            },
            status=401,
        )

    def limit_exceeded(self) -> web.Response:
        response = web.json_response(self._exceeded(), status=429)
        response.headers.update(self.rate_headers())
        return response

    def rate_headers(self) -> dict[str, str]:
        # https://buildkite.com/docs/apis/rest-api/rate-limits#checking-rate-limit-details: the reset is
        # in seconds from now, not an epoch time.
        return {
            "RateLimit-Scope": "rest",
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Limit": str(self.rate_limit),
            "RateLimit-Reset": str(max(self.reset_at - int(self.clock()), 0)),
        }

    def body(self, request: web.Request, data: Any, status: int = 200, headers: Any = None) -> web.Response:
        text = json.dumps(data).replace(API, str(request.url.origin()))
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        org = "/v2/organizations/{org}"
        builds = org + "/pipelines/{pipeline}/builds"
        router.add_get(org + "/builds", self.list_builds)
        router.add_get(builds, self.list_builds)
        router.add_post(builds, self.create_build)
        router.add_get(builds + "/{number:\\d+}", self.get_build)
        router.add_put(builds + "/{number:\\d+}/rebuild", self.rebuild)
        router.add_put(builds + "/{number:\\d+}/cancel", self.cancel)
        router.add_post(builds + "/{number:\\d+}/retry_failed_jobs", self.retry_failed_jobs)

    def _key(self, request: web.Request) -> str:
        return f"{request.match_info['org']}/{request.match_info['pipeline']}"

    def _build(self, request: web.Request) -> dict[str, Any] | None:
        return self.find(self._key(request), int(request.match_info["number"]))

    async def list_builds(self, request: web.Request) -> web.Response:
        """#list-builds-for-an-organization / #list-builds-for-a-pipeline: newest first, filtered by
        state (`finished`: passed, failed, blocked, canceled), branch, commit, created_from,
        created_to and finished_from; per_page up to 100, Link headers."""
        org = request.match_info["org"]
        if "pipeline" in request.match_info:
            if self._key(request) not in self.pipelines:
                return self.error(404, "No pipeline found")
            builds = [b for b in self.builds.values() if b["_pipeline"] == self._key(request)]
        else:
            builds = [b for b in self.builds.values() if b["_pipeline"].split("/", 1)[0] == org]
        q = request.query
        states = set(q.getall("state[]", [])) | set(q.getall("state", []))
        if "finished" in states:
            states |= {"passed", "failed", "blocked", "canceled"}
        if states:
            builds = [b for b in builds if b["state"] in states or ("blocked" in states and b["blocked"])]
        branches = set(q.getall("branch[]", [])) | set(q.getall("branch", []))
        if branches:
            builds = [b for b in builds if b["branch"] in branches]
        if "commit" in q:
            builds = [b for b in builds if b["commit"] == q["commit"]]
        try:
            if "created_from" in q:
                builds = [b for b in builds if _epoch(b["created_at"]) >= _epoch(q["created_from"])]
            if "created_to" in q:
                builds = [b for b in builds if _epoch(b["created_at"]) < _epoch(q["created_to"])]
            if "finished_from" in q:
                builds = [
                    b for b in builds if b["finished_at"] and _epoch(b["finished_at"]) >= _epoch(q["finished_from"])
                ]
        except ValueError:
            return self.error(422, "Invalid date")
        builds.sort(key=lambda b: (b["created_at"], b["number"]), reverse=True)
        per_page = int_param(request, "per_page", 30, 100)
        page = int_param(request, "page", 1)
        chunk, last = page_of(builds, page, per_page)
        link = self.links(request, page, last, always_first_last=False)
        return self.body(request, [self.served(b) for b in chunk], headers={"Link": link} if link else None)

    async def get_build(self, request: web.Request) -> web.Response:
        build = self._build(request)
        return self.body(request, self.served(build)) if build else self.error(404, "No build found")

    async def create_build(self, request: web.Request) -> web.Response:
        # #create-a-build: commit and branch are required; 201 and the build.
        key = self._key(request)
        if key not in self.pipelines:
            return self.error(404, "No pipeline found")
        payload = await json_body(request)
        if not isinstance(payload, dict):
            return self.error(400, "Problems parsing JSON")
        missing = [field for field in ("commit", "branch") if not payload.get(field)]
        if missing:
            errors = [{"field": field, "code": "missing_field"} for field in missing]
            return self.body(request, {"message": "Validation Failed", "errors": errors}, status=422)
        self.created.append({"pipeline": key, **payload})
        build = self.add_build(
            key,
            branch=payload["branch"],
            commit=payload["commit"],
            message=payload.get("message") or "",
            env=payload.get("env"),
            source="api",
        )
        return self.body(request, self.served(build), status=201)

    async def rebuild(self, request: web.Request) -> web.Response:
        # #rebuild-a-build: a new build of the same commit, branch, message and environment.
        build = self._build(request)
        if build is None:
            return self.error(404, "No build found")
        if build["state"] not in FINISHED:
            return self.error(422, "This build can't be rebuilt because it hasn't finished")
        names = tuple(j["name"] for j in build["jobs"] if j["type"] == "script" and not j["retried"])
        again = self.add_build(
            build["_pipeline"],
            branch=build["branch"],
            commit=build["commit"],
            message=build["message"],
            env=build["env"],
            source="api",
            jobs=names,
            rebuilt_from={"id": build["id"], "number": build["number"], "url": build["url"]},
        )
        return self.body(request, self.served(again))

    async def cancel(self, request: web.Request) -> web.Response:
        # #cancel-a-build: only a scheduled, running or failing build; 422 with the reason otherwise.
        build = self._build(request)
        if build is None:
            return self.error(404, "No build found")
        if build["state"] not in CANCELABLE or build["blocked"]:
            return self.error(422, f"This build can't be canceled because it's {build['state']}")
        self.set_state(build["id"], "canceled")
        build["cancel_reason"] = "Canceled through the API"
        return self.body(request, self.served(build))

    async def retry_failed_jobs(self, request: web.Request) -> web.Response:
        # POST (the changelog of 348-retry-all-failed-jobs-via-api): each failed job runs again (a new job),
        # the build runs again.
        build = self._build(request)
        if build is None:
            return self.error(404, "No build found")
        failed = [j for j in build["jobs"] if j["type"] == "script" and j["state"] == "failed" and not j["retried"]]
        if build["state"] not in FINISHED or not failed:
            return self.error(422, "This build has no failed jobs to retry")
        for job in failed:
            again = self._job(build, "script", job["name"])
            job.update(retried=True, retried_in_job_id=again["id"])
            build["jobs"].append(again)
        build.update(state="running", finished_at=None)
        for job in build["jobs"]:
            if job["type"] == "script" and not job["retried"] and job["state"] == "scheduled":
                job.update(state="running", started_at=self.now())
        return self.body(request, self.served(build))

    # --- webhooks ---

    def webhook_payload(self, build_id: str, event: str | None = None) -> dict[str, Any]:
        """A `build.*` event for a build as Buildkite would send it now: no jobs in the build
        (https://buildkite.com/docs/apis/webhooks/pipelines/build-events), its pipeline beside it."""
        build = self.builds[build_id]
        if event is None:
            event = "build.finished" if build["finished_at"] else f"build.{build['state']}"
        served = self.served(build)
        pipeline = served.pop("pipeline")
        served.pop("jobs")
        if build["blocked"]:
            served["state"] = "blocked"  # webhooks and notifications say so; the REST API does not
        return {
            "event": event,
            "build": served,
            "pipeline": pipeline,
            "sender": {"id": "0adfbc27", "name": "Keith Pitt"},
        }

    def job_payload(self, job: dict[str, Any], event: str = "job.finished") -> dict[str, Any]:
        build = next(b for b in self.builds.values() if any(j["id"] == job["id"] for j in b["jobs"]))
        payload = self.webhook_payload(build["id"])
        return {"event": event, "job": copy.deepcopy(job), **{k: payload[k] for k in ("build", "pipeline", "sender")}}

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        url: str | URL,
        payload: dict[str, Any],
        *,
        token: str | None = None,
        signing_token: str | None = None,
        timestamp: int | None = None,
    ) -> Delivery:
        """POST a delivery to the daemon with the webhook's Token as X-Buildkite-Token, or as the key of
        X-Buildkite-Signature (timestamp now unless given). Buildkite sends no delivery id: the fake
        names each delivery for the test's own records."""
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Buildkite-Request",
            "X-Buildkite-Event": payload["event"],
        }
        if token is not None:
            headers["X-Buildkite-Token"] = token
        if signing_token is not None:
            moment = int(self.clock()) if timestamp is None else timestamp
            headers["X-Buildkite-Signature"] = signature_header(signing_token, moment, body)
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(str(uuid.uuid4()), response.status, await response.read())
