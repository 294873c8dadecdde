"""A fake GitHub REST API (Actions endpoints) as an aiohttp app, following GitHub's documentation.

    fake = FakeGitHub(token="ghp_test")
    run = fake.add_run("octo-org/octo-repo", ".github/workflows/ci.yml", status="in_progress")
    server = await aiohttp_server(fake.app)
    ... ProviderClient(base_url=str(server.make_url("")), ...)
    fake.set_run_status(run["id"], "completed", "failure")
    assert all("If-None-Match" in r.headers for r in fake.requests)

Run objects are the REST reference example (fixtures/github/rest/list-workflow-runs.200.json) with
their fields changed; job objects come from the `workflow_job` webhook example. URLs in bodies name
`https://api.github.com`; the fake rewrites them to its own address, as GitHub Enterprise would.

The base class `FakeProviderAPI` (flowforged/fakeapi.py, the test kit's) holds what every fake
shares: the request log, auth, scripted faults, rate-limit counting, ETags and 304s, and pages.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from flowforged.fakeapi import (  # noqa: F401 - the shared names the other fakes and tests import from here
    Delivery,
    FakeProviderAPI,
    Fault,
    RecordedRequest,
    etag_matches,
    int_param,
    json_body,
    page_of,
    weak_etag,
)
from flowforged_plugins.github import sign

# The same real payloads tests/conftest.py reads.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
API = "https://api.github.com"
WEB = "https://github.com"
DOCS = "https://docs.github.com/rest"
# https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit and have been temporarily blocked from content creation. "
    "Please retry your request again later."
)


@functools.cache
def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@functools.cache
def _fixture_text(name: str, *path: str | int) -> str:
    """A part of a fixture as JSON text: json.loads of it is a fresh copy, several times faster than
    a deepcopy (a bench makes 15,000 runs)."""
    part: Any = _fixture(name)
    for key in path:
        part = part[key]
    return json.dumps(part)


# --- GitHub -------------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def created_matches(created: str, query: str) -> bool:
    """GitHub's date-range syntax for `created` (https://docs.github.com/en/search-github/getting-started-
    with-searching-on-github/understanding-the-search-syntax#query-for-dates): >=, <=, >, <, a..b, a day."""
    when = _parse_iso(created)
    for op in (">=", "<=", ">", "<"):
        if query.startswith(op):
            bound = _parse_iso(query[len(op) :])
            return {">=": when >= bound, "<=": when <= bound, ">": when > bound, "<": when < bound}[op]
    if ".." in query:
        low, high = query.split("..", 1)
        return (low == "*" or when >= _parse_iso(low)) and (high == "*" or when <= _parse_iso(high))
    if len(query) == 10:  # a date: the whole day
        return when.date().isoformat() == query
    return when == _parse_iso(query)


class FakeGitHub(FakeProviderAPI):
    """Repos, workflows, runs and jobs in memory, served as GitHub's REST API does."""

    def __init__(
        self,
        token: str = "ghp_fake",  # noqa: S107 (a fake's test token)
        *,
        rate_limit: int = 5000,
        clock: Callable[[], float] = time.time,
        per_minute: int | None = None,
        minute: float = 60.0,
    ) -> None:
        # https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api: 5000 an hour;
        # the secondary limit, 900 points a minute for REST endpoints, is enforced when per_minute is set.
        super().__init__(token, rate_limit=rate_limit, window=3600, clock=clock, per_minute=per_minute, minute=minute)
        self.repos: dict[str, dict[str, Any]] = {}
        self.workflows: dict[int, dict[str, Any]] = {}
        self.runs: dict[int, dict[str, Any]] = {}
        self._repo_runs: dict[str, list[int]] = collections.defaultdict(list)  # a bench has 1000 repos
        self.jobs: dict[int, list[dict[str, Any]]] = {}  # run id -> jobs of every attempt
        # run id -> the status its jobs endpoint answers instead (404 for jobs GitHub no longer has,
        # 5xx for an outage of that endpoint alone)
        self.jobs_fail: dict[int, int] = {}
        self.dispatches: list[dict[str, Any]] = []
        # GitHub.com answers a dispatch with return_run_details 200 and the run; an older GitHub
        # Enterprise Server ignores the parameter and answers 204.
        self.return_run_details = True
        self._workflow_repo: dict[int, str] = {}
        self._repo_workflows: dict[str, list[int]] = collections.defaultdict(list)  # a bench has 15,000
        self._run_numbers: collections.Counter[int] = collections.Counter()  # workflow id -> runs so far
        self._ids = iter(range(30433642, 10**12))

    # --- the world ---

    def now(self) -> str:
        return _iso(self.clock())

    def add_repo(
        self, full_name: str, default_branch: str = "main", *, owner_type: str = "Organization", archived: bool = False
    ) -> dict[str, Any]:
        if full_name in self.repos:
            return self.repos[full_name]
        template = _fixture("github/rest/list-workflow-runs.200.json")["workflow_runs"][0]["repository"]
        text = json.dumps(template).replace("octocat/Hello-World", full_name)
        repo = json.loads(text)
        owner = full_name.split("/", 1)[0]
        repo.update(
            id=next(self._ids),
            name=full_name.split("/", 1)[1],
            full_name=full_name,
            default_branch=default_branch,
            private=False,
        )
        repo["owner"] = {
            **repo["owner"],
            "login": owner,
            "url": f"{API}/users/{owner}",
            "html_url": f"{WEB}/{owner}",
            "type": owner_type,
        }
        repo["archived"] = archived
        self.repos[full_name] = repo
        return repo

    def add_workflow(
        self, repo: str, path: str = ".github/workflows/ci.yml", name: str | None = None
    ) -> dict[str, Any]:
        for workflow_id in self._repo_workflows[repo]:
            if self.workflows[workflow_id]["path"] == path:
                return self.workflows[workflow_id]
        self.add_repo(repo)
        workflow_id = next(self._ids)
        workflow = {
            "id": workflow_id,
            "node_id": f"W_{workflow_id}",
            "name": name or Path(path).stem,
            "path": path,
            "state": "active",
            "created_at": self.now(),
            "updated_at": self.now(),
            "url": f"{API}/repos/{repo}/actions/workflows/{workflow_id}",
            "html_url": f"{WEB}/{repo}/blob/main/{path}",
            "badge_url": f"{WEB}/{repo}/workflows/{name or Path(path).stem}/badge.svg",
        }
        self.workflows[workflow_id] = workflow
        self._workflow_repo[workflow_id] = repo
        self._repo_workflows[repo].append(workflow_id)
        return workflow

    def add_run(
        self,
        repo: str,
        workflow: str = ".github/workflows/ci.yml",
        *,
        branch: str = "main",
        status: str = "queued",
        conclusion: str | None = None,
        event: str = "push",
        sha: str | None = None,
        created_at: str | None = None,
        message: str = "Update README.md",
        actor: str = "octocat",
    ) -> dict[str, Any]:
        """A new run of `workflow` (a path; the repo and workflow are created when missing)."""
        wf = self.add_workflow(repo, workflow)
        run_id = next(self._ids)
        self._run_numbers[wf["id"]] += 1
        number = self._run_numbers[wf["id"]]
        sha = sha or hashlib.sha1(f"{repo}{run_id}".encode(), usedforsecurity=False).hexdigest()
        created = created_at or self.now()
        run = json.loads(_fixture_text("github/rest/list-workflow-runs.200.json", "workflow_runs", 0))
        run_url = f"{API}/repos/{repo}/actions/runs/{run_id}"
        user = {**run["actor"], "login": actor}
        run.update(
            id=run_id,
            name=wf["name"],
            node_id=f"WFR_{run_id}",
            head_branch=branch,
            head_sha=sha,
            path=workflow,
            run_number=number,
            event=event,
            display_title=message.split("\n")[0],
            status=status,
            conclusion=conclusion,
            workflow_id=wf["id"],
            url=run_url,
            html_url=f"{WEB}/{repo}/actions/runs/{run_id}",
            created_at=created,
            updated_at=created,
            actor=user,
            triggering_actor=user,
            run_attempt=1,
            run_started_at=created,
            jobs_url=f"{run_url}/jobs",
            logs_url=f"{run_url}/logs",
            artifacts_url=f"{run_url}/artifacts",
            cancel_url=f"{run_url}/cancel",
            rerun_url=f"{run_url}/rerun",
            workflow_url=wf["url"],
            check_suite_url=f"{API}/repos/{repo}/check-suites/{run_id}",
            repository=self.repos[repo],
            head_repository=self.repos[repo],
        )
        run["head_commit"] = {
            **run["head_commit"],
            "id": sha,
            "message": message,
            "timestamp": created,
            "author": {"name": "Octo Cat", "email": "octocat@github.com"},
        }
        self.runs[run_id] = run
        self._repo_runs[repo].append(run_id)
        self.jobs[run_id] = []
        return run

    def set_run_status(self, run_id: int, status: str, conclusion: str | None = None) -> dict[str, Any]:
        """Move a run on, as GitHub does: updated_at changes, so its ETags change."""
        run = self.runs[run_id]
        run.update(status=status, conclusion=conclusion if status == "completed" else None, updated_at=self.now())
        if status == "in_progress":
            run["run_started_at"] = self.now()
        return run

    def add_job(
        self, run_id: int, name: str, *, status: str = "queued", conclusion: str | None = None
    ) -> dict[str, Any]:
        run = self.runs[run_id]
        repo = run["repository"]["full_name"]
        job = copy.deepcopy(_fixture("github/webhooks/workflow_job.completed.failure.json")["workflow_job"])
        job_id = next(self._ids)
        done = status == "completed"
        job.update(
            id=job_id,
            run_id=run_id,
            run_url=run["url"],
            run_attempt=run["run_attempt"],
            node_id=f"CR_{job_id}",
            head_sha=run["head_sha"],
            head_branch=run["head_branch"],
            url=f"{API}/repos/{repo}/actions/jobs/{job_id}",
            html_url=f"{WEB}/{repo}/actions/runs/{run_id}/job/{job_id}",
            check_run_url=f"{API}/repos/{repo}/check-runs/{job_id}",
            status=status,
            conclusion=conclusion if done else None,
            created_at=self.now(),
            started_at=self.now() if status != "queued" else None,
            completed_at=self.now() if done else None,
            name=name,
            workflow_name=run["name"],
            steps=[] if not done else job["steps"],
        )
        self.jobs[run_id].append(job)
        return job

    def rate_limit_next(self, n: int = 1, retry_after: int = 60) -> None:
        self.fail_next(
            n,
            429,
            {"message": "API rate limit exceeded", "documentation_url": DOCS},
            {"Retry-After": str(retry_after)},
        )

    def secondary_limit_next(self, n: int = 1, retry_after: int | None = 60) -> None:
        """GitHub answers a secondary rate limit with 403, the message, and maybe retry-after."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fail_next(n, 403, {"message": SECONDARY_MESSAGE, "documentation_url": DOCS}, headers)

    def points(self, method: str) -> int:
        # https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#calculating-points-for-the-secondary-rate-limit
        return 1 if method in ("GET", "HEAD", "OPTIONS") else 5

    def minute_exceeded(self) -> web.Response:
        """GitHub answers a secondary rate limit with 403 (or 429), its message and retry-after."""
        body = {"message": SECONDARY_MESSAGE, "documentation_url": DOCS}
        return web.json_response(body, status=403, headers={"Retry-After": "60"})

    def forbid_next(self, n: int = 1, message: str = "Resource not accessible by integration") -> None:
        self.fail_next(n, 403, {"message": message, "documentation_url": DOCS})

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and value == self.token

    def unauthorized(self) -> web.Response:
        return web.json_response({"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}, status=401)

    def limit_exceeded(self) -> web.Response:
        # https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-primary-rate-limit
        response = web.json_response(
            {"message": "API rate limit exceeded for user ID 1.", "documentation_url": DOCS}, status=403
        )
        response.headers.update(self.rate_headers())
        return response

    def rate_headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-used": str(self.used),
            "x-ratelimit-reset": str(self.reset_at),
            "x-ratelimit-resource": "core",
        }

    def error(self, status: int, message: Any) -> web.Response:
        return web.json_response({"message": message, "documentation_url": DOCS, "status": str(status)}, status=status)

    def body(self, request: web.Request, data: Any, status: int = 200, headers: Any = None) -> web.Response:
        origin = str(request.url.origin())
        text = json.dumps(data).replace(API, origin)
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)

    def listing(self, request: web.Request, items: list[Any], wrap: Callable[[list[Any]], Any]) -> web.Response:
        """A page of `items`: per_page (default 30, at most 100) and page, with Link headers."""
        per_page = int_param(request, "per_page", 30, 100)
        page = int_param(request, "page", 1)
        chunk, last = page_of(items, page, per_page)
        link = self.links(request, page, last, always_first_last=False)
        return self.body(request, wrap(chunk), headers={"Link": link} if link else None)

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        base = "/repos/{owner}/{repo}/actions"
        router.add_get(base + "/runs", self.list_runs)
        router.add_get(base + "/workflows", self.list_workflows)
        router.add_get(base + "/workflows/{workflow}/runs", self.list_runs)
        router.add_get(base + "/runs/{run_id:\\d+}", self.get_run)
        router.add_get(base + "/runs/{run_id:\\d+}/jobs", self.list_jobs)
        router.add_get(base + "/runs/{run_id:\\d+}/attempts/{attempt:\\d+}/jobs", self.list_jobs)
        router.add_post(base + "/runs/{run_id:\\d+}/rerun", self.rerun)
        router.add_post(base + "/runs/{run_id:\\d+}/rerun-failed-jobs", self.rerun)
        router.add_post(base + "/runs/{run_id:\\d+}/cancel", self.cancel)
        router.add_post(base + "/runs/{run_id:\\d+}/force-cancel", self.cancel)
        router.add_post(base + "/workflows/{workflow}/dispatches", self.dispatch)
        router.add_get("/orgs/{org}/repos", self.org_repos)
        router.add_get("/users/{user}/repos", self.user_repos)

    def _run(self, request: web.Request) -> dict[str, Any] | None:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        run = self.runs.get(int(request.match_info["run_id"]))
        return run if run and run["repository"]["full_name"] == repo else None

    def _workflow(self, repo: str, key: str) -> dict[str, Any] | None:
        """A repository's workflow by its id or its file name, as the workflow endpoints take it."""
        for workflow_id in self._repo_workflows.get(repo, []):
            workflow = self.workflows[workflow_id]
            if key in (str(workflow_id), Path(workflow["path"]).name):
                return workflow
        return None

    async def list_workflows(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflows#list-repository-workflows
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if repo not in self.repos:
            return self.error(404, "Not Found")
        workflows = [self.workflows[i] for i in self._repo_workflows.get(repo, [])]
        return self.listing(request, workflows, lambda chunk: {"total_count": len(workflows), "workflows": chunk})

    async def list_runs(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflow-runs#list-workflow-runs-for-a-repository, and
        # #list-workflow-runs-for-a-workflow when the path names a workflow
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if repo not in self.repos:
            return self.error(404, "Not Found")
        q = request.query
        runs = [self.runs[i] for i in self._repo_runs[repo] if i in self.runs]
        if "workflow" in request.match_info:
            workflow = self._workflow(repo, request.match_info["workflow"])
            if workflow is None:
                return self.error(404, "Not Found")
            runs = [r for r in runs if r["workflow_id"] == workflow["id"]]
        if "branch" in q:
            runs = [r for r in runs if r["head_branch"] == q["branch"]]
        if "status" in q:  # a status or a conclusion
            runs = [r for r in runs if q["status"] in (r["status"], r["conclusion"])]
        if "event" in q:
            runs = [r for r in runs if r["event"] == q["event"]]
        if "head_sha" in q:
            runs = [r for r in runs if r["head_sha"] == q["head_sha"]]
        if "actor" in q:
            runs = [r for r in runs if r["actor"]["login"] == q["actor"]]
        if "created" in q:
            try:
                runs = [r for r in runs if created_matches(r["created_at"], q["created"])]
            except ValueError:
                return self.error(422, "Validation Failed")
        runs.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return self.listing(request, runs, lambda chunk: {"total_count": len(runs), "workflow_runs": chunk})

    async def get_run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        return self.body(request, run) if run else self.error(404, "Not Found")

    async def list_jobs(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflow-jobs
        run = self._run(request)
        if run is None:
            return self.error(404, "Not Found")
        if run["id"] in self.jobs_fail:
            status = self.jobs_fail[run["id"]]
            return self.error(status, "Not Found" if status == 404 else "Server Error")
        jobs = self.jobs[run["id"]]
        if "attempt" in request.match_info:
            attempt = int(request.match_info["attempt"])
            if not 1 <= attempt <= run["run_attempt"]:
                return self.error(404, "Not Found")
            jobs = [j for j in jobs if j["run_attempt"] == attempt]
        elif request.query.get("filter", "latest") == "latest":
            jobs = [j for j in jobs if j["run_attempt"] == run["run_attempt"]]
        return self.listing(request, jobs, lambda chunk: {"total_count": len(jobs), "jobs": chunk})

    async def org_repos(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/repos/repos#list-organization-repositories: sort created
        # (default), updated, pushed or full_name; direction desc by default, asc for full_name.
        org = request.match_info["org"]
        repos = [r for r in self.repos.values() if r["owner"]["login"] == org and r["owner"]["type"] == "Organization"]
        if not repos:
            return self.error(404, "Not Found")
        return self.listing(request, self._sorted_repos(request, repos), lambda chunk: chunk)

    async def user_repos(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        repos = [r for r in self.repos.values() if r["owner"]["login"] == user and r["owner"]["type"] == "User"]
        if not repos:
            return self.error(404, "Not Found")
        return self.listing(request, self._sorted_repos(request, repos), lambda chunk: chunk)

    def _sorted_repos(self, request: web.Request, repos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sort = request.query.get("sort", "created")
        direction = request.query.get("direction", "asc" if sort == "full_name" else "desc")
        key = (lambda r: r["full_name"]) if sort == "full_name" else (lambda r: r["id"])
        return sorted(repos, key=key, reverse=direction == "desc")

    async def dispatch(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-event
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        workflow = self._workflow(repo, request.match_info["workflow"])
        if workflow is None:
            return self.error(404, "Not Found")
        payload = await json_body(request)
        if not isinstance(payload, dict) or not payload.get("ref"):
            return self.error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
        self.dispatches.append({"repo": repo, "workflow": workflow["path"], **payload})
        run = self.add_run(repo, workflow["path"], branch=payload["ref"], event="workflow_dispatch")
        if payload.get("return_run_details") and self.return_run_details:
            details = {"workflow_run_id": run["id"], "run_url": run["url"], "html_url": run["html_url"]}
            return self.body(request, details)
        return web.Response(status=204)

    async def rerun(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflow-runs#re-run-a-workflow
        run = self._run(request)
        if run is None:
            return self.error(404, "Not Found")
        if run["status"] != "completed":
            return self.error(403, "This workflow is already running")
        failed_only = request.path.endswith("rerun-failed-jobs")
        previous = [j for j in self.jobs[run["id"]] if j["run_attempt"] == run["run_attempt"]]
        run.update(run_attempt=run["run_attempt"] + 1, status="queued", conclusion=None, updated_at=self.now())
        for job in previous:
            redo = not failed_only or job["conclusion"] not in ("success", "skipped", "neutral")
            if redo:
                self.add_job(run["id"], job["name"])
            else:  # a job that passed is carried into the new attempt as it was
                self.jobs[run["id"]].append({**job, "run_attempt": run["run_attempt"]})
        return self.body(request, {}, status=201)

    async def cancel(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/actions/workflow-runs#cancel-a-workflow-run
        run = self._run(request)
        if run is None:
            return self.error(404, "Not Found")
        if run["status"] == "completed":
            return self.error(409, "Cannot cancel a workflow run that is completed.")
        self.set_run_status(run["id"], "completed", "cancelled")
        return self.body(request, {}, status=202)

    # --- webhooks ---

    def webhook_payload(self, run_id: int, action: str | None = None) -> dict[str, Any]:
        """A `workflow_run` event for a run, as GitHub would send it now."""
        run = self.runs[run_id]
        if action is None:
            action = {"in_progress": "in_progress", "completed": "completed"}.get(run["status"], "requested")
        workflow = self.workflows[run["workflow_id"]]
        return {
            "action": action,
            "workflow_run": copy.deepcopy(run),
            "workflow": dict(workflow),
            "repository": run["repository"],
            "sender": run["triggering_actor"],
        }

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        url: str | URL,
        run_id: int,
        secret: str,
        *,
        action: str | None = None,
        event: str = "workflow_run",
        payload: dict[str, Any] | None = None,
    ) -> Delivery:
        """POST a signed delivery to the daemon (https://docs.github.com/en/webhooks/webhook-events-and-
        payloads#delivery-headers). `payload` replaces the built one (e.g. a `workflow_job` event)."""
        body = json.dumps(payload or self.webhook_payload(run_id, action)).encode()
        delivery_id = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fake",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery_id,
            "X-GitHub-Hook-ID": "1",
            "X-Hub-Signature-256": sign(secret, body),
        }
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(delivery_id, response.status, await response.read())

    def job_payload(self, job: dict[str, Any], action: str = "completed") -> dict[str, Any]:
        run = self.runs[job["run_id"]]
        return {
            "action": action,
            "workflow_job": copy.deepcopy(job),
            "repository": run["repository"],
            "sender": run["triggering_actor"],
        }
